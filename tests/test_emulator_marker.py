"""``pytest -m "not emulator"`` is the fast run: it selects no test that needs an emulator.

Every emulator-using test carries the ``emulator`` marker: the Firestore store
parameter (``conftest.STORE_BACKENDS``) and the tests that start one themselves. The
``firestore_emulator`` fixture enforces it, failing an unmarked test before anything
starts. Both checks run pytest in a subprocess, without an emulator.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
_PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]

# A node id whose parameters include the "firestore" store backend: "name[firestore]",
# "name[firestore-x]" or "name[x-firestore]".
_FIRESTORE_PARAM = re.compile(r"\[(?:.*-)?firestore(?:-.*)?\]$")


def _collected(marker: str) -> list[str]:
    """Node ids that ``pytest -m MARKER --collect-only`` selects in tests/."""
    proc = subprocess.run(
        [*_PYTEST, "--collect-only", "-q", "-m", marker, str(TESTS)],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # A test module that fails to import is another test's failure, not this one's.
    assert proc.returncode in (0, 2), proc.stdout[-3000:] + proc.stderr[-3000:]
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_the_fast_run_selects_no_firestore_backend_and_no_emulator_test() -> None:
    fast = _collected("not emulator")
    slow = _collected("emulator")
    assert fast, "nothing collected"
    assert [node for node in fast if _FIRESTORE_PARAM.search(node)] == []
    assert [node for node in fast if "test_firestore_layout.py" in node] == []
    # The marked ones exist, so the fast run left them out rather than lost them.
    assert any(_FIRESTORE_PARAM.search(node) for node in slow)
    assert any("test_store_contract.py" in node for node in slow)


def test_an_unmarked_test_using_the_emulator_fails_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "test_unmarked.py").write_text(
        "def test_unmarked(firestore_emulator: str) -> None:\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    # No gcloud on PATH: without the check the emulator fixture would skip, not fail.
    env["PATH"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [*_PYTEST, "-q", "-p", "conftest", "--rootdir", str(tmp_path), "test_unmarked.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "uses the Firestore emulator but is not marked emulator" in out


@pytest.mark.emulator
def test_a_marked_test_may_use_the_emulator(firestore_emulator: str) -> None:
    assert firestore_emulator.startswith("127.0.0.1:")
