"""Scale benchmark: decomposed and live (warm) solves against the monolithic LP, 200 to 64,000
connectors, 15- and 5-minute steps.

Every case is solved twice in the same run: by the product path (the LP split into its
independent parts, solved on the local cores; :mod:`optimizer.decompose`) and by the
monolithic reference (the same LP in one HiGHS model, one thread). The table gives both wall
times, their ratio, the objective difference and the checker's verdict, so the figures compare
across machines. The incremental cases time the live engine (:mod:`optimizer.engine`) through
a row of changes of one kind against cold solves of the changed problems (warm wall time split
into the solver and everything else: greedy anchor, arrays, checks, schedule file). Results are
appended to ``docs/BENCHMARKS.md`` (older runs kept) and ``docs/benchmarks.json``; the scaling
curve is drawn to ``docs/scaling.png``.

Usage: ``python -m benchmarks.scale [--sizes 200,...,64000] [--workers 2]``; the 16,000-connector
cold and live-engine cases alone: ``python -m benchmarks.scale --sizes 16000 --five-minute 0
--no-memory`` (a partial run keeps the last scaling curve).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run import DOCS, append_results, machine, product_peak_rss_mb
from optimizer import decompose
from optimizer.checker import check_schedule
from optimizer.engine import LiveEngine
from optimizer.network import Network, compile_network
from optimizer.scenario import parse_scenario
from optimizer.solve import solve_network
from simulation.fleet import generate_scenario

SIZES = (200, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000)
CHANGE_SHARE = 0.05
"""Share of sessions that get a new departure prediction and energy need."""


def monolithic(net: Network) -> dict[str, Any]:
    """The reference: the same LP in one model on one thread."""
    saved = decompose.MIN_PART_VARS
    decompose.MIN_PART_VARS = 1 << 62  # everything packed into one part
    try:
        return solve_network(net, "lp", workers=1)
    finally:
        decompose.MIN_PART_VARS = saved


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def rel_diff(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return abs(a - b) / max(abs(b), 1e-9)


def cold_case(
    raw: dict[str, Any], connectors: int, workers: int, reference: bool
) -> dict[str, Any]:
    net, compile_s = timed(lambda: compile_network(parse_scenario(raw)))
    sch, wall = timed(solve_network, net, "lp", workers=workers)
    row: dict[str, Any] = {
        "connectors": connectors,
        "sessions": net.n_sessions,
        "steps": net.steps,
        "compile_s": round(compile_s, 3),
        "wall_s": round(wall, 3),
        "parts": sch["solver"].get("parts"),
        "status": sch["status"],
        "objective": sch["solver"].get("objective"),
        "gap": sch["solver"].get("gap"),
        "checker_violations": len(check_schedule(raw, sch)) - len(sch["violations"]),
    }
    _, greedy_s = timed(solve_network, net, "greedy")
    row["greedy_s"] = round(greedy_s, 3)
    if reference:
        ref, ref_wall = timed(monolithic, net)
        row["monolithic_s"] = round(ref_wall, 3)
        row["monolithic_objective"] = ref["solver"].get("objective")
        row["ratio_to_monolithic"] = round(wall / ref_wall, 3)
        row["objective_rel_diff"] = rel_diff(row["objective"], row["monolithic_objective"])
    return row


def changed_sessions(raw: dict[str, Any], seed: int) -> dict[str, Any]:
    """5 % of sessions get a new departure prediction (45 min earlier where the stay allows)
    and a new energy need (−20 %)."""
    out = copy.deepcopy(raw)
    rng = np.random.default_rng(seed)
    n = len(out["sessions"])
    for k in rng.choice(n, size=max(1, int(CHANGE_SHARE * n)), replace=False):
        s = out["sessions"][k]
        if s.get("energy_kwh"):
            s["energy_kwh"] = round(0.8 * s["energy_kwh"], 3)
        if s.get("departure"):
            arr, dep = (datetime.fromisoformat(s[f]) for f in ("arrival", "departure"))
            if dep - arr > timedelta(hours=2):
                s["departure"] = (dep - timedelta(minutes=45)).isoformat()
    return out


def dr_step(raw: dict[str, Any], step: int | None = None) -> dict[str, Any]:
    """A one-step demand-response event: every region's cap 30 % lower in one step (default
    the evening peak, 18:00 local on a 96-step day)."""
    out = copy.deepcopy(raw)
    step = out["grid"]["steps"] * 3 // 4 if step is None else step
    for prof in out["dso_profiles"]:
        if prof.get("cap_kw"):
            prof["cap_kw"][step] *= 0.7
    return out


def rolled(raw: dict[str, Any]) -> dict[str, Any]:
    """The same day one step later: the grid starts one step on."""
    out = copy.deepcopy(raw)
    start = datetime.fromisoformat(out["grid"]["start"])
    out["grid"]["start"] = (start + timedelta(seconds=out["grid"]["step_s"])).isoformat()
    return out


CHANGES_PER_CASE = 5
"""Changes applied one after another to the same live engine in each incremental case."""


def change_sequences(seed: int) -> list[tuple[str, Callable[[dict[str, Any], int], Any]]]:
    """Each case as ``make(previous scenario, k)`` for the ``k``-th change in a row: another
    5 % of the sessions, a DR event in the next step, one more step of the grid."""
    return [
        ("5 % of sessions change", lambda r, k: changed_sessions(r, seed + k)),
        ("1-step DR event (all regions)", lambda r, k: dr_step(r, r["grid"]["steps"] * 3 // 4 + k)),
        ("grid rolls one step", lambda r, k: rolled(r)),
    ]


def incremental_cases(
    raw: dict[str, Any], workers: int, seed: int, changes: int = CHANGES_PER_CASE
) -> list[dict[str, Any]]:
    """For each case: a live engine solves the day cold, then ``changes`` changes one after
    another, each re-solved warm; then each changed problem is solved cold for reference (same
    run). The first warm solve follows the cold one (as after a restart); the later ones
    follow warm solves, as in a running service. Reported: the first, the median and the
    slowest warm solve."""
    rows = []
    for name, make in change_sequences(seed):
        engine = LiveEngine(workers=workers)
        engine.solve(compile_network(parse_scenario(raw)))
        current = raw
        runs: list[dict[str, Any]] = []
        scenarios: list[dict[str, Any]] = []
        # the warm solves back to back, as in a running service (each schedule checked and
        # let go, as the service does); the cold references after them, so that their memory
        # churn does not fall into the warm figures
        for k in range(changes):
            current = make(current, k)
            net, compile_s = timed(lambda r=current: compile_network(parse_scenario(r)))
            warm, warm_s = timed(engine.solve, net)
            runs.append(
                {
                    "compile_s": compile_s,
                    "warm_s": warm_s,
                    "warm_solve_s": warm["solver"].get("solve_s") or 0.0,
                    "warm_objective": warm["solver"].get("objective"),
                    "parts_by_start": warm["solver"].get("parts_by_start") or {},
                    "checker": len(check_schedule(current, warm)) - len(warm["violations"]),
                }
            )
            scenarios.append(current)
            del net, warm
        for r, scenario in zip(runs, scenarios, strict=True):
            net = compile_network(parse_scenario(scenario))
            cold, cold_s = timed(solve_network, net, "lp", workers=workers)
            r["cold_s"] = cold_s
            r["cold_solve_s"] = cold["solver"].get("solve_s") or 0.0
            r["objective_rel_diff"] = rel_diff(r["warm_objective"], cold["solver"].get("objective"))
        warm_all = [r["warm_s"] for r in runs]
        median = float(np.median(warm_all))
        cold_median = float(np.median([r["cold_s"] for r in runs]))
        diffs = [r["objective_rel_diff"] for r in runs if r["objective_rel_diff"] is not None]
        parts: dict[str, int] = {}
        for r in runs:
            for how, n in r["parts_by_start"].items():
                parts[how] = parts.get(how, 0) + n
        rows.append(
            {
                "case": name,
                "changes": changes,
                "compile_s": round(float(np.median([r["compile_s"] for r in runs])), 3),
                "first_warm_s": round(warm_all[0], 3),
                "warm_s": round(median, 3),
                "max_warm_s": round(max(warm_all), 3),
                "warm_solve_s": round(float(np.median([r["warm_solve_s"] for r in runs])), 4),
                "warm_other_s": round(
                    float(np.median([r["warm_s"] - r["warm_solve_s"] for r in runs])), 3
                ),
                "cold_s": round(cold_median, 3),
                "cold_solve_s": round(float(np.median([r["cold_solve_s"] for r in runs])), 4),
                "ratio_warm_to_cold": round(median / cold_median, 3),
                "objective_rel_diff": max(diffs) if diffs else None,
                "parts_by_start": parts,
                "checker_violations": sum(r["checker"] for r in runs),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["steps"] == 96]
    x = [r["connectors"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(x, [r["wall_s"] for r in rows], "o-", label="lp, decomposed (product path)")
    ref = [r for r in rows if "monolithic_s" in r]
    ax.plot(
        [r["connectors"] for r in ref],
        [r["monolithic_s"] for r in ref],
        "s--",
        label="lp, monolithic HiGHS (reference)",
    )
    ax.plot(x, [r["greedy_s"] for r in rows], "^:", label="greedy")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("connectors (96 steps of 15 min, DSO cap at 60 % of the uncontrolled peak)")
    ax.set_ylabel("wall time [s]")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Cold schedule of one day")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_markdown(
    cold: list[dict[str, Any]], warm: list[dict[str, Any]], extra: dict[str, Any], when: str
) -> str:
    out = [
        f"### Scale run {when}",
        "",
        f"Machine: {machine()}. Product path: the LP split into independent parts solved on "
        f"{extra['workers']} threads; reference: the same LP as one HiGHS model on one thread, "
        "solved in the same run. Times from the compiled network to the finished schedule "
        "(greedy anchor, build, solve, checks, schedule file); the checker column counts "
        "excesses the product did not report (0 = correct).",
        "",
        "| connectors | steps | sessions | parts | lp wall s | monolithic s | ratio | "
        "objective rel. diff | gap | greedy s | status | checker |",
        "|" + "---|" * 12,
    ]
    for r in cold:
        diff = r.get("objective_rel_diff")
        out.append(
            f"| {r['connectors']:,} | {r['steps']} | {r['sessions']:,} | {r['parts']} | "
            f"{r['wall_s']} | {r.get('monolithic_s', '—')} | {r.get('ratio_to_monolithic', '—')} "
            f"| {'—' if diff is None else f'{diff:.1e}'} | {r['gap']} | {r['greedy_s']} | "
            f"{r['status']} | {r['checker_violations']} |"
        )
    out += [
        "",
        f"Live engine at {extra['incremental_connectors']:,} connectors: a solved day, then "
        f"{CHANGES_PER_CASE} changes of the kind one after another, each re-solved warm by the "
        "engine and cold for reference (same run). *first*: the warm solve right after the cold "
        "one (as after a restart or a grid roll); *median* and *max* over all "
        f"{CHANGES_PER_CASE}; solver/other and cold: medians; parts: summed over the changes.",
        "",
        "| change | first warm s | median warm s | max warm s | warm solver s | warm other s "
        "| cold wall s | cold solver s | warm/cold (medians) | objective rel. diff (max) "
        "| parts (reused/in place/mapped/cold) | checker |",
        "|" + "---|" * 12,
    ]
    for r in warm:
        p = r["parts_by_start"] or {}
        diff = r["objective_rel_diff"]
        out.append(
            f"| {r['case']} | {r['first_warm_s']} | {r['warm_s']} | {r['max_warm_s']} "
            f"| {r['warm_solve_s']} | {r['warm_other_s']} | {r['cold_s']} | "
            f"{r['cold_solve_s']} | {r['ratio_warm_to_cold']} | "
            f"{'—' if diff is None else f'{diff:.1e}'} | "
            f"{p.get('reused', 0)}/{p.get('inplace', 0)}/{p.get('mapped', 0)}/{p.get('cold', 0)} "
            f"| {r['checker_violations']} |"
        )
    if "peak_rss_mb" in extra:
        out += [
            "",
            f"Peak memory, generating and scheduling 16,000 connectors in a fresh "
            f"process: {extra['peak_rss_mb']:,.0f} MB.",
        ]
    if "per_connector_ratio" in extra:
        out += [
            "",
            "Time per connector at 64,000 relative to 16,000: "
            f"{extra['per_connector_ratio']:.2f} (target ≤ 1.5).",
        ]
    if extra.get("curve"):
        out += ["", "![scaling](scaling.png)"]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reference-above", type=int, default=10**9, help="skip monolithic above")
    ap.add_argument("--incremental", type=int, default=16_000, help="connectors (0: skip)")
    ap.add_argument("--five-minute", type=int, default=16_000, help="connectors (0: skip)")
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()
    cold: list[dict[str, Any]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"scale: {n} connectors × 96", flush=True)
        raw = generate_scenario(stations=n // 2, seed=args.seed, dso_scale=0.6)
        cold.append(cold_case(raw, n, args.workers, reference=n <= args.reference_above))
        print(json.dumps(cold[-1]), flush=True)
    if args.five_minute:
        n = args.five_minute
        print(f"scale: {n} connectors × 288 (5-minute steps)", flush=True)
        raw = generate_scenario(stations=n // 2, seed=args.seed, dso_scale=0.6, step_s=300)
        cold.append(cold_case(raw, n, args.workers, reference=True))
        print(json.dumps(cold[-1]), flush=True)
    warm: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"workers": args.workers, "incremental_connectors": args.incremental}
    if args.incremental:
        raw = generate_scenario(stations=args.incremental // 2, seed=args.seed, dso_scale=0.6)
        warm = incremental_cases(raw, args.workers, args.seed)
    if not args.no_memory:
        extra["peak_rss_mb"] = product_peak_rss_mb(8_000, args.seed)
    by_n = {r["connectors"]: r for r in cold if r["steps"] == 96}
    if 16_000 in by_n and 64_000 in by_n:
        extra["per_connector_ratio"] = (by_n[64_000]["wall_s"] / 64_000) / (
            by_n[16_000]["wall_s"] / 16_000
        )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    curve = len({r["connectors"] for r in cold if r["steps"] == 96}) >= 3
    if curve:  # a partial run keeps the last full curve
        plot(cold, DOCS / "scaling.png")
    extra["curve"] = curve
    append_results(
        to_markdown(cold, warm, extra, when),
        {"when": when, "machine": machine(), "kind": "scale", "cold": cold, "warm": warm, **extra},
    )


if __name__ == "__main__":
    main()
