"""Process-wide holds while a schedule is computed: Python's cyclic garbage collector and
BLAS' worker threads. Both are settings of the whole process, so nested and concurrent holders
are counted (:class:`SharedHold`): the first one to enter takes the setting, the last one to
leave gives it back.

**The collector** is held while a large tree of new containers is built. A schedule at 16,000
connectors holds a list per session and per node (some 50,000 containers and 2.5 million
references); a demand-response activation allocates 10^5 to 10^6 short-lived containers.
Every few hundred allocations the collector starts and traverses the young containers, and
now and then all of them, which costs as much as building them. Reference counting still
frees every object without cycles at once, so holding the collector for the block loses
nothing.

When the last holder leaves, the containers the block made are still young: the next
allocation would start one pass over all of them (about 60 ms for a schedule). A holder that
builds something long-lived (a schedule is kept until the next one) asks for ``promote``: then
what is young is moved to the oldest generation at once instead (``gc.freeze()`` then
``gc.unfreeze()``, constant time), where a full collection still visits it. Blocks whose
objects die with them (a demand-response activation) do not ask: their few survivors, and
any cyclic garbage, are left to the young pass. Promotion is skipped when somebody else froze
objects (e.g. a server before forking), so their frozen set is left alone.

**BLAS** runs on the calling thread only. The parts of the LP already solve on every core;
after each call (a dot product of a million entries is enough to wake them) OpenBLAS' worker
threads spin-wait for more work, and that spinning takes cycles from the solver threads
(measured: about 4 % of a live re-solve's CPU time at 16,000 connectors).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from threadpoolctl import ThreadpoolController


class SharedHold:
    """A process-wide setting held while any holder runs: ``take`` when the first holder
    enters, ``give_back`` when the last one leaves; nested and concurrent holders are
    counted."""

    def __init__(self, take: Callable[[], None], give_back: Callable[[], None]) -> None:
        self._take = take
        self._give_back = give_back
        self._lock = threading.Lock()
        self._holders = 0

    @contextmanager
    def held(self, entering: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the setting while the block runs; ``entering`` runs under the hold's lock
        once the setting is taken (to note what this holder asks of the last one)."""
        with self._lock:
            if self._holders == 0:
                self._take()
            self._holders += 1
            if entering is not None:
                entering()
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self._give_back()


class _Collector:
    """What the collector's hold takes and gives back."""

    was_enabled = True
    promote = False

    @classmethod
    def take(cls) -> None:
        cls.was_enabled = gc.isenabled()
        gc.disable()

    @classmethod
    def give_back(cls) -> None:
        if cls.promote and gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        cls.promote = False
        if cls.was_enabled:
            gc.enable()

    @classmethod
    def ask_promotion(cls) -> None:
        cls.promote = True


_COLLECTOR = SharedHold(_Collector.take, _Collector.give_back)


def gc_paused(promote: bool = False) -> AbstractContextManager[None]:
    """Hold the collector while the block runs; it comes back when the last holder leaves (if
    it was on). With ``promote``, what the hold made is moved to the oldest generation when it
    ends (see the module's text)."""
    return _COLLECTOR.held(_Collector.ask_promotion if promote else None)


class _Blas:
    """What the BLAS hold takes and gives back (threadpoolctl, made on first use)."""

    controller: ThreadpoolController | None = None
    limit: Any = None

    @classmethod
    def take(cls) -> None:
        if cls.controller is None:
            cls.controller = ThreadpoolController()
        cls.limit = cls.controller.limit(limits=1, user_api="blas")

    @classmethod
    def give_back(cls) -> None:
        cls.limit.restore_original_limits()
        cls.limit = None


_BLAS = SharedHold(_Blas.take, _Blas.give_back)


def one_blas_thread() -> AbstractContextManager[None]:
    """BLAS on the calling thread only while the block runs; the count from before comes back
    when the last holder leaves."""
    return _BLAS.held()
