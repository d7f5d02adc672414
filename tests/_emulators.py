"""Start and stop gcloud emulators (Firestore, Pub/Sub) for the tests.

Each emulator runs as ``gcloud ... start`` on a free port of 127.0.0.1, in its own
process group, logging to a temporary file. gcloud starts a shell script that starts
Java, so stopping kills the whole group (SIGTERM, then SIGKILL) or the JVM would
outlive the tests.

:func:`emulator_or_skip` is what fixtures use: without ``gcloud`` on PATH it skips
locally and fails loudly under ``CI=true``; an emulator that is present but does not
start always fails (never skips), with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

__all__ = [
    "EMULATOR_PROJECT",
    "Emulator",
    "EmulatorError",
    "EmulatorKind",
    "emulator_or_skip",
    "group_members",
    "running_emulator",
]

EmulatorKind = Literal["firestore", "pubsub"]

EMULATOR_PROJECT = "firecron-test"
"""Project id the Pub/Sub emulator is started for (Firestore accepts any project)."""

START_TIMEOUT = 60.0
"""Seconds to wait for an emulator to answer."""
STOP_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL of the process group."""

_LOG_TAIL_LINES = 30


class EmulatorError(RuntimeError):
    """An emulator did not start (or did not answer) in time."""


class _PortTakenError(EmulatorError):
    """The emulator exited because its port was taken meanwhile (retried on another)."""


_PORT_TRIES = 3


def _port_taken(emulator: Emulator) -> bool:
    log = emulator.log_tail(200).lower()
    return "address already in use" in log or "bindexception" in log


@dataclass
class Emulator:
    """A started emulator: ``host`` is ``127.0.0.1:PORT``; ``pgid`` its process group."""

    kind: EmulatorKind
    host: str
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    @property
    def pgid(self) -> int:
        """The emulator's process group (its own: it was started in a new session)."""
        return self.process.pid

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the emulator's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, *, keep_log: bool = False) -> None:
        """Kill the whole process group, wait until none of it survives, clean up."""
        try:
            _kill_group(self.pgid, self.process)
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            if not keep_log:
                self.log_path.unlink(missing_ok=True)


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(kind: EmulatorKind, gcloud: str, host: str, data_dir: Path) -> list[str]:
    if kind == "firestore":
        return [gcloud, "emulators", "firestore", "start", f"--host-port={host}"]
    return [
        gcloud,
        "beta",
        "emulators",
        "pubsub",
        "start",
        f"--host-port={host}",
        f"--project={EMULATOR_PROJECT}",
        # Its own data dir: the default one under ~/.config is shared between sessions.
        f"--data-dir={data_dir}",
    ]


def _answers(kind: EmulatorKind, host: str) -> bool:
    path = "/" if kind == "firestore" else f"/v1/projects/{EMULATOR_PROJECT}/topics"
    # No proxies: an HTTP(S)_PROXY in the environment must not see loopback probes.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{host}{path}", timeout=1.0) as response:
            body = response.read()
            if response.status != 200:
                return False
            return body.strip() == b"Ok" if kind == "firestore" else True
    except (OSError, urllib.error.URLError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux: read from /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
            members.append(int(entry.name))
    return members


def _kill_group(pgid: int, process: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            # Reap our own child so it does not linger as a zombie of the group.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)
            if not group_members(pgid):
                return
            time.sleep(0.05)
    survivors = group_members(pgid)
    if survivors:
        raise EmulatorError(f"processes {survivors} of group {pgid} survived SIGKILL")


def start_emulator(
    kind: EmulatorKind, *, gcloud: str | None = None, timeout: float = START_TIMEOUT
) -> Emulator:
    """Start an emulator of ``kind`` and return once it answers HTTP.

    Raises :class:`EmulatorError` (with the log tail) if it exits or does not answer
    within ``timeout`` seconds; the process group is killed first.
    """
    gcloud = gcloud or shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorError("gcloud not found on PATH")
    for _ in range(_PORT_TRIES - 1):
        try:
            return _start_once(kind, gcloud, timeout)
        except _PortTakenError:
            continue  # another process took the free port before the emulator bound it
    return _start_once(kind, gcloud, timeout)


def _start_once(kind: EmulatorKind, gcloud: str, timeout: float) -> Emulator:
    host = f"127.0.0.1:{_free_port()}"
    data_dir = Path(tempfile.mkdtemp(prefix=f"firecron-{kind}-data-"))
    log_fd, log_name = tempfile.mkstemp(prefix=f"firecron-{kind}-", suffix=".log")
    with os.fdopen(log_fd, "wb") as log:
        try:
            process = subprocess.Popen(
                _command(kind, gcloud, host, data_dir),
                stdin=subprocess.DEVNULL,  # a prompt (e.g. "install component?") gets EOF
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            shutil.rmtree(data_dir, ignore_errors=True)
            raise EmulatorError(f"cannot run {gcloud}: {exc}") from exc
    emulator = Emulator(kind, host, process, Path(log_name), data_dir)
    deadline = time.monotonic() + timeout
    while True:
        if _answers(kind, host):
            return emulator
        code = process.poll()
        if code is not None or time.monotonic() > deadline:
            reason = (
                f"exited with code {code}" if code is not None else f"no answer in {timeout:g}s"
            )
            message = f"{kind} emulator on {host} {reason}; log {log_name}:\n{emulator.log_tail()}"
            taken = code is not None and _port_taken(emulator)
            with contextlib.suppress(EmulatorError):
                # Keep the log the message points at, unless we retry on another port.
                emulator.stop(keep_log=not taken)
            raise (_PortTakenError if taken else EmulatorError)(message)
        time.sleep(0.1)


@contextlib.contextmanager
def running_emulator(kind: EmulatorKind, *, timeout: float = START_TIMEOUT) -> Iterator[Emulator]:
    """Start an emulator, yield it, and stop it (removing its log) on exit."""
    emulator = start_emulator(kind, timeout=timeout)
    try:
        yield emulator
    finally:
        emulator.stop()


@contextlib.contextmanager
def emulator_or_skip(kind: EmulatorKind) -> Iterator[str]:
    """Yield ``127.0.0.1:PORT`` of a running emulator of ``kind``; stop it on exit.

    Without ``gcloud`` on PATH: ``pytest.skip`` locally, ``pytest.fail`` when ``CI`` is
    ``true``/``1``. gcloud present but the emulator not starting: always ``pytest.fail``.
    """
    if shutil.which("gcloud") is None:
        if _ci():
            pytest.fail(
                f"gcloud not found on PATH, but CI is set: the {kind} emulator tests MUST run "
                "in CI. Install the Google Cloud SDK with its emulator components "
                "(cloud-firestore-emulator, pubsub-emulator) and Java.",
                pytrace=False,
            )
        pytest.skip("gcloud not found: emulator tests skipped (they run in CI)")
    try:
        emulator = start_emulator(kind)
    except EmulatorError as exc:
        pytest.fail(f"the {kind} emulator failed to start: {exc}", pytrace=False)
    try:
        yield emulator.host
    finally:
        emulator.stop()
