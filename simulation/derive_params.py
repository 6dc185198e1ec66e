"""Derive ``simulation/data/elaad_public.json`` from the ElaadNL statistics.

The fleet generator (:mod:`simulation.fleet`) reads only the small parameter file shipped in
``simulation/data/``. This script regenerates that file from the ElaadNL open statistics as
packaged in ev2gym 2.0.0 (MIT code; the figures are ElaadNL's). A maintainer runs it when the
source data changes, from the repository root::

    .venv/bin/python -m simulation.derive_params                # ../shared/data/elaad
    .venv/bin/python -m simulation.derive_params --src DIR --out FILE
    .venv/bin/python -m simulation.derive_params --check        # exit 1 if the file differs

What is derived (all from the ``public`` column; see ``docs/fleet.md``):

- ``arrival_pct``: share of arrivals [%] per 15-minute local-time slot, weekday and weekend
  (``distribution-of-arrival*.csv``), 96 values each.
- ``connection_time_h`` and ``energy_kwh``: exceedance tables, ``values[x]`` is the value
  exceeded by ``x`` % of sessions, x = 0..100 (``distribution-of-connection-time.csv``,
  ``distribution-of-energy-demand.csv``).
- ``mean_stay_h_by_arrival`` and ``mean_energy_kwh_by_arrival``: mean stay [h] and mean energy
  [kWh] by half-hour of arrival, 48 values from 00:00 (the CSV rows are stored out of order and
  are sorted here).
- ``ev``: the EV models of ``ev_specs.json`` with their registrations, battery [kWh], maximum AC
  power [kW] and phases (1 when ``max_ac_charge_power`` ≤ 7.4 kW, else 3), and the share of
  1-phase cars weighted by registrations.

The output is deterministic: the same input gives a byte-identical file.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

ONE_PHASE_MAX_KW = 7.4
"""Largest maximum AC power [kW] of a 1-phase car (7.4 kW = 32 A × 230 V on one phase)."""

SLOTS = 96
HALF_HOURS = 48

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO_ROOT.parent / "shared" / "data" / "elaad"
DEFAULT_OUT = REPO_ROOT / "simulation" / "data" / "elaad_public.json"


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    return rows[0], rows[1:]


def _column(path: Path, name: str) -> list[tuple[str, float]]:
    """(first column, value of ``name``) per row, in file order."""
    header, rows = _rows(path)
    k = header.index(name)
    return [(r[0], float(r[k])) for r in rows]


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _by_clock(path: Path, name: str, slots: int) -> list[float]:
    """Values of column ``name`` sorted by the clock time in the first column."""
    pairs = sorted((_minutes(t), v) for t, v in _column(path, name))
    step = 1440 // slots
    if [t for t, _ in pairs] != [k * step for k in range(slots)]:
        raise ValueError(f"{path.name}: expected {slots} clock times every {step} min")
    return [v for _, v in pairs]


def _exceedance(path: Path) -> list[float]:
    pairs = _column(path, "public")
    if [int(float(x)) for x, _ in pairs] != list(range(101)):
        raise ValueError(f"{path.name}: expected exceedance percentages 0..100")
    return [v for _, v in pairs]


def derive(src: Path) -> dict[str, Any]:
    """Build the parameter dictionary from the ElaadNL files in ``src``.

    Parameters
    ----------
    src : pathlib.Path
        Folder with the ev2gym 2.0.0 ElaadNL files.

    Returns
    -------
    dict
        The content of ``elaad_public.json``.
    """
    weekday = _by_clock(src / "distribution-of-arrival.csv", "public", SLOTS)
    weekend = _by_clock(src / "distribution-of-arrival-weekend.csv", "public", SLOTS)
    stay = _by_clock(src / "mean-session-length-per.csv", "public", HALF_HOURS)
    energy = _by_clock(src / "mean-demand-per-arrival.csv", "public", HALF_HOURS)

    specs = json.loads((src / "ev_specs.json").read_text(encoding="utf-8"))
    models = [
        {
            "name": name,
            "registrations": int(s["number_of_registrations"]),
            "battery_kwh": float(s["battery_capacity"]),
            "max_ac_kw": float(s["max_ac_charge_power"]),
            "phases": 1 if float(s["max_ac_charge_power"]) <= ONE_PHASE_MAX_KW else 3,
        }
        for name, s in specs.items()
    ]
    total = sum(m["registrations"] for m in models)
    one = sum(m["registrations"] for m in models if m["phases"] == 1)

    return {
        "source": (
            "ElaadNL open statistics on Dutch public charging, as packaged in PyPI ev2gym 2.0.0 "
            "(MIT code); derived by simulation/derive_params.py"
        ),
        "arrival_pct": {
            "slot_min": 15,
            "weekday": [round(v, 6) for v in weekday],
            "weekend": [round(v, 6) for v in weekend],
        },
        "connection_time_h": {
            "exceeded_by_pct": "index 0..100",
            "values": _exceedance(src / "distribution-of-connection-time.csv"),
        },
        "energy_kwh": {
            "exceeded_by_pct": "index 0..100",
            "values": _exceedance(src / "distribution-of-energy-demand.csv"),
        },
        "mean_stay_h_by_arrival": {"slot_min": 30, "values": stay},
        "mean_energy_kwh_by_arrival": {"slot_min": 30, "values": [round(v, 4) for v in energy]},
        "ev": {
            "one_phase_rule": f"max_ac_charge_power <= {ONE_PHASE_MAX_KW} kW",
            "one_phase_share": round(one / total, 6),
            "models": models,
        },
    }


def _flat(obj: Any) -> bool:
    items = obj.values() if isinstance(obj, dict) else obj
    return all(not isinstance(v, dict | list) for v in items)


def _render(obj: Any, indent: str) -> str:
    if not isinstance(obj, dict | list) or _flat(obj):
        return json.dumps(obj, ensure_ascii=False)
    inner = indent + "  "
    if isinstance(obj, dict):
        parts = [f"{inner}{json.dumps(k)}: {_render(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(parts) + "\n" + indent + "}"
    parts = [inner + _render(v, inner) for v in obj]
    return "[\n" + ",\n".join(parts) + "\n" + indent + "]"


def render(params: dict[str, Any]) -> str:
    """JSON text of the parameters: indented, each flat list or object on one line."""
    return _render(params, "") + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: write (or ``--check``) the parameter file; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="ElaadNL folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="parameter file to write")
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    if not args.src.is_dir():
        print(f"--src: no such folder {args.src}", file=sys.stderr)
        return 2
    text = render(derive(args.src))
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'differs'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
