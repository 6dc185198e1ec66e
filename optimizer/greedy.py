"""Least-laxity-first greedy schedule in numpy: the safe fallback when a solve fails.

Step by step, every charging session first gets its no-pause level (the minimum current, or the
opt-out share; less only in the step the car becomes full). The remaining headroom of every limit
group is then handed out in priority buckets of increasing laxity (time left minus time still
needed at full current; bucket edges :data:`LAXITY_EDGES_STEPS`). Inside a bucket each
session's request is scaled by the tightest headroom ratio of the groups it belongs to, a few
rounds at a time, so no limit is exceeded.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    return greedy_run(net).current_a


@dataclass(frozen=True)
class GreedyRun:
    """A greedy schedule and the energy each session still needed before each step."""

    current_a: np.ndarray
    """``sessions × steps`` [A]."""
    remaining_kwh: np.ndarray
    """``(steps + 1) × sessions`` [kWh]: row ``t`` is the state of the greedy before step ``t``."""


def greedy_run(net: Network, resume: tuple[int, GreedyRun] | None = None) -> GreedyRun:
    """The greedy schedule of ``net`` with its state before every step.

    Parameters
    ----------
    net : Network
    resume : (int, GreedyRun), optional
        ``(step, run)``: the run of an earlier network whose steps before ``step`` see the same
        sessions, levels and limits as ``net`` (:func:`first_changed_step`). Those steps are
        taken over and the greedy goes on from ``step``; the result is the same, bit for bit,
        as a run from the start.
    """
    n, steps = net.n_sessions, net.steps
    current = np.zeros((n, steps))
    trace = np.empty((steps + 1, n))
    start = 0
    deliverable = deliverable_need_kwh(net)
    if resume is not None:
        start, prior = resume
        if prior.current_a.shape != current.shape or not 0 <= start <= steps:
            raise ValueError(f"resume: a run of {current.shape} and a step in [0, {steps}]")
        # a session whose need changed has taken nothing before ``start``: it still needs it all
        moved = deliverable != prior.remaining_kwh[0]
        if (net.first[moved] < start).any():
            raise ValueError(f"resume: a session whose need changed is plugged in before {start}")
        current[:, :start] = prior.current_a[:, :start]
        trace[: start + 1] = prior.remaining_kwh[: start + 1]
        trace[: start + 1, moved] = deliverable[moved]
    else:
        trace[0] = deliverable
    remaining = trace[start].copy()
    if n == 0 or start == steps:
        return GreedyRun(current, trace)
    kwh_per_a = net.kw_per_a * net.dt_h
    req_all = required_level_a(net)
    # sessions × groups: the groups each session belongs to, with its coefficient in each
    member_t = net.groups.coef.T.tocsr()
    indptr = member_t.indptr
    group_of = member_t.indices
    coef_of = member_t.data
    n_groups = np.diff(indptr)
    n_all = net.groups.n
    max_step_kwh = np.maximum(net.max_a * kwh_per_a, 1e-12)
    pause = net.pause_consent

    def memberships(sess: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat positions of the group memberships of ``sess``, each session's first one,
        and the session (position in ``sess``) of each membership."""
        lens = n_groups[sess]
        starts = np.cumsum(lens) - lens
        flat = np.repeat(indptr[sess] - starts, lens) + np.arange(lens.sum())
        return flat, starts, np.repeat(np.arange(sess.size), lens)

    for t in range(start, steps):
        trace[t] = remaining
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
        limit = net.groups.limit[:, t]
        # every group's sum so far [A] or [kW]; kept up to date as currents are handed out
        flat, _, owner = memberships(idx)
        used = np.bincount(group_of[flat], weights=coef_of[flat] * alloc[owner], minlength=n_all)
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
            # the bucket's group memberships (one entry each), and where each session starts
            flat, starts, owner = memberships(idx[bucket])
            groups_flat = group_of[flat]
            coef_flat = coef_of[flat]
            limit_flat = limit[groups_flat]
            want = hi[bucket] - alloc[bucket]
            for _ in range(ROUNDS):
                if want.max() <= 1e-9:
                    break
                # headroom and demand of the bucket's groups only
                headroom = np.maximum(limit_flat - used[groups_flat], 0.0)
                demand = np.bincount(groups_flat, weights=coef_flat * want[owner], minlength=n_all)
                demand = demand[groups_flat]
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(demand > 1e-12, np.minimum(headroom / demand, 1.0), 1.0)
                # a session's factor: the tightest ratio among its groups
                factor = np.minimum.reduceat(ratio, starts)
                give = want * factor
                alloc[bucket] += give
                used += np.bincount(groups_flat, weights=coef_flat * give[owner], minlength=n_all)
                want = want - give
        # a pause-consent session that could not reach its level is paused (frees headroom)
        alloc[pause[idx] & (alloc < level - 1e-9)] = 0.0
        current[idx, t] = alloc
        remaining[idx] = rem - alloc * kwh
    trace[steps] = remaining
    return GreedyRun(current, trace)


def first_changed_step(old: Network, new: Network) -> int:
    """The first step in which the greedy schedule of ``new`` can differ from that of ``old``.

    The greedy goes forward in time, so its steps before the first step that sees a different
    session (stay, need and what the stay can deliver, maximum, no-pause level, cap, pause
    consent) or a different limit are the same in both networks. The sessions and limit groups
    must be the same and in the same order (else 0); ``new.steps`` means no change at all.
    """
    g_old, g_new = old.groups, new.groups
    if (
        old.grid != new.grid
        or old.session_ids != new.session_ids
        or g_old.limit.shape != g_new.limit.shape
        or g_old.kind != g_new.kind
        or g_old.subject != g_new.subject
        or not _same_sparse(g_old.coef, g_new.coef)
        or (old.cap_a is None) != (new.cap_a is None)
    ):
        return 0
    # the cheap per-session arrays first: a change at step 0 ends the search
    changed = (
        (old.first != new.first)
        | (old.end != new.end)
        | ~((old.need_kwh == new.need_kwh) | (np.isnan(old.need_kwh) & np.isnan(new.need_kwh)))
        | (old.kw_per_a != new.kw_per_a)
        | (old.max_a != new.max_a)
        | (old.pause_consent != new.pause_consent)
        | (deliverable_need_kwh(old) != deliverable_need_kwh(new))  # caps over the whole stay
    )
    first = new.steps
    if changed.any():
        first = int(np.minimum(old.first[changed], new.first[changed]).min())
    if first > 0:  # then only the steps before ``first`` matter
        req_old, req_new = required_level_a(old)[:, :first], required_level_a(new)[:, :first]
        changed = (req_old != req_new).any(axis=1)
        if old.cap_a is not None and new.cap_a is not None:
            changed |= (old.cap_a[:, :first] != new.cap_a[:, :first]).any(axis=1)
        if changed.any():
            first = min(first, int(np.minimum(old.first[changed], new.first[changed]).min()))
    if first > 0:
        lim = np.nonzero((g_old.limit[:, :first] != g_new.limit[:, :first]).any(axis=0))[0]
        if lim.size:
            first = int(lim[0])
    return first


def _same_sparse(a: object, b: object) -> bool:
    """Equal CSR matrices (shape and stored entries in the same order)."""
    return bool(
        getattr(a, "shape", None) == getattr(b, "shape", None)
        and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("indptr", "indices", "data"))
    )
