"""Importing the optimizer turns numpy's huge-page advice off, unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = (
    "import os\n"
    "from optimizer.pages import advice_on\n"
    "print(advice_on(), os.environ.get('NUMPY_MADVISE_HUGEPAGE'))\n"
)


def probe(value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if value is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_importing_the_optimizer_turns_the_advice_off_for_itself_and_its_children() -> None:
    assert probe(None) == "False 0"


def test_a_users_setting_wins() -> None:
    assert probe("0") == "False 0"
    if sys.platform == "linux":  # numpy advises huge pages on Linux only
        assert probe("1") == "True 1"
