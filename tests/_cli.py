"""The real ``firecron`` command in a subprocess, with a clean environment.

Every CLI test runs the installed entry point (not click's runner) where exit codes,
stderr and tracebacks are what is checked:

    proc = run_cli("validate", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["FIRECRON", "clean_env", "run_cli"]

FIRECRON = str(Path(sys.executable).parent / "firecron")
"""The ``firecron`` script of the running environment."""


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``FIRECRON_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRECRON_")}
    env.update(extra or {})
    return env


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``firecron ARGS`` with text output captured; ``env`` is the whole environment
    (default :func:`clean_env`). With ``check``, a non-zero exit raises."""
    return subprocess.run(
        [FIRECRON, *args],
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )
