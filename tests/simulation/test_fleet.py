"""Tests of the realistic fleet generator (``simulation/fleet.py``) and its parameter file."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import spearmanr

from optimizer.scenario import parse_scenario
from optimizer.uncontrolled import uncontrolled_node_power_kw
from simulation import derive_params, fleet

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "simulation" / "data" / "elaad_public.json"
ELAAD = REPO.parent / "shared" / "data" / "elaad"
MAX_CAR_KW = 11.04  # 16 A × 3 × 230 V


@dataclass
class Arrays:
    """Session fields of a scenario as arrays (times as Unix seconds)."""

    start_s: float
    connector: np.ndarray
    arrival_s: np.ndarray
    departure_s: np.ndarray
    energy_kwh: np.ndarray
    phases: np.ndarray
    opt_out: np.ndarray
    pause_consent: np.ndarray

    @property
    def on_day(self) -> np.ndarray:
        """Sessions that arrive on the day (not carried over from the day before)."""
        return self.arrival_s >= self.start_s

    @property
    def stay_h(self) -> np.ndarray:
        return (self.departure_s - self.arrival_s) / 3600.0

    @property
    def hour(self) -> np.ndarray:
        """Hour of arrival after the grid start (the local hour on a day without DST change)."""
        return np.floor((self.arrival_s - self.start_s) / 3600.0).astype(int)


def arrays(sc: dict[str, Any]) -> Arrays:
    ses = sc["sessions"]

    def ts(text: str) -> float:
        t = dt.datetime.fromisoformat(text)
        assert t.utcoffset() is not None, text
        return t.timestamp()

    return Arrays(
        start_s=ts(sc["grid"]["start"]),
        connector=np.array([s["connector"] for s in ses]),
        arrival_s=np.array([ts(s["arrival"]) for s in ses]),
        departure_s=np.array([ts(s["departure"]) for s in ses]),
        energy_kwh=np.array([s["energy_kwh"] for s in ses]),
        phases=np.array([s["phases"] for s in ses]),
        opt_out=np.array([s["opt_out"] for s in ses]),
        pause_consent=np.array([s["pause_consent"] for s in ses]),
    )


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return json.loads(SHIPPED.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def big() -> dict[str, Any]:
    """4,000 stations on the default day (a Wednesday)."""
    return fleet.generate_scenario(4000, seed=7)


@pytest.fixture(scope="module")
def big_arrays(big: dict[str, Any]) -> Arrays:
    return arrays(big)


@pytest.fixture(scope="module")
def small() -> dict[str, Any]:
    return fleet.generate_scenario(300, seed=3)


# --------------------------------------------------------------------------- format and structure


def test_same_seed_gives_identical_json() -> None:
    a = json.dumps(fleet.generate_scenario(120, seed=11))
    b = json.dumps(fleet.generate_scenario(120, seed=11))
    c = json.dumps(fleet.generate_scenario(120, seed=12))
    assert a == b
    assert a != c


def test_scenario_is_valid_and_json_serialisable(small: dict[str, Any]) -> None:
    sc = json.loads(json.dumps(small))
    parsed = parse_scenario(sc)  # refuses overlaps, unknown references, bad lengths ...
    assert parsed.grid.steps == 96
    assert parsed.grid.step_s == 900
    assert sc["grid"]["start"] == "2026-11-25T00:00:00+01:00"
    assert len(sc["stations"]) == 300
    assert {s["id"] for s in sc["sessions"]} == {
        f"s-{k:06d}" for k in range(1, len(sc["sessions"]) + 1)
    }


def test_grid_follows_date_and_step() -> None:
    sc = fleet.generate_scenario(40, seed=1, date=dt.date(2026, 7, 4), step_s=3600)
    assert sc["grid"] == {"start": "2026-07-04T00:00:00+02:00", "step_s": 3600, "steps": 24}
    assert all(len(p["cap_kw"]) == 24 and len(p["target_kw"]) == 24 for p in sc["dso_profiles"])
    parse_scenario(sc)
    with pytest.raises(ValueError, match="step_s"):
        fleet.generate_scenario(40, seed=1, step_s=7000)


@pytest.mark.parametrize("day", [dt.date(2026, 3, 29), dt.date(2026, 10, 25)])
def test_dst_days_are_valid(day: dt.date) -> None:
    sc = fleet.generate_scenario(60, seed=2, date=day)
    parse_scenario(sc)
    offsets = {s["departure"][-6:] for s in sc["sessions"]}
    assert offsets == {"+01:00", "+02:00"}


def test_node_tree(big: dict[str, Any]) -> None:
    nodes = {n["id"]: n for n in big["nodes"]}
    regions = [n for n in big["nodes"] if n["parent"] is None]
    assert [r["id"] for r in regions] == ["region-01", "region-02", "region-03", "region-04"]
    for n in big["nodes"]:
        if n["parent"] is not None:
            assert nodes[n["parent"]]["parent"] is None  # subclusters hang below a region
            assert n["id"].startswith(n["parent"] + "/sc-")
            assert n["limit_kw"] > 0
    sizes = Counter(s["node"] for s in big["stations"])
    assert set(sizes) <= set(nodes)
    per_region: Counter[str] = Counter()
    for node, size in sizes.items():
        per_region[nodes[node]["parent"]] += size
    assert all(abs(k - 1000) <= 1 for k in per_region.values())
    for r in regions:
        sc_sizes = [k for node, k in sizes.items() if nodes[node]["parent"] == r["id"]]
        outside = [k for k in sc_sizes if not 20 <= k <= 100]
        assert len(outside) <= 1  # at most one remainder per region
        assert min(sc_sizes) >= 1


def test_one_region_below_1500_stations() -> None:
    sc = fleet.generate_scenario(1499, seed=4, dso_scale=0.6)
    assert [n["id"] for n in sc["nodes"] if n["parent"] is None] == ["region-01"]
    sc = fleet.generate_scenario(1, seed=4)
    assert len(sc["stations"]) == 1
    parse_scenario(sc)


def test_stations_and_connectors(big: dict[str, Any]) -> None:
    stations = big["stations"]
    assert stations[0]["id"] == "st-00001"
    assert {s["limit_a"] for s in stations} == {25.0}
    low = np.mean([s["min_current_a"] == 6.0 for s in stations])
    assert {s["min_current_a"] for s in stations} == {6.0, 8.0}
    assert 0.07 < low < 0.13
    for k, s in enumerate(stations[:30]):
        c1, c2 = s["connectors"]
        assert (c1["id"], c2["id"]) == (f"{s['id']}-1", f"{s['id']}-2")
        assert c1["limit_a"] == c2["limit_a"] == 16.0
        assert c1["phases"] == c2["phases"] == 3
        assert c1["phase"] != c2["phase"]
        assert c1["phase"] == ("L1", "L2", "L3")[k % 3]
    phase_count = Counter(c["phase"] for s in stations for c in s["connectors"])
    assert max(phase_count.values()) - min(phase_count.values()) <= 2


# --------------------------------------------------------------------------- sessions


def test_no_overlapping_sessions_per_connector(big_arrays: Arrays) -> None:
    a = big_arrays
    order = np.lexsort((a.arrival_s, a.connector))
    same = a.connector[order][1:] == a.connector[order][:-1]
    gap = a.arrival_s[order][1:] - a.departure_s[order][:-1]
    assert (gap[same] >= 0).all()


def test_departure_after_arrival_and_energy_feasible(big: dict[str, Any]) -> None:
    a = arrays(big)
    assert (a.departure_s > a.arrival_s).all()
    assert (a.departure_s > a.start_s).all()  # every session is plugged in during the day
    assert (a.arrival_s < a.start_s + 86_400).all()
    assert (a.energy_kwh >= 0).all()
    assert (a.energy_kwh <= 77.0).all()  # the largest battery
    on = a.on_day
    kw = np.where(a.phases == 1, 3.68, MAX_CAR_KW)
    assert (a.energy_kwh[on] <= kw[on] * a.stay_h[on] + 1e-3).all()
    left_h = (a.departure_s - a.start_s) / 3600.0
    assert (a.energy_kwh[~on] <= kw[~on] * left_h[~on] + 1e-3).all()


def test_sessions_per_connector(big_arrays: Arrays) -> None:
    per_connector = big_arrays.on_day.sum() / 8000
    assert 1.3 <= per_connector <= 1.6


def test_cars_carried_over_from_the_night(big_arrays: Arrays) -> None:
    a = big_arrays
    carried = ~a.on_day
    occupied = np.unique(a.connector[carried]).size / 8000
    assert 0.3 < occupied < 0.8  # public connectors are busy overnight
    assert np.median(a.energy_kwh[carried]) < np.median(a.energy_kwh[a.on_day])


def test_flags(big_arrays: Arrays) -> None:
    a = big_arrays
    assert 0.01 < a.opt_out.mean() < 0.03
    assert not a.pause_consent.any()
    sc = fleet.generate_scenario(400, seed=5, opt_out_share=0.3, pause_consent_share=0.5)
    b = arrays(sc)
    assert 0.25 < b.opt_out.mean() < 0.35
    assert 0.45 < b.pause_consent[~b.opt_out].mean() < 0.55
    assert not (b.opt_out & b.pause_consent).any()
    parse_scenario(sc)


def test_one_phase_share(big_arrays: Arrays, shipped: dict[str, Any]) -> None:
    share = float(np.mean(big_arrays.phases[big_arrays.on_day] == 1))
    assert share == pytest.approx(shipped["ev"]["one_phase_share"], abs=0.02)


# --------------------------------------------------------------------------- ElaadNL statistics


@pytest.mark.parametrize(
    ("field", "key"), [("stay_h", "connection_time_h"), ("energy_kwh", "energy_kwh")]
)
def test_quartiles_match_elaad(
    big_arrays: Arrays, shipped: dict[str, Any], field: str, key: str
) -> None:
    a = big_arrays
    values = getattr(a, field)[a.on_day]
    exceeded_by = shipped[key]["values"]  # value exceeded by x % of sessions
    for q in (0.25, 0.5, 0.75):
        want = exceeded_by[round(100 * (1 - q))]
        assert np.quantile(values, q) == pytest.approx(want, rel=0.10), (field, q)


@pytest.mark.parametrize(
    ("day", "table"), [(fleet.DEFAULT_DATE, "weekday"), (dt.date(2026, 11, 28), "weekend")]
)
def test_arrival_histogram_matches_elaad(
    big_arrays: Arrays, shipped: dict[str, Any], day: dt.date, table: str
) -> None:
    a = big_arrays if day == fleet.DEFAULT_DATE else arrays(fleet.generate_scenario(3000, 9, day))
    hours = a.hour[a.on_day]
    got = np.bincount(hours, minlength=24) / hours.size
    want = np.asarray(shipped["arrival_pct"][table]).reshape(24, 4).sum(axis=1) / 100.0
    assert 0.5 * np.abs(got - want).sum() < 0.05


def _well_populated_hours(a: Arrays, minimum: int = 300) -> list[np.ndarray]:
    on = a.on_day
    return [on & (a.hour == h) for h in range(24) if (on & (a.hour == h)).sum() >= minimum]


def test_within_hour_stay_spread(big_arrays: Arrays) -> None:
    hours = _well_populated_hours(big_arrays)
    assert len(hours) >= 12
    for m in hours:
        stay = big_arrays.stay_h[m]
        assert 0.4 <= stay.std() / stay.mean() <= 1.0


def test_within_hour_stay_energy_rank_correlation(big_arrays: Arrays) -> None:
    a = big_arrays
    rho = [spearmanr(a.stay_h[m], a.energy_kwh[m]).statistic for m in _well_populated_hours(a)]
    weights = [m.sum() for m in _well_populated_hours(a)]
    assert 0.3 <= np.average(rho, weights=weights) <= 0.5
    assert min(rho) > 0.2


def test_mean_stay_follows_arrival_time(big_arrays: Arrays, shipped: dict[str, Any]) -> None:
    a = big_arrays
    on = a.on_day
    half_hour = ((a.arrival_s[on] - a.start_s) // 1800).astype(int)
    stay = a.stay_h[on]
    profile = np.asarray(shipped["mean_stay_h_by_arrival"]["values"])
    got = np.array([stay[half_hour == k].mean() for k in range(48)])
    busy = np.bincount(half_hour, minlength=48) >= 150
    assert np.corrcoef(got[busy], profile[busy])[0, 1] > 0.95


# --------------------------------------------------------------------------- DSO profiles


def test_dso_cap_is_scale_times_uncontrolled_peak() -> None:
    sc = fleet.generate_scenario(1200, seed=8, dso_scale=0.5, feasible=False)
    power = uncontrolled_node_power_kw(sc)
    start = dt.datetime.fromisoformat(sc["grid"]["start"])
    hours = np.array([(start + dt.timedelta(minutes=15 * t)).hour for t in range(96)])
    dip = (hours >= 17) & (hours < 21)
    (profile,) = sc["dso_profiles"]
    assert profile["node"] == "region-01"
    cap = np.asarray(profile["cap_kw"])
    target = np.asarray(profile["target_kw"])
    peak = power["region-01"].max()
    np.testing.assert_allclose(cap[~dip], 0.5 * peak, atol=1e-3)
    np.testing.assert_allclose(cap[dip], 0.5 * 0.85 * peak, atol=1e-3)
    assert (target <= cap + 1e-9).all()
    assert target.sum() <= power["region-01"].sum() + 1e-6
    assert target[12] > target[60]  # 03:00 is a valley to fill, 15:00 is not
    # subcluster ratings bind sometimes, not always
    over = [power[n["id"]].max() > n["limit_kw"] for n in sc["nodes"] if n["parent"]]
    assert 0 < np.mean(over) < 0.5


def test_limits_are_raised_only_where_minimum_currents_exceed_them() -> None:
    from optimizer.greedy import greedy_currents_a
    from optimizer.network import compile_network
    from optimizer.result import limit_violations
    from optimizer.scenario import parse_scenario

    raw = fleet.generate_scenario(600, seed=3, dso_scale=0.4, feasible=False)
    net = compile_network(parse_scenario(raw))
    assert limit_violations(net, greedy_currents_a(net)), "0.4 x peak should be too tight"
    fixed = fleet.generate_scenario(600, seed=3, dso_scale=0.4)
    net = compile_network(parse_scenario(fixed))
    assert limit_violations(net, greedy_currents_a(net)) == []
    before = np.asarray(raw["dso_profiles"][0]["cap_kw"])
    after = np.asarray(fixed["dso_profiles"][0]["cap_kw"])
    assert (after >= before - 1e-9).all()
    assert 0 < (after > before + 1e-9).sum() < before.size  # raised only at some steps
    ratings = [
        (a.get("limit_kw"), b.get("limit_kw"))
        for a, b in zip(raw["nodes"], fixed["nodes"], strict=True)
    ]
    assert all(b >= a for a, b in ratings if a is not None)


# --------------------------------------------------------------------------- parameter file


def test_shipped_parameters_are_small_and_consistent(shipped: dict[str, Any]) -> None:
    assert SHIPPED.stat().st_size < 10_000
    for table in ("weekday", "weekend"):
        assert len(shipped["arrival_pct"][table]) == 96
        assert sum(shipped["arrival_pct"][table]) == pytest.approx(100.0, abs=1e-3)
    assert len(shipped["connection_time_h"]["values"]) == 101
    assert len(shipped["mean_energy_kwh_by_arrival"]["values"]) == 48
    # the quartiles the data README quotes for public charging
    stay, energy = shipped["connection_time_h"]["values"], shipped["energy_kwh"]["values"]
    assert (stay[75], stay[50], stay[25]) == (1.7, 4.4, 12.1)
    assert (energy[75], energy[50], energy[25]) == (4.2, 7.2, 13.8)
    prm = fleet.load_params()
    assert prm.one_phase_share == pytest.approx(shipped["ev"]["one_phase_share"], abs=1e-6)


def test_parameter_file_rederives_from_elaad(shipped: dict[str, Any]) -> None:
    if not ELAAD.is_dir():
        pytest.skip(f"ElaadNL source data not present at {ELAAD}")
    derived = derive_params.derive(ELAAD)
    assert derived == shipped
    assert derive_params.render(derived) == SHIPPED.read_text(encoding="utf-8")
