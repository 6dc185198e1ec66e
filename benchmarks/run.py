"""Scale benchmark: 200, 2,000 and 16,000 connectors × 96 steps with a binding DSO cap.

For each size: model build and solve time of the pyomo model and of the direct HiGHS twin
(each solved in the same run, so the ratio twin/pyomo is comparable across machines), the
objective of both, energy delivered by lp, greedy and uncontrolled, peak memory, and the
checker's verdict. Results are appended to ``docs/BENCHMARKS.md`` (older runs are kept) and the
raw numbers to ``docs/benchmarks.json``.

Usage: ``python -m benchmarks.run [--sizes 200,2000,16000] [--no-pyomo-above N]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from optimizer.checker import check_schedule
from optimizer.lp_highs import HighsTwin
from optimizer.lp_pyomo import PyomoTwin
from optimizer.network import compile_network
from optimizer.problem import build_problem
from optimizer.scenario import parse_scenario
from optimizer.solve import solve_network
from simulation.fleet import generate_scenario

DOCS = Path(__file__).resolve().parents[1] / "docs"


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def vm_hwm_mb() -> float:
    """Peak resident memory [MB] of this process image (``VmHWM``; reset by exec, unlike
    ``ru_maxrss``, which would count the parent's memory copied at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _product_path(stations: int, seed: int, out: Any) -> None:
    """Generate and schedule with lp in this (child) process; send back its peak memory."""
    raw = generate_scenario(stations=stations, seed=seed, dso_scale=0.6)
    solve_network(compile_network(parse_scenario(raw)), "lp")
    out.put(vm_hwm_mb())


def product_peak_rss_mb(stations: int, seed: int) -> float:
    """Peak resident memory [MB] of generating and scheduling (lp) in a fresh process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_product_path, args=(stations, seed, queue))
    proc.start()
    peak = float(queue.get())
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"product path failed with exit code {proc.exitcode}")
    return peak


def bench_size(connectors: int, seed: int, with_pyomo: bool) -> dict[str, Any]:
    stations = connectors // 2
    t0 = time.perf_counter()
    raw = generate_scenario(stations=stations, seed=seed, dso_scale=0.6)
    gen_s = time.perf_counter() - t0
    net = compile_network(parse_scenario(raw))
    row: dict[str, Any] = {
        "connectors": connectors,
        "sessions": net.n_sessions,
        "generate_s": round(gen_s, 2),
    }
    # direct twin: build + one solve of the base LP
    t0 = time.perf_counter()
    problem = build_problem(net)
    twin = HighsTwin(problem)
    row["twin_build_s"] = round(time.perf_counter() - t0, 3)
    sol = twin.solve()
    row["twin_solve_s"] = round(sol.time_s, 3)
    row["twin_objective"] = sol.objective
    row["variables"] = problem.n_vars
    row["limit_rows"] = int(problem.limit_rhs.size)
    if with_pyomo:
        t0 = time.perf_counter()
        pyomo = PyomoTwin(build_problem(net))
        row["pyomo_build_s"] = round(time.perf_counter() - t0, 3)
        psol = pyomo.solve()
        row["pyomo_solve_s"] = round(psol.time_s, 3)
        row["pyomo_objective"] = psol.objective
        row["objective_rel_diff"] = abs(psol.objective - sol.objective) / max(abs(sol.objective), 1)
        row["speedup_twin_vs_pyomo"] = round(
            (row["pyomo_build_s"] + row["pyomo_solve_s"])
            / (row["twin_build_s"] + row["twin_solve_s"]),
            2,
        )
    # the full product path (lp with the no-pause repair), greedy and uncontrolled
    for method in ("lp", "greedy", "uncontrolled"):
        t0 = time.perf_counter()
        sch = solve_network(net, method)
        row[f"{method}_total_s"] = round(time.perf_counter() - t0, 3)
        row[f"{method}_energy_kwh"] = sch["kpis"]["energy_delivered_kwh"]
        row[f"{method}_status"] = sch["status"]
        if method == "lp":
            row["lp_rounds"] = sch["solver"].get("rounds")
            row["lp_objective"] = sch["solver"].get("objective")
            row["greedy_objective"] = sch["solver"].get("greedy_objective")
        found = check_schedule(raw, sch)
        row[f"{method}_checker_violations"] = len(found)
    row["energy_lp_vs_greedy"] = round(row["lp_energy_kwh"] / row["greedy_energy_kwh"], 4)
    row["energy_lp_vs_uncontrolled"] = round(
        row["lp_energy_kwh"] / row["uncontrolled_energy_kwh"], 4
    )
    # the LP without charging windows only has constraints every valid schedule meets, so its
    # optimum bounds every schedule that obeys the no-pause rule from below
    if row["lp_objective"] is not None:
        row["gap_to_bound"] = round(
            (row["lp_objective"] - row["twin_objective"]) / max(abs(row["lp_objective"]), 1e-9), 4
        )
        row["gain_vs_greedy"] = round(
            (row["greedy_objective"] - row["lp_objective"])
            / max(abs(row["greedy_objective"]), 1e-9),
            4,
        )
    row["peak_rss_mb"] = round(product_peak_rss_mb(stations, seed), 0)
    return row


def to_markdown(rows: list[dict[str, Any]], when: str, where: str) -> str:
    head = (
        f"### Run {when}\n\nMachine: {where}\n\n"
        "| connectors | sessions | vars | limit rows | twin build s | twin solve s | "
        "pyomo build s | pyomo solve s | twin speed-up | objective rel. diff | lp total s | "
        "lp kWh | greedy kWh | uncontrolled kWh | objective gain vs greedy | gap to bound | "
        "checker (lp/greedy) | peak RSS MB (lp path) |\n|" + "---|" * 18 + "\n"
    )
    lines = []
    for r in rows:
        lines.append(
            "| {connectors:,} | {sessions:,} | {variables:,} | {limit_rows:,} | {twin_build_s} | "
            "{twin_solve_s} | {pb} | {ps} | {sp} | {od} | {lp_total_s} | "
            "{lp_energy_kwh:,.0f} | {greedy_energy_kwh:,.0f} | {uncontrolled_energy_kwh:,.0f} | "
            "{gain} | {gap} | {lp_checker_violations}/{greedy_checker_violations} | "
            "{peak_rss_mb:,.0f} |".format(
                gain=f"{100 * r['gain_vs_greedy']:.2f} %" if "gain_vs_greedy" in r else "—",
                gap=f"{100 * r['gap_to_bound']:.1f} %" if "gap_to_bound" in r else "—",
                pb=r.get("pyomo_build_s", "—"),
                ps=r.get("pyomo_solve_s", "—"),
                sp=r.get("speedup_twin_vs_pyomo", "—"),
                od=f"{r['objective_rel_diff']:.1e}" if "objective_rel_diff" in r else "—",
                **r,
            )
        )
    return head + "\n".join(lines) + "\n"


HEADER = """# Benchmarks

Written by `make bench` (`python -m benchmarks.run`). Each run is appended below with the machine
it ran on; older runs are kept for comparison. Scenarios come from the fleet generator (seed 1,
DSO cap at 60 % of the uncontrolled peak, with an evening dip), 96 steps of 15 minutes.

- *twin*: the direct-HiGHS model built from numpy arrays; *pyomo*: the readable pyomo model,
  solved by HiGHS through pyomo's persistent interface. Both solve the same first LP, so the
  speed-up is a ratio measured in the same run and the objectives must agree.
- *lp total*: the whole product path (greedy windows, build, one solve, checks).
- *objective gain vs greedy*: how much lower the product LP's objective is than greedy's.
- *gap to bound*: distance of the product LP's objective to the optimum of the LP without
  charging windows, which only has constraints every valid schedule meets and so bounds the
  best no-pause schedule from below (an upper estimate of how far from optimal we are).
- *checker*: violations the independent checker finds (0 = every limit holds).
- *peak RSS*: generating and scheduling with lp in a fresh process (pyomo not included).
- Targets (foundation issue): at 16,000 connectors the direct twin ≤ 30 s total on 2 cores.

"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="200,2000,16000")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-pyomo-above", type=int, default=20000)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        print(f"benchmark: {n} connectors", flush=True)
        row = bench_size(n, args.seed, with_pyomo=n <= args.no_pyomo_above)
        print(json.dumps(row), flush=True)
        rows.append(row)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = machine()
    append_results(to_markdown(rows, when, where), {"when": when, "machine": where, "rows": rows})


def append_results(section: str, record: dict[str, Any]) -> None:
    """Append a markdown section to docs/BENCHMARKS.md and a record to docs/benchmarks.json,
    keeping every earlier run."""
    DOCS.mkdir(exist_ok=True)
    md = DOCS / "BENCHMARKS.md"
    old = md.read_text() if md.exists() else HEADER
    if not old.startswith("# Benchmarks"):
        old = HEADER + old
    md.write_text(old.rstrip("\n") + "\n\n" + section.strip("\n") + "\n")
    raw_path = DOCS / "benchmarks.json"
    history = json.loads(raw_path.read_text()) if raw_path.exists() else []
    history.append(record)
    raw_path.write_text(json.dumps(history, indent=1) + "\n")
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
