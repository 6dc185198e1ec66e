"""Least-laxity-first greedy schedule in numpy: the safe fallback when a solve fails.

Step by step, every charging session first gets its no-pause level (the minimum current, or the
opt-out share; less only in the step the car becomes full). The remaining headroom of every limit
group is then handed out in priority buckets of increasing laxity (time left minus time still
needed at full current; bucket edges :data:`LAXITY_EDGES_STEPS`). Inside a bucket each
session's request is scaled by the tightest headroom ratio of the groups it belongs to, a few
rounds at a time, so no limit is exceeded.
"""

from __future__ import annotations

import numpy as np

from optimizer.network import Network
from optimizer.problem import required_level_a

LAXITY_EDGES_STEPS = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Upper laxity edges [steps] of the priority buckets (the last bucket takes the rest).

Fixed edges, not equal-count splits: a session's bucket depends only on its own laxity, so the
greedy schedule of one DSO region never depends on the sessions of another region and the
independent parts of the LP (:mod:`optimizer.decompose`) get the same anchor whether they are
solved together or apart."""
ROUNDS = 3


def deliverable_need_kwh(net: Network) -> np.ndarray:
    """Energy each session should get [kWh]: its need capped by what its stay allows."""
    most = net.most_a_per_stay() * net.kw_per_a * net.dt_h
    return np.where(np.isnan(net.need_kwh), most, np.minimum(np.nan_to_num(net.need_kwh), most))


def greedy_currents_a(net: Network) -> np.ndarray:
    """Current [A] per session and step from the least-laxity-first greedy.

    Each step works only on the sessions charging in it (a few thousand of tens of thousands)
    and the groups they belong to, so the whole day costs about as much as one pass over the
    sessions' stays.

    Parameters
    ----------
    net : Network

    Returns
    -------
    numpy.ndarray
        ``sessions × steps`` [A]; every group limit holds wherever the no-pause levels allow.
    """
    n, steps = net.n_sessions, net.steps
    if n == 0:
        return np.zeros((n, steps))
    current_t = np.zeros((steps, n))  # step-major while filling: rows are contiguous
    remaining = deliverable_need_kwh(net)
    kwh_per_a = net.kw_per_a * net.dt_h
    req_all = required_level_a(net)
    limit_t = np.ascontiguousarray(net.groups.limit.T)
    coef = net.groups.coef.tocsc()  # columns sliced to the sessions charging in each step
    member_t = coef.T.tocsr()  # sessions × groups: the groups each session belongs to
    indptr = member_t.indptr
    group_of = member_t.indices
    n_groups = np.diff(indptr)
    max_step_kwh = np.maximum(net.max_a * kwh_per_a, 1e-12)
    pause = net.pause_consent

    for t in range(steps):
        idx = np.nonzero((net.first <= t) & (t < net.end) & (remaining > 1e-9))[0]
        if idx.size == 0:
            continue
        # positions below are local: k stands for session idx[k]
        rem = remaining[idx]
        kwh = kwh_per_a[idx]
        step_max = net.max_a[idx] if net.cap_a is None else net.step_max_a_at(idx, t)
        hi = np.minimum(step_max, rem / kwh)
        level = np.minimum(req_all[idx, t], hi)
        alloc = np.where(pause[idx], 0.0, level)
        limit = limit_t[t]
        coef_t = coef[:, idx]
        laxity = (net.end[idx] - t) - rem / max_step_kwh[idx]
        order = np.argsort(laxity, kind="stable")
        cuts = np.searchsorted(laxity[order], LAXITY_EDGES_STEPS, side="left")
        for bucket in np.split(order, cuts):
            if bucket.size == 0:
                continue
            lens = n_groups[idx[bucket]]
            free = bucket[lens == 0]  # in no limit group: only its own bounds
            alloc[free] = hi[free]
            bucket = bucket[lens > 0]
            if bucket.size == 0:
                continue
            # flat positions of the bucket's group memberships, and where each session starts
            sess = idx[bucket]
            lens = n_groups[sess]
            starts = np.cumsum(lens) - lens
            flat = np.repeat(indptr[sess] - starts, lens) + np.arange(lens.sum())
            groups_flat = group_of[flat]
            limit_flat = limit[groups_flat]
            want = hi[bucket] - alloc[bucket]
            want_all = np.zeros(idx.size)
            for _ in range(ROUNDS):
                if want.max() <= 1e-9:
                    break
                # headroom and demand of the bucket's groups only (one entry per membership)
                headroom = np.maximum(limit_flat - (coef_t @ alloc)[groups_flat], 0.0)
                want_all[bucket] = want
                demand = (coef_t @ want_all)[groups_flat]
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(demand > 1e-12, np.minimum(headroom / demand, 1.0), 1.0)
                # a session's factor: the tightest ratio among its groups
                factor = np.minimum.reduceat(ratio, starts)
                give = want * factor
                alloc[bucket] += give
                want = want - give
        # a pause-consent session that could not reach its level is paused (frees headroom)
        alloc[pause[idx] & (alloc < level - 1e-9)] = 0.0
        current_t[t, idx] = alloc
        remaining[idx] = rem - alloc * kwh
    return np.ascontiguousarray(current_t.T)
