"""Start and stop ``gcloud-tasks-emulator`` (PyPI) for the Cloud Tasks delivery tests.

The emulator pins an old protobuf, so it lives in a virtualenv of its own
(``make tasks-emulator`` creates ``.venv-tasks-emulator``; ``FIRECRON_TASKS_EMULATOR``
names the ``gcloud-tasks-emulator`` executable of another virtualenv). It runs on a free
port in its own process group, logging to a temporary file, and is stopped by killing
the whole group (the same :func:`_emulators._kill_group` as the gcloud emulators).

It is not started as is, but through ``tests/_tasks_emulator_server.py``, run by the
Python of the executable's virtualenv. The emulator (0.6.2, the latest, and the older
releases read) refuses no duplicate task name; Cloud Tasks does (``ALREADY_EXISTS`` for
a name that exists or existed in the last hour), and that is what makes firecron's
hand-over happen once. That module patches exactly this rule into the emulator, and
logs each delivery's answer (status, times, final body:
:meth:`TasksEmulator.deliveries`); see its docstring. The emulator is a test double we
start ourselves, so the patch is ours to keep. No test has run against a real queue.

It is started with one queue (:data:`QUEUE`) and ``--max-retries 0``: a failed task is
not retried, like the deployed queue (Terraform ``max_attempts = 1``). It answers
gRPC only; "answers" means a real ``google-cloud-tasks`` client's ``GetQueue`` returns
the queue.

What it does not do (so tests must not rely on it): it ignores ``oidc_token`` and
``dispatch_deadline``, sends ``X-CloudTasks-*`` headers and the task's own, and sends
one queue's tasks one after the other (Cloud Tasks sends up to the queue's
``max_concurrent_dispatches`` at once): a task whose target holds the request delays
the next. It does hold each task until its ``schedule_time`` (it looks every 0.1 s).

:func:`tasks_emulator_or_skip` is what fixtures use: without the executable it skips
locally and fails loudly under ``CI=true``; an emulator that does not start always fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.api_core.exceptions import GoogleAPICallError
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from _emulators import EMULATOR_PROJECT, _ci, _free_port, _kill_group

__all__ = [
    "QUEUE",
    "SERVER",
    "Delivery",
    "TasksEmulator",
    "TasksEmulatorError",
    "emulator_executable",
    "start_tasks_emulator",
    "tasks_emulator_or_skip",
    "tasks_emulator_started_or_skip",
]

QUEUE = f"projects/{EMULATOR_PROJECT}/locations/local/queues/firecron"
"""The queue the emulator is started with (a Cloud Tasks queue path)."""

START_TIMEOUT = 60.0
"""Seconds to wait for the emulator to answer."""

_DEFAULT = Path(__file__).resolve().parent.parent / ".venv-tasks-emulator/bin/gcloud-tasks-emulator"
SERVER = Path(__file__).resolve().with_name("_tasks_emulator_server.py")
"""The module that patches and starts the emulator (see the module docstring)."""
_LOG_PREFIX = "firecron-tasks "  # _tasks_emulator_server.LOG_PREFIX (another interpreter's)


class TasksEmulatorError(RuntimeError):
    """The emulator did not start (or did not answer) in time."""


def emulator_executable() -> Path | None:
    """``FIRECRON_TASKS_EMULATOR``, else ``.venv-tasks-emulator``'s; None when missing."""
    configured = os.environ.get("FIRECRON_TASKS_EMULATOR", "").strip()
    path = Path(configured) if configured else _DEFAULT
    return path if path.is_file() and os.access(path, os.X_OK) else None


@dataclass(frozen=True)
class Delivery:
    """One line of the emulator's delivery log (``_tasks_emulator_server``): a task sent
    and its answer, or a ``CreateTask`` refused as ``ALREADY_EXISTS`` (``refused``).

    Times are the emulator's ``time.time()`` (this machine's clock): ``sent_at`` when it
    began the request, ``answered_at`` when the answer's status and headers arrived.
    ``body`` is the answer's body when it announced a length (a streamed one: None).
    """

    task: str
    refused: bool = False
    status: int | None = None
    sent_at: float | None = None
    answered_at: float | None = None
    body: str | None = None
    error: str | None = None

    @classmethod
    def parse(cls, line: str) -> Delivery | None:
        """The record of one log line; None for a line that is not one."""
        if not line.startswith(_LOG_PREFIX):
            return None
        data: dict[str, Any] = json.loads(line[len(_LOG_PREFIX) :])
        return cls(
            task=str(data["task"]),
            refused=bool(data.get("refused", False)),
            status=data.get("status"),
            sent_at=data.get("sent_at"),
            answered_at=data.get("answered_at"),
            body=data.get("body"),
            error=data.get("error"),
        )


