"""``firecron dev`` in a subprocess, as a user runs it, for the dev tests.

    with dev_stack(tmp_path, "--schedules", "schedules.yaml") as dev:
        poll(lambda: succeeded(tmp_path, "hello-fast"), what="a hello-fast run succeeded", dev=dev)

Its output goes to a file (``dev.output()``), so a chatty stack never blocks on a full
pipe. The stack is stopped with SIGTERM on exit (SIGKILL if it hangs); ``dev.stop()``
stops it earlier and returns its exit code. Waiting is :func:`poll`, the shared
``_poll.poll`` that also gives up at once when the stack died.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

import _poll
from _cli import FIRECRON, clean_env, run_cli

__all__ = [
    "FIRECRON",
    "DevProcess",
    "clean_env",
    "dev_stack",
    "firecron",
    "free_port",
    "poll",
    "runs",
]

_T = TypeVar("_T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevProcess:
    """A running ``firecron dev``: its process, port and output file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        """SIGTERM, wait for the exit (SIGKILL the group after 20 s); the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def dev_stack(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> Iterator[DevProcess]:
    """Start ``firecron dev --port FREE *args`` in ``cwd``, wait until it serves; stop it on exit."""
    port = free_port()
    log_path = cwd / f"dev-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [FIRECRON, "dev", "--port", str(port), *args],
            cwd=cwd,
            env=dict(env) if env is not None else clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = DevProcess(process, port, log_path)
    try:
        # Read-only commands refuse a store that does not exist yet: wait for the stack.
        poll(lambda: "Ctrl-C to stop" in dev.output(), what="firecron dev started", dev=dev)
        yield dev
    finally:
        dev.stop()


def poll(
    check: Callable[[], _T],
    *,
    what: str,
    timeout: float = _poll.TIMEOUT,
    dev: DevProcess | None = None,
) -> _T:
    """:func:`_poll.poll` of ``check`` until it returns something truthy; that value.

    Fails at once, with the stack's output, if ``dev`` exits meanwhile.
    """

    def probe() -> _T:
        if dev is not None and not dev.alive():
            pytest.fail(f"firecron dev exited while waiting for {what}:\n{dev.output()}")
        return check()

    # Most probes run a `firecron` subprocess or read a file: no need to spin faster.
    return _poll.poll(probe, what=what, timeout=timeout, interval=0.1)


def firecron(
    cwd: Path, *args: str, env: Mapping[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``firecron *args`` in ``cwd`` (clean environment unless ``env``)."""
    return run_cli(*args, cwd=cwd, env=env, check=check)


def runs(cwd: Path, schedule_id: str | None = None) -> list[dict[str, Any]]:
    """``firecron runs --json`` on the default store of ``cwd`` (newest first)."""
    args = ["runs", "--json", "--limit", "100"]
    if schedule_id:
        args += ["--schedule", schedule_id]
    return list(json.loads(firecron(cwd, *args).stdout))
