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
    most = (net.step_max_a() * net.presence()).sum(axis=1) * net.kw_per_a * net.dt_h
    return np.where(np.isnan(net.need_kwh), most, np.minimum(np.nan_to_num(net.need_kwh), most))


def greedy_currents_a(net: Network) -> np.ndarray:
    """Current [A] per session and step from the least-laxity-first greedy.

    Parameters
    ----------
    net : Network

    Returns
    -------
    numpy.ndarray
        ``sessions × steps`` [A]; every group limit holds wherever the no-pause levels allow.
    """
    n, steps = net.n_sessions, net.steps
    current = np.zeros((n, steps))
    if n == 0:
        return current
    remaining = deliverable_need_kwh(net)
    kwh_per_a = net.kw_per_a * net.dt_h
    req_all = required_level_a(net)
    coef = net.groups.coef.tocsc()  # columns sliced to the sessions charging in each step
    member_t = coef.T.tocsr()  # sessions × groups: the groups each session belongs to
    indptr = member_t.indptr
    group_of = member_t.indices
    n_groups = np.diff(indptr)
    max_step_kwh = net.max_a * kwh_per_a
    step_max = net.step_max_a()

    for t in range(steps):
        active = (net.first <= t) & (t < net.end) & (remaining > 1e-9)
        if not active.any():
            continue
        hi = np.where(active, np.minimum(step_max[:, t], remaining / kwh_per_a), 0.0)
        lo = np.where(active & ~net.pause_consent, np.minimum(req_all[:, t], hi), 0.0)
        alloc = lo.copy()
        limit = net.groups.limit[:, t]
        idx = np.nonzero(active)[0]
        coef_t = coef[:, idx]
        steps_left = net.end - t
        laxity = steps_left - remaining / np.maximum(max_step_kwh, 1e-12)
        order = idx[np.argsort(laxity[idx], kind="stable")]
        cuts = np.searchsorted(laxity[order], LAXITY_EDGES_STEPS, side="left")
        for bucket in np.split(order, cuts):
            if bucket.size == 0:
                continue
            free = bucket[n_groups[bucket] == 0]  # in no limit group: only its own bounds
            alloc[free] = hi[free]
            bucket = bucket[n_groups[bucket] > 0]
            # flat positions of the bucket's group memberships, and where each session starts
            lens = n_groups[bucket]
            starts = np.cumsum(lens) - lens
            flat = np.repeat(indptr[bucket] - starts, lens) + np.arange(lens.sum())
            groups_flat = group_of[flat]
            want = np.zeros(n)
            want[bucket] = hi[bucket] - alloc[bucket]
            for _ in range(ROUNDS):
                if bucket.size == 0 or want[bucket].max() <= 1e-9:
                    break
                headroom = np.maximum(limit - coef_t @ alloc[idx], 0.0)
                demand = coef_t @ want[idx]
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(demand > 1e-12, np.minimum(headroom / demand, 1.0), 1.0)
                # a session's factor: the tightest ratio among its groups
                factor = np.minimum.reduceat(ratio[groups_flat], starts)
                give = want[bucket] * factor
                alloc[bucket] += give
                want[bucket] -= give
        # a pause-consent session that could not reach its level is paused (frees headroom)
        below = net.pause_consent & (alloc < np.minimum(req_all[:, t], hi) - 1e-9)
        alloc[below] = 0.0
        current[:, t] = alloc
        remaining = remaining - alloc * kwh_per_a
    return current