@dataclass
class TasksEmulator:
    """A started emulator: ``host`` is ``localhost:PORT``; ``pgid`` its process group."""

    host: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pgid(self) -> int:
        """The emulator's process group (its own: it was started in a new session)."""
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the emulator's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def deliveries(self) -> list[Delivery]:
        """Every delivery and refusal logged so far, in order (see :class:`Delivery`)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        # The last line may be partly written: only complete lines are read.
        complete = text[: text.rfind("\n") + 1]
        return [d for line in complete.splitlines() if (d := Delivery.parse(line)) is not None]

    def stop(self, *, keep_log: bool = False) -> None:
        """Kill the whole process group, wait until none of it survives, remove the log."""
        try:
            _kill_group(self.pgid, self.process)
        finally:
            if not keep_log:
                self.log_path.unlink(missing_ok=True)


def _answers(host: str) -> bool:
    channel = grpc.insecure_channel(host)
    try:
        client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        client.get_queue(name=QUEUE, timeout=1.0)
    except GoogleAPICallError:
        return False
    finally:
        channel.close()
    return True


def start_tasks_emulator(executable: Path, *, timeout: float = START_TIMEOUT) -> TasksEmulator:
    """Start the emulator of ``executable``'s virtualenv through :data:`SERVER` (run by
    that virtualenv's ``python``), and return once it answers.

    Raises :class:`TasksEmulatorError` (with the log tail) if it exits or does not
    answer within ``timeout`` seconds; its process group is killed first.
    """
    python = executable.parent / "python"
    if not python.exists():
        raise TasksEmulatorError(f"no python next to {executable}: not a virtualenv's script")
    # It binds "localhost" itself (no host option), so clients use that name too.
    host = f"localhost:{_free_port()}"
    log_fd, log_name = tempfile.mkstemp(prefix="firecron-tasks-", suffix=".log")
    command = [
        str(python),
        str(SERVER),
        "start",
        f"--port={host.rsplit(':', 1)[1]}",
        f"--default-queue={QUEUE}",
        "--max-retries=0",
    ]
    with os.fdopen(log_fd, "wb") as log:
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise TasksEmulatorError(f"cannot run {executable}: {exc}") from exc
    emulator = TasksEmulator(host, process, Path(log_name))
    deadline = time.monotonic() + timeout
    while not _answers(host):
        code = process.poll()
        if code is not None or time.monotonic() > deadline:
            reason = (
                f"exited with code {code}" if code is not None else f"no answer in {timeout:g}s"
            )
            message = f"tasks emulator on {host} {reason}; log {log_name}:\n{emulator.log_tail()}"
            with contextlib.suppress(Exception):
                emulator.stop(keep_log=True)
            raise TasksEmulatorError(message)
        time.sleep(0.1)
    return emulator


@contextlib.contextmanager
def tasks_emulator_started_or_skip() -> Iterator[TasksEmulator]:
    """Yield a running emulator (queue :data:`QUEUE`); stop it on exit.

    Without the executable: ``pytest.skip`` locally, ``pytest.fail`` when ``CI`` is
    ``true``/``1``. Present but not starting: always ``pytest.fail``.
    """
    import pytest  # here: the benchmarks start the emulator without pytest

    executable = emulator_executable()
    if executable is None:
        if _ci():
            pytest.fail(
                "gcloud-tasks-emulator not found, but CI is set: the Cloud Tasks tests MUST "
                "run in CI. Run make tasks-emulator (or set FIRECRON_TASKS_EMULATOR).",
                pytrace=False,
            )
        pytest.skip("gcloud-tasks-emulator not found (make tasks-emulator): tests skipped")
    try:
        emulator = start_tasks_emulator(executable)
    except TasksEmulatorError as exc:
        pytest.fail(f"the Cloud Tasks emulator failed to start: {exc}", pytrace=False)
    try:
        yield emulator
    finally:
        emulator.stop()


@contextlib.contextmanager
def tasks_emulator_or_skip() -> Iterator[str]:
    """:func:`tasks_emulator_started_or_skip`, yielding ``localhost:PORT`` only."""
    with tasks_emulator_started_or_skip() as emulator:
        yield emulator.host
