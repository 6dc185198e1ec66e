"""The vectorised array work of a solve equals its plain definition (loops over sessions and
steps): uncontrolled shares, no-pause levels, anchor fill steps, no-pause dips, node powers
and the schedule's current lists."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from optimizer.greedy import greedy_currents_a
from optimizer.network import Network, compile_network, gather
from optimizer.problem import _anchor_fill, build_problem, required_level_a
from optimizer.result import (
    _no_pause_dips_dense,
    current_lists,
    no_pause_dips,
    present_cells,
    present_values,
)
from optimizer.scenario import parse_scenario
from optimizer.uncontrolled import node_power_kw
from simulation.random_net import random_regions


def network(seed: int, caps: bool) -> Network:
    raw: dict[str, Any] = random_regions(seed, regions=2, stations=6, steps=16, opt_out=True)
    if caps:  # a session cap on every third session (above every station minimum)
        for k, s in enumerate(raw["sessions"]):
            if k % 3 == 0:
                s["limit_a"] = 10.0
    return compile_network(parse_scenario(raw))


NETS = [(seed, caps) for seed in (1, 2, 3) for caps in (False, True)]


def plain_share_a(net: Network) -> np.ndarray:
    present = net.presence()
    out = np.zeros((net.n_sessions, net.steps))
    for s in range(net.n_sessions):
        for t in range(net.steps):
            if not present[s, t]:
                continue
            same = (net.session_station == net.session_station[s]) & present[:, t]
            m = max(
                int((same & net.phase_mask[:, ph]).sum())
                for ph in range(3)
                if net.phase_mask[s, ph]
            )
            limit = net.station_limit_a[net.session_station[s], t]
            out[s, t] = min(net.max_a[s], limit / max(m, 1))
    return out


@pytest.mark.parametrize(("seed", "caps"), NETS)
def test_uncontrolled_share_and_required_level(seed: int, caps: bool) -> None:
    net = network(seed, caps)
    share = plain_share_a(net)
    assert np.allclose(net.uncontrolled_share_a(), share, rtol=0, atol=1e-12)
    rows = np.nonzero(net.opt_out)[0]
    assert rows.size
    assert np.array_equal(net.uncontrolled_share_a(rows), net.uncontrolled_share_a()[rows])
    level = np.repeat(net.min_a[:, None], net.steps, axis=1)
    level[rows] = np.maximum(level[rows], share[rows])
    assert np.allclose(required_level_a(net), np.minimum(level, net.step_max_a()), atol=1e-12)


@pytest.mark.parametrize(("seed", "caps"), NETS)
def test_anchor_fill_on_variables_equals_the_dense_rule(seed: int, caps: bool) -> None:
    net = network(seed, caps)
    anchor = greedy_currents_a(net)
    p = build_problem(net, anchor_a=anchor)
    need = np.where(np.isnan(net.need_kwh), net.most_a_per_stay() * net.kw_per_a * net.dt_h, 0.0)
    need = np.where(np.isnan(net.need_kwh), need, np.minimum(np.nan_to_num(net.need_kwh), need))
    width = np.bincount(p.var_session, minlength=net.n_sessions)
    run_start = np.repeat(np.cumsum(width) - width, width)
    anchor_var = anchor[p.var_session, p.var_step]
    fills, after = _anchor_fill(
        net, anchor, anchor_var, need, p.var_session, p.var_step, p.kwh_per_a, run_start
    )
    e_cum = np.cumsum(anchor * (net.kw_per_a * net.dt_h)[:, None], axis=1)
    want_fills = (e_cum[:, -1] >= need - 1e-6) & (need > 1e-9) & ~net.pause_consent
    fill_step = np.argmax(e_cum >= (need - 1e-6)[:, None], axis=1)
    assert np.array_equal(fills, want_fills)
    assert np.array_equal(
        after, want_fills[p.var_session] & (p.var_step > fill_step[p.var_session])
    )


@pytest.mark.parametrize(("seed", "caps"), NETS)
def test_no_pause_dips_on_plugged_in_cells_equal_the_dense_rule(seed: int, caps: bool) -> None:
    net = network(seed, caps)
    rng = np.random.default_rng(seed)
    greedy = greedy_currents_a(net)
    for cur in (greedy, greedy * rng.uniform(0.2, 1.1, greedy.shape)):
        cur = cur * net.presence()
        assert np.array_equal(no_pause_dips(net, cur), _no_pause_dips_dense(net, cur, 1e-4))
    outside = greedy + 1.0  # current outside the stays: the dense rule is used
    assert np.array_equal(no_pause_dips(net, outside), _no_pause_dips_dense(net, outside, 1e-4))


def test_node_power_and_current_lists() -> None:
    net = network(2, False)
    cur = np.round(greedy_currents_a(net), 4)
    power = node_power_kw(net, cur)
    for nid, members in net.node_members.items():
        want = (cur[members] * net.kw_per_a[members, None]).sum(axis=0)
        assert np.allclose(power[nid], want, rtol=0, atol=1e-9), nid
    assert current_lists(cur) == cur.tolist()
    assert current_lists(cur, net) == cur.tolist()  # stay by stay
    outside = cur.copy()
    outside[:, 0] += 1.0  # current outside the stays: row by row
    assert current_lists(outside, net) == outside.tolist()
    odd = np.array([[0.0, 1.5, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    assert current_lists(odd) == odd.tolist()
    assert current_lists(np.zeros((0, 4))) == []


@pytest.mark.parametrize(("seed", "caps"), NETS)
def test_flat_cell_index_equals_two_index_lookups(seed: int, caps: bool) -> None:
    net = network(seed, caps)
    rng = np.random.default_rng(seed)
    cur = rng.uniform(0.0, 16.0, (net.n_sessions, net.steps))
    cell_s, cell_t, _ = present_cells(net)
    assert np.array_equal(present_values(net, cur), cur[cell_s, cell_t])
    p = build_problem(net, anchor_a=greedy_currents_a(net))
    assert p.var_flat is not None
    assert np.array_equal(gather(cur, p.var_flat), cur[p.var_session, p.var_step])
    x = rng.uniform(0.0, 16.0, p.n_vars)
    want = np.zeros((net.n_sessions, net.steps))
    want[p.var_session, p.var_step] = x
    assert np.array_equal(p.currents(x), want)
    # a problem without the flat index (as a part has) spreads the same way
    assert np.array_equal(dataclasses.replace(p, var_flat=None).currents(x), want)
