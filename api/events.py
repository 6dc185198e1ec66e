"""Change notifications that wake the background scheduler (debounced there)."""

from __future__ import annotations

import threading
import time
from collections import Counter


class Events:
    """Thread-safe: routes call :meth:`notify`; the scheduler :meth:`wait`s and :meth:`drain`s."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: Counter[str] = Counter()
        self.last_event = 0.0

    def notify(self, kind: str) -> None:
        with self._cond:
            self._pending[kind] += 1
            self.last_event = time.monotonic()
            self._cond.notify_all()

    def wait(self, timeout_s: float) -> bool:
        """Block until something is pending or ``timeout_s`` passes; True if pending."""
        with self._cond:
            if not self._pending:
                self._cond.wait(timeout_s)
            return bool(self._pending)

    def drain(self) -> Counter[str]:
        with self._cond:
            out, self._pending = self._pending, Counter()
            return out
