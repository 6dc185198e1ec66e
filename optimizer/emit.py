"""Attach OCPP 1.6, OCPP 2.0.1 and OCPI 2.2.1 charging profiles to a schedule."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from optimizer.network import Network
from optimizer.profiles import session_profiles


def attach_profiles(net: Network, schedule: dict[str, Any], formats: Collection[str]) -> None:
    """Add ``schedule["profiles"][session_id][format]`` for every session present on the grid.

    Sessions that are present at no step get no profile (there is nothing to send).
    """
    present = net.presence()
    out: dict[str, dict[str, Any]] = {}
    for k, sid in enumerate(net.session_ids):
        if not present[k].any():
            continue
        out[sid] = session_profiles(
            session_id=sid,
            evse_id=int(net.evse_index[k]),
            start=net.grid.start_utc,
            step_s=net.grid.step_s,
            current_a=np.asarray(schedule["sessions"][sid]["current_a"], dtype=float),
            present=present[k],
            min_current_a=float(net.min_a[k]),
            n_phases=int(net.n_phases[k]),
            pause_consent=bool(net.pause_consent[k]),
            formats=tuple(formats),
        )
    schedule["profiles"] = out
