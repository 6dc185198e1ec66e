"""Uncontrolled charging: what stations do today without a scheduler.

Every car charges at the most its connector and its station's share allow from plug-in until it
is full or leaves: ``i = min(connector limit, station limit / m, remaining need)`` where ``m`` is
the largest number of the station's charging cars on any phase the car draws on. Grid limits
above the station are ignored, which is the point of the comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from optimizer.network import Network, compile_network
from optimizer.scenario import parse_scenario


def uncontrolled_currents_a(net: Network) -> np.ndarray:
    """Current [A] per session (rows) and step (columns) under uncontrolled charging.

    Parameters
    ----------
    net : Network
        The compiled scenario.

    Returns
    -------
    numpy.ndarray
        ``sessions × steps`` average current per phase [A].
    """
    n, steps = net.n_sessions, net.steps
    current = np.zeros((n, steps))
    remaining = np.where(np.isnan(net.need_kwh), np.inf, net.need_kwh)
    kwh_per_a = net.kw_per_a * net.dt_h
    n_st = len(net.station_ids)
    for t in range(steps):
        active = (net.first <= t) & (t < net.end) & (remaining > 1e-9)
        if not active.any():
            continue
        m = np.zeros(n)
        for ph in range(3):
            on = active & net.phase_mask[:, ph]
            count = np.bincount(net.session_station[on], minlength=n_st)
            m = np.where(net.phase_mask[:, ph], np.maximum(m, count[net.session_station]), m)
        share = net.station_limit_a[net.session_station, t] / np.maximum(m, 1.0)
        i = np.minimum(net.max_a, share)
        i = np.minimum(i, remaining / kwh_per_a)
        i = np.where(active, i, 0.0)
        current[:, t] = i
        remaining = remaining - i * kwh_per_a
    return current


def node_power_kw(net: Network, current_a: np.ndarray) -> dict[str, np.ndarray]:
    """Aggregate power [kW] per step for every node and station.

    ``P_n(t) = Σ_{s below n} i_s(t) · n_s · V / 1000``.
    """
    power = node_power_matrix_kw(net, current_a)
    return {nid: power[k] for k, nid in enumerate(net.node_members)}


def node_power_matrix_kw(net: Network, current_a: np.ndarray) -> np.ndarray:
    """Aggregate power [kW] of every node and station (rows, in ``net.node_members`` order)
    per step: one sparse product ``members · (i · kW/A)``."""
    members = net._memo.get("node_member_matrix")
    if members is None:
        sizes = [m.size for m in net.node_members.values()]
        rows = np.repeat(np.arange(len(sizes)), sizes)
        cols = np.concatenate(list(net.node_members.values())) if sizes else np.zeros(0, np.int64)
        members = sp.csr_matrix(
            (np.ones(rows.size), (rows, cols)), shape=(len(sizes), net.n_sessions)
        )
        net._memo["node_member_matrix"] = members
    return np.asarray(members @ (current_a * net.kw_per_a[:, None]))


def uncontrolled_node_power_kw(scenario: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Uncontrolled power [kW] per step for each node and station of a scenario dict."""
    net = compile_network(parse_scenario(scenario))
    return node_power_kw(net, uncontrolled_currents_a(net))
