"""Real worker processes: ``functions-framework --target NAME`` subprocesses for tests.

Each worker is the real functions-framework server (gunicorn, as in the cloud) on
127.0.0.1, in its own process group so that :meth:`WorkerProcess.kill` can SIGKILL it
and its gunicorn children at once, as a crashed instance would die.

    env = worker_env(f"sqlite:///{tmp_path}/x.db", secrets=["whsec_czNjcmV0"])
    with serve_workers(["hello", "sleep"], env=env, log_dir=tmp_path) as workers:
        httpx.post(workers["hello"].url, ...)

:func:`serve_workers` starts several at once (startup dominates, so they start in
parallel) and returns when every one answers HTTP; :func:`serve_worker` is the
one-worker form. Both kill their processes on exit. A worker that dies during
startup raises :class:`WorkerStartError` with its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from _emulators import group_members
from _poll import poll

__all__ = [
    "FUNCTIONS_DIR",
    "MAIN_SOURCE",
    "TEST_SOURCE",
    "WorkerProcess",
    "WorkerStartError",
    "functions_framework_bin",
    "serve_worker",
    "serve_workers",
    "worker_env",
]

FUNCTIONS_DIR = Path(__file__).resolve().parents[1] / "functions"
"""The Cloud Functions source root."""
MAIN_SOURCE = FUNCTIONS_DIR / "main.py"
"""The entry module holding the example workers."""
TEST_SOURCE = Path(__file__).resolve().with_name("_worker_app.py")
"""Workers for tests only (``sleepy``: a 0.3 s heartbeat, so a cancel shows at once)."""


class WorkerStartError(RuntimeError):
    """A worker process exited, or did not answer, during startup."""


def functions_framework_bin() -> Path:
    """The ``functions-framework`` script of the running interpreter's environment."""
    path = Path(sys.executable).parent / "functions-framework"
    if not path.exists():
        raise WorkerStartError(f"{path} not found: install the dev dependencies")
    return path


def worker_env(
    store_url: str,
    *,
    secrets: Sequence[str] = (),
    namespace: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a worker process: this one's, minus any ``FIRECRON_*``, plus
    the store, the signing secrets (comma-joined), private targets allowed, and ``extra``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRECRON_")}
    env.update(
        {
            "FIRECRON_STORE": store_url,
            "FIRECRON_ALLOW_PRIVATE_TARGETS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if secrets:
        env["FIRECRON_SIGNING_SECRET"] = ",".join(secrets)
    if namespace:
        env["FIRECRON_NAMESPACE"] = namespace
    env.update(extra or {})
    return env


@dataclass
class WorkerProcess:
    """One running worker: its target, port, process and log file."""

    target: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        """The function's URL (functions-framework serves it at every path)."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def alive(self) -> bool:
        """True while the server process has not exited."""
        return self.process.poll() is None

    def logs(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (gunicorn arbiter and workers) and reap it.

        Returns once no process of the group runs any more (where ``/proc`` shows it),
        so nothing of this worker can write after the call. Idempotent. Requests in
        flight die with it, as on a crashed instance.
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        poll(
            lambda: group_members(self.process.pid),
            lambda pids: not pids,
            what=f"the processes of worker {self.target!r} to die",
        )


def _free_ports(count: int) -> list[int]:
    # Hold every socket until all ports are chosen so that no two workers get the same.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _wait_ready(worker: WorkerProcess, deadline: float) -> None:
    def answers() -> bool:
        if not worker.alive:
            raise WorkerStartError(
                f"worker {worker.target!r} exited with {worker.process.returncode} "
                f"during startup:\n{worker.logs()}"
            )
        try:
            # Any HTTP answer (the SDK says 405 to GET) means the app is loaded.
            httpx.get(worker.url, timeout=2)
        except httpx.TransportError:
            return False
        return True

    try:
        poll(answers, timeout=max(0.0, deadline - time.monotonic()), interval=0.1)
    except AssertionError:
        raise WorkerStartError(
            f"worker {worker.target!r} did not answer on port {worker.port}:\n{worker.logs()}"
        ) from None


@contextlib.contextmanager
def serve_workers(
    targets: Iterable[str],
    *,
    env: Mapping[str, str],
    source: Path = MAIN_SOURCE,
    log_dir: Path | None = None,
    startup_timeout: float = 60.0,
) -> Iterator[dict[str, WorkerProcess]]:
    """Start one ``functions-framework`` process per target of ``source``; kill them on exit.

    ``env`` is the processes' whole environment (see :func:`worker_env`). Logs go to
    ``log_dir/<target>-<port>.log`` (a new temporary directory by default).
    """
    names = list(targets)
    logs = log_dir if log_dir is not None else Path(tempfile.mkdtemp(prefix="firecron-workers-"))
    logs.mkdir(parents=True, exist_ok=True)
    binary = functions_framework_bin()
    workers: dict[str, WorkerProcess] = {}
    try:
        for name, port in zip(names, _free_ports(len(names)), strict=True):
            log_path = logs / f"{name}-{port}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [
                        str(binary),
                        "--target",
                        name,
                        "--source",
                        str(source),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    env=dict(env),
                    cwd=source.parent,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            workers[name] = WorkerProcess(name, port, process, log_path)
        deadline = time.monotonic() + startup_timeout
        for worker in workers.values():
            _wait_ready(worker, deadline)
        yield workers
    finally:
        for worker in workers.values():
            worker.kill()


@contextlib.contextmanager
def serve_worker(
    target: str,
    *,
    env: Mapping[str, str],
    source: Path = MAIN_SOURCE,
    log_dir: Path | None = None,
    startup_timeout: float = 60.0,
) -> Iterator[WorkerProcess]:
    """:func:`serve_workers` for one target."""
    with serve_workers(
        [target], env=env, source=source, log_dir=log_dir, startup_timeout=startup_timeout
    ) as workers:
        yield workers[target]
