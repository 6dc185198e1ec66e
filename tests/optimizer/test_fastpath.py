"""Demand-response fast path: hand-computed restore times, budgets, eligibility and fairness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from optimizer.fastpath import (
    CHOSEN,
    SKIP_REASONS,
    FastPathError,
    activate,
    budget_duration_s,
    isp_end,
    released_kw,
    restore_time,
    window_used_s,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fleet(n: int, **over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "signal_at": utc(2026, 1, 15, 10, 7),
        "i_now_a": np.full(n, 16.0),
        "min_a": np.full(n, 8.0),
        "n_phases": np.full(n, 3.0),
        "voltage_v": 230.0,
        "opt_out": np.zeros(n, bool),
        "consent_required": np.zeros(n, bool),
        "consent": np.zeros(n, bool),
        "budget_s": np.full(n, 1800.0),
    }
    base.update(over)
    return base


# --- restore time ------------------------------------------------------------------------


def test_isp_end_is_next_quarter_hour() -> None:
    assert isp_end(utc(2026, 1, 15, 10, 7)) == utc(2026, 1, 15, 10, 15)
    assert isp_end(utc(2026, 1, 15, 10, 15)) == utc(2026, 1, 15, 10, 30)  # strictly after
    assert isp_end(utc(2026, 1, 15, 10, 29, 59)) == utc(2026, 1, 15, 10, 30)


def test_isp_end_across_an_hour_boundary() -> None:
    assert isp_end(utc(2026, 1, 15, 10, 52, 30)) == utc(2026, 1, 15, 11, 0)
    assert isp_end(utc(2026, 1, 15, 23, 50)) == utc(2026, 1, 16, 0, 0)


def test_isp_end_across_dst_changes() -> None:
    # spring: 01:52 CET (00:52 UTC) -> the clock jumps 02:00 CET -> 03:00 CEST = 01:00 UTC
    assert isp_end(utc(2026, 3, 29, 0, 52)) == utc(2026, 3, 29, 1, 0)
    # autumn: 02:50 CEST (00:50 UTC) -> 02:00 CET (second time) = 01:00 UTC
    assert isp_end(utc(2026, 10, 25, 0, 50)) == utc(2026, 10, 25, 1, 0)
    # and 02:50 CET (01:50 UTC) -> 03:00 CET = 02:00 UTC
    assert isp_end(utc(2026, 10, 25, 1, 50)) == utc(2026, 10, 25, 2, 0)


def test_isp_end_in_a_zone_with_a_quarter_hour_offset() -> None:
    # Nepal is UTC+05:45: 10:07 UTC = 15:52 local -> 16:00 local = 10:15 UTC
    assert isp_end(utc(2026, 1, 15, 10, 7), "Asia/Kathmandu") == utc(2026, 1, 15, 10, 15)


def test_end_earlier_than_the_isp_end_wins() -> None:
    at = utc(2026, 1, 15, 10, 7)
    assert restore_time(at, utc(2026, 1, 15, 10, 10)) == utc(2026, 1, 15, 10, 10)
    assert restore_time(at, utc(2026, 1, 15, 10, 40)) == utc(2026, 1, 15, 10, 15)
    assert restore_time(at) == utc(2026, 1, 15, 10, 15)


def test_end_not_after_the_signal_is_refused() -> None:
    at = utc(2026, 1, 15, 10, 7)
    with pytest.raises(FastPathError, match=r"^end:"):
        restore_time(at, at - timedelta(minutes=1))
    with pytest.raises(FastPathError, match="signal_at"):
        restore_time(datetime(2026, 1, 15, 10, 7))


# --- released power ----------------------------------------------------------------------


def test_released_power_by_hand() -> None:
    out = released_kw(
        np.array([16.0, 12.0, 8.0, 6.0]),
        np.full(4, 8.0),
        np.array([3.0, 1.0, 3.0, 3.0]),
        230.0,
    )
    # (16-8)*3*230 = 5520 W; (12-8)*1*230 = 920 W; at/below minimum: 0
    np.testing.assert_allclose(out, [5.52, 0.92, 0.0, 0.0])


def test_activation_releases_the_sum_and_restores_at_the_isp_end() -> None:
    act = activate(**fleet(3, i_now_a=np.array([16.0, 12.0, 8.0])))  # type: ignore[arg-type]
    assert act.chosen.tolist() == [True, True, False]
    assert act.released_kw == pytest.approx(5.52 + 2.76)
    assert act.restore_at == utc(2026, 1, 15, 10, 15)
    assert act.duration_s.tolist() == [480.0, 480.0, 0.0]
    assert act.skipped()["at_minimum"] == 1
    assert act.until(0) == utc(2026, 1, 15, 10, 15)


# --- budget ------------------------------------------------------------------------------


def test_budget_cuts_the_curtailment_short() -> None:
    # 20 min already used 40-60 min ago: 10 min left of 30
    out = budget_duration_s(
        np.array([1800.0]), np.array([0]), np.array([-3600.0]), np.array([-2400.0]), 900.0
    )
    assert out.tolist() == [600.0]


def test_budget_window_rolls_old_curtailment_out() -> None:
    # 10 min from 4h05 to 3h55 before the signal (5 min of it inside the window at the signal)
    # and 20 min an hour ago: f(x) = x + 1200 + max(0, 300 - x) <= 1800  =>  x = 600 s.
    # Without the rolling window (counting 1500 s at the signal) it would be 300 s.
    out = budget_duration_s(
        np.array([1800.0]),
        np.array([0, 0]),
        np.array([-14700.0, -3600.0]),
        np.array([-14100.0, -2400.0]),
        900.0,
    )
    assert out.tolist() == [600.0]


def test_budget_across_overlapping_activations() -> None:
    """Three activations in one 4 h window: 8 + 14 min used, so the third gets 8 minutes and a
    fourth none; each session restores where its own budget runs out."""
    n = 2
    first = activate(**fleet(n))  # type: ignore[arg-type]
    assert first.duration_s.tolist() == [480.0, 480.0]  # 10:07 -> 10:15
    # session 1 only had 20 min of budget in its contract
    second_at = utc(2026, 1, 15, 10, 16)
    log_s = np.array([0, 1])
    start = np.array([-540.0, -540.0])  # 10:07 relative to 10:16
    end_ = start + first.duration_s
    second = activate(
        **fleet(n, signal_at=second_at, budget_s=np.array([1800.0, 1200.0])),  # type: ignore[arg-type]
        log_session=log_s,
        log_start_s=start,
        log_end_s=end_,
    )
    # until 10:30 = 840 s; session 1 has 1200 - 480 = 720 s left
    assert second.duration_s.tolist() == [840.0, 720.0]
    third_at = utc(2026, 1, 15, 10, 31)  # ISP end 10:45: up to 840 s
    # relative to 10:31: 10:07-10:15 for both, 10:16-10:30 for 0 and 10:16-10:28 for 1
    log3 = np.array([0, 1, 0, 1])
    s3 = np.array([-1440.0, -1440.0, -900.0, -900.0])
    e3 = np.array([-960.0, -960.0, -60.0, -180.0])
    third = activate(
        **fleet(n, signal_at=third_at, budget_s=np.array([1800.0, 1200.0])),  # type: ignore[arg-type]
        log_session=log3,
        log_start_s=s3,
        log_end_s=e3,
    )
    # session 0: 1800 - 480 - 840 = 480 s; session 1: 1200 - 480 - 720 = 0 -> exhausted
    assert third.duration_s.tolist() == [480.0, 0.0]
    assert third.reason[1] == SKIP_REASONS.index("budget_exhausted")


def test_short_activation_is_not_mistaken_for_an_exhausted_budget() -> None:
    # 30 s before the ISP end: everyone is curtailed for those 30 s; a session with 20 s of
    # budget left is not worth two profile changes
    act = activate(
        **fleet(2, signal_at=utc(2026, 1, 15, 10, 14, 30)),  # type: ignore[arg-type]
        log_session=np.array([1]),
        log_start_s=np.array([-1800.0]),
        log_end_s=np.array([-20.0]),
    )
    assert act.duration_s.tolist() == [30.0, 0.0]
    assert act.reason[1] == SKIP_REASONS.index("budget_exhausted")


def test_session_still_curtailed_is_not_taken_again() -> None:
    act = activate(
        **fleet(2),  # type: ignore[arg-type]
        log_session=np.array([0]),
        log_start_s=np.array([-120.0]),
        log_end_s=np.array([300.0]),
    )
    assert act.reason.tolist() == [SKIP_REASONS.index("already_curtailed"), CHOSEN]


# --- eligibility -------------------------------------------------------------------------


def test_opt_out_and_consent_rules() -> None:
    act = activate(
        **fleet(
            4,
            opt_out=np.array([True, False, False, False]),
            consent_required=np.array([False, True, True, False]),
            consent=np.array([False, False, True, False]),
        )  # type: ignore[arg-type]
    )
    assert act.reason.tolist() == [
        SKIP_REASONS.index("opt_out"),
        SKIP_REASONS.index("no_consent"),
        CHOSEN,
        CHOSEN,
    ]
    assert act.skipped() == {
        "opt_out": 1,
        "no_consent": 1,
        "already_curtailed": 0,
        "at_minimum": 0,
        "budget_exhausted": 0,
        "not_needed": 0,
    }


# --- partial activation ------------------------------------------------------------------


def test_partial_activation_reaches_the_target_with_the_fairest_choice() -> None:
    # five sessions of 5.52 kW; target 10 kW -> two sessions.
    # session 0 was curtailed before (n=1) although it has the most budget: it goes last.
    # among the never-curtailed, most remaining budget first: 3 (1800), then 2 (1500)
    act = activate(
        **fleet(5, budget_s=np.array([3600.0, 1200.0, 1500.0, 1800.0, 1200.0])),  # type: ignore[arg-type]
        n_curtailed=np.array([1, 0, 0, 0, 0]),
        target_kw=10.0,
    )
    assert np.flatnonzero(act.chosen).tolist() == [2, 3]
    assert act.released_kw == pytest.approx(11.04)
    assert act.target_reached
    assert act.skipped()["not_needed"] == 3


def test_partial_activation_prefers_least_curtailment_so_far() -> None:
    # equal budgets; session 1 used 10 min in the window -> remaining lower -> later
    act = activate(
        **fleet(3, signal_at=utc(2026, 1, 15, 10, 0)),  # type: ignore[arg-type]
        log_session=np.array([1]),
        log_start_s=np.array([-3000.0]),
        log_end_s=np.array([-2400.0]),
        target_kw=11.0,
    )
    assert np.flatnonzero(act.chosen).tolist() == [0, 2]


def test_partial_activation_never_repeats_while_others_wait() -> None:
    """Repeated partial activations rotate through the fleet before anyone is taken twice."""
    n = 6
    counts = np.zeros(n, dtype=np.int64)
    for k in range(3):
        act = activate(
            **fleet(n, signal_at=utc(2026, 1, 15, 10 + k, 0)),  # type: ignore[arg-type]
            n_curtailed=counts.copy(),
            target_kw=5.0,
        )
        assert int(act.chosen.sum()) == 2 or act.released_kw >= 5.0
        assert counts[act.chosen].max() == counts.min()
        counts += act.chosen
    assert counts.tolist() == [1, 1, 1, 0, 0, 0] or counts.max() - counts.min() <= 1


def test_target_out_of_reach_curtails_everyone_eligible() -> None:
    act = activate(**fleet(2), target_kw=100.0)  # type: ignore[arg-type]
    assert act.chosen.all()
    assert not act.target_reached


def test_negative_target_is_refused() -> None:
    with pytest.raises(FastPathError, match=r"^target_kw:"):
        activate(**fleet(2), target_kw=-1.0)  # type: ignore[arg-type]


def test_permuting_sessions_permutes_the_decision() -> None:
    rng = np.random.default_rng(3)
    n = 50
    kw = fleet(
        n,
        i_now_a=rng.uniform(6, 16, n),
        budget_s=rng.choice([600.0, 1800.0], n),
        opt_out=rng.random(n) < 0.1,
    )
    a = activate(**kw)  # type: ignore[arg-type]
    perm = rng.permutation(n)
    kw_p = {k: (v[perm] if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    b = activate(**kw_p)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.reason[perm], b.reason)
    np.testing.assert_allclose(a.duration_s[perm], b.duration_s)


# --- properties --------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def fleets_with_logs(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(1, 6))
    budget_min = draw(st.lists(st.sampled_from([10, 20, 30, 45]), min_size=n, max_size=n))
    entries = []
    for s in range(n):
        t = -4.5 * 3600.0
        for _ in range(draw(st.integers(0, 4))):
            t += draw(st.integers(60, 4000))
            d = draw(st.integers(60, 900))
            if t + d > 0:
                break
            entries.append((s, t, t + d))
            t += d
    minute = draw(st.integers(0, 59))
    second = draw(st.integers(0, 59))
    return {
        "n": n,
        "budget_s": np.array(budget_min, float) * 60.0,
        "log": entries,
        "at": utc(2026, 3, 29, 0, minute, second),
        "target": draw(st.none() | st.floats(1.0, 40.0)),
        "i_now": draw(st.lists(st.floats(6.0, 16.0), min_size=n, max_size=n)),
    }


@settings(max_examples=150, deadline=None)
@given(fleets_with_logs())
def test_no_rolling_window_ever_exceeds_the_budget(case: dict[str, object]) -> None:
    """Brute force on a 10-second grid: every 4-hour window ending within a session's new
    curtailment holds at most its budget, old and new curtailment together."""
    n = int(case["n"])  # type: ignore[call-overload]
    log = case["log"]
    assert isinstance(log, list)
    budget = case["budget_s"]
    assert isinstance(budget, np.ndarray)
    act = activate(
        **fleet(
            n,
            signal_at=case["at"],
            i_now_a=np.array(case["i_now"]),
            budget_s=budget,
        ),  # type: ignore[arg-type]
        log_session=np.array([e[0] for e in log], dtype=np.int64),
        log_start_s=np.array([e[1] for e in log], dtype=float),
        log_end_s=np.array([e[2] for e in log], dtype=float),
        target_kw=case["target"],  # type: ignore[arg-type]
    )
    horizon = (act.restore_at - act.signal_at).total_seconds()
    assert 0 < horizon <= 900
    grid = np.arange(-5 * 3600, int(horizon) + 1, 10.0)
    for s in range(n):
        on = np.zeros(grid.size, dtype=bool)
        for e in log:
            if e[0] == s:
                on |= (grid >= e[1]) & (grid < e[2])
        x = act.duration_s[s]
        assert 0 <= x <= horizon
        on |= (grid >= 0) & (grid < x)
        used = np.cumsum(on) * 10.0
        window = int(4 * 3600 / 10)
        in_window = used[window:] - used[:-window]
        # windows ending within the session's new curtailment; on the 10 s grid each interval
        # (the logged ones and the new one) may count up to one step more than it lasts; an
        # earlier log may itself have broken the budget, which is not this activation's doing
        ends = (grid[window:] > 0) & (grid[window:] <= x)
        slack = 10.0 * (1 + sum(1 for e in log if e[0] == s))
        assert (in_window[ends] <= budget[s] + slack).all()
        if act.chosen[s] and x < horizon:  # cut by the budget: one second more would break it
            mine = [e for e in log if e[0] == s]
            more = np.array([x + 1.0])
            past = window_used_s(
                1,
                np.zeros(len(mine), dtype=np.int64),
                np.array([e[1] for e in mine]),
                np.array([e[2] for e in mine]),
                more,
            )
            assert more[0] + past[0] > budget[s]
    # released power is the sum over the curtailed sessions
    want = sum(
        (case["i_now"][s] - 8.0) * 3 * 0.23  # type: ignore[index]
        for s in range(n)
        if act.chosen[s]
    )
    assert act.released_kw == pytest.approx(want)


def test_budget_ahead_spent_held_and_window_clear() -> None:
    """Session 0: 10-minute budget spent by a curtailment that ended 3 h 30 min ago, free again
    once it starts leaving the window (after 20 minutes); session 1: held until 5 minutes from now;
    session 2: no log, budget shorter than the slot."""
    from optimizer.fastpath import budget_ahead_s

    budget = np.array([600.0, 1800.0, 300.0])
    log_session = np.array([0, 1], dtype=np.int64)
    log_start = np.array([-220 * 60.0, -600.0])
    log_end = np.array([-210 * 60.0, 300.0])
    at = np.array([0.0, 15 * 60.0, 21 * 60.0, 5 * 3600.0])
    horizon = np.full(4, 900.0)
    x = budget_ahead_s(budget, log_session, log_start, log_end, at, horizon)
    assert x.shape == (3, 4)
    assert x[0].tolist() == [0.0, 0.0, 600.0, 600.0]
    assert x[1, 0] == 0.0  # still held
    # after the hold: 15 min used in the window, 30 min budget -> 15 min allowed
    assert x[1, 1] == 900.0 and x[1, 3] == 900.0
    assert x[2].tolist() == [300.0] * 4
