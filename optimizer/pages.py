"""Ordinary memory pages for numpy's large arrays in a scheduling process.

On Linux with transparent huge pages in ``madvise`` mode (the common default), numpy asks the
kernel for 2 MiB pages for every array of 4 MiB or more (``madvise(MADV_HUGEPAGE)``). A warm
re-solve at 16,000 connectors makes hundreds of such arrays, most of them gone a few
milliseconds later; on the first touch of each huge page the kernel has to find a free 2 MiB
block (compacting memory for it when ``defrag`` is ``madvise``) and zero it. On the 2-core
benchmark host, five warm re-solves after a 5 % change took a median of 0.93–1.02 s with the
advice and 0.87–0.93 s without it, the first one after a cold solve 1.06–1.20 s against
0.83–0.92 s, and a one-step DR event 0.68–0.85 s against 0.54–0.74 s (docs/scale.md).

NumPy reads ``NUMPY_MADVISE_HUGEPAGE`` when it is imported (numpy's "Global state" page).
Importing :mod:`optimizer` turns the advice off with numpy's own switch and sets the variable
for child processes, unless the variable is set already: then it is the user's choice.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

VARIABLE = "NUMPY_MADVISE_HUGEPAGE"


def _multiarray() -> Any:
    """numpy's module holding the advice's switch (its place moved in numpy 2)."""
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "_set_madvise_hugepage"):
            return module
    return None


def advice_on() -> bool | None:
    """Whether numpy asks for huge pages now (None: this numpy has no such switch)."""
    module = _multiarray()
    return None if module is None else bool(module._get_madvise_hugepage())


def use_small_pages() -> bool:
    """Stop numpy asking for huge pages in this process and its children, unless
    ``NUMPY_MADVISE_HUGEPAGE`` is set. Returns whether this call turned the advice off."""
    if os.environ.get(VARIABLE) is not None:
        return False
    module = _multiarray()
    if module is None:
        return False
    module._set_madvise_hugepage(False)
    os.environ[VARIABLE] = "0"
    return True
