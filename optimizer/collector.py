"""Hold Python's cyclic garbage collector while a large tree of new containers is built.

A schedule at 16,000 connectors holds a list per session and per node (some 50,000 containers
and 2.5 million references); a demand-response activation allocates 10^5 to 10^6 short-lived
containers. Every few hundred allocations the collector starts and traverses the young
containers, and now and then all of them, which costs as much as building them. Reference
counting still frees every object without cycles at once, so holding the collector for the
block loses nothing.

When the last holder leaves, the containers the block made are still young: the next
allocation would start one pass over all of them (about 60 ms for a schedule). A holder that
builds something long-lived (a schedule is kept until the next one) asks for ``promote``: then
what is young is moved to the oldest generation at once instead (``gc.freeze()`` then
``gc.unfreeze()``, constant time), where a full collection still visits it. Blocks whose
objects die with them (a demand-response activation) do not ask: their few survivors, and
any cyclic garbage, are left to the young pass. Promotion is skipped when somebody else froze
objects (e.g. a server before forking), so their frozen set is left alone.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.Lock()
_HOLDERS = 0
_WAS_ENABLED = True
_PROMOTE = False


@contextmanager
def gc_paused(promote: bool = False) -> Iterator[None]:
    """Hold the collector while the block runs. Nested and concurrent holders are counted:
    the collector comes back when the last one leaves (if it was on). With ``promote``, what
    the hold made is moved to the oldest generation when it ends (see the module's text)."""
    global _HOLDERS, _WAS_ENABLED, _PROMOTE
    with _LOCK:
        if _HOLDERS == 0:
            _WAS_ENABLED = gc.isenabled()
            gc.disable()
        _HOLDERS += 1
        _PROMOTE = _PROMOTE or promote
    try:
        yield
    finally:
        with _LOCK:
            _HOLDERS -= 1
            if _HOLDERS == 0:
                if _PROMOTE and gc.get_freeze_count() == 0:
                    gc.freeze()
                    gc.unfreeze()
                _PROMOTE = False
                if _WAS_ENABLED:
                    gc.enable()
