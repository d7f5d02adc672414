"""The chaos suite's shared parts: stores by URL, the tick driver, settling, worker processes.

Stores are opened by URL and namespace (``StoreRef``), because the dispatcher under
attack runs in a subprocess (``bench/chaos/_driver.py``) and the workers in
functions-framework processes, all on the same SQLite file or emulator namespace.
The emulator is started by :class:`bench._common.Backends` (its own process group,
killed as a group at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

from bench._common import ROOT, Backends, SinkProcess
from firecron.core.runs import TERMINAL_STATES, Run, RunState
from firecron.dispatch import Dispatcher, TickSummary
from firecron.settings import Settings
from firecron.store import Store, open_store

FIRESTORE_PROJECT = "firecron-chaos"
SECRET = "whsec_Y2hhb3Mtc3VpdGUtc2VjcmV0"
NON_TERMINAL = tuple(s for s in RunState if s not in TERMINAL_STATES)
WORKER_SOURCE = ROOT / "bench" / "chaos" / "_worker_app.py"


@dataclass(frozen=True)
class StoreRef:
    """A store every process can open: ``url`` plus ``namespace``."""

    backend: str
    url: str
    namespace: str

    def open(self) -> Store:
        return open_store(self.url, self.namespace)

    def env(self) -> dict[str, str]:
        """``FIRECRON_*`` (and the emulator host) for a subprocess using this store."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIRECRON_")}
        env.update(
            {
                "FIRECRON_STORE": self.url,
                "FIRECRON_NAMESPACE": self.namespace,
                "FIRECRON_ALLOW_PRIVATE_TARGETS": "1",
                "FIRECRON_SIGNING_SECRET": SECRET,
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(
                    [str(ROOT / "functions"), str(ROOT), str(ROOT / "tests")]
                ),
            }
        )
        return env

    def settings(self, **overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "store_url": self.url,
            "namespace": self.namespace,
            "signing_secrets": (SECRET,),
            "allow_private_targets": True,
            # The table is the output: no JSON event line per run on stdout.
            "event_log": False,
        }
        fields.update(overrides)
        return Settings(**fields)


class Lab:
    """What every experiment gets: a temp dir, the sink, the emulator (on demand), a seed."""

    def __init__(self, tmp: Path, backends: Backends, sink: SinkProcess, seed: int) -> None:
        self.tmp = tmp
        self.backends = backends
        self.sink = sink
        self.seed = seed

    def store(self, backend: str, name: str) -> StoreRef:
        """A fresh, empty store of ``backend``."""
        tag = uuid4().hex[:8]
        if backend == "sqlite":
            return StoreRef(backend, f"sqlite:///{self.tmp / f'{name}-{tag}.db'}", "firecron")
        if backend == "firestore":
            self.backends.start_emulator()
            return StoreRef(backend, f"firestore://{FIRESTORE_PROJECT}", f"c{tag}")
        raise ValueError(f"unknown backend {backend!r}")

    def emulator_pids(self) -> list[int]:
        return self.backends.emulator_pids()


# -- the dispatcher in a subprocess -----------------------------------------------------


class DriverProcess:
    """``python -m bench.chaos._driver``: one real tick in its own process, killable."""

    def __init__(self, ref: StoreRef, log_path: Path, *, concurrency: int = 64) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.chaos._driver", "--concurrency", str(concurrency)],
            cwd=ROOT,
            env=ref.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )

    def wait_ticking(self, timeout: float = 60.0) -> bool:
        """Block until the driver says it started ticking; False if it exited first."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        return line.strip() == b"ticking"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def finish(self, timeout: float) -> tuple[int | None, dict[str, Any] | None]:
        """Wait for the tick to end; kill it after ``timeout`` s. Returns (code, summary)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None, None
        self._log.close()
        summary = None
        for line in out.decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                summary = json.loads(line)
        return self.proc.returncode, summary


# -- driving to quiescence --------------------------------------------------------------


async def settle(
    ref: StoreRef, start: datetime, *, step: timedelta = timedelta(minutes=3), ticks: int = 6
) -> list[TickSummary]:
    """Tick at ``start``, ``start + step``... until a tick finds nothing to do (at most ``ticks``).

    Explicit instants: the watchdog's deadlines are reached without waiting for them.
    """
    store = ref.open()
    dispatcher = Dispatcher(store, ref.settings())
    done: list[TickSummary] = []
    try:
        for i in range(ticks):
            summary = await dispatcher.tick(start + i * step)
            done.append(summary)
            if not (summary.claimed or summary.fired or summary.watched or summary.due):
                break
    finally:
        await dispatcher.aclose()
        await store.close()
    return done


async def unfinished_runs(ref: StoreRef, limit: int = 100_000) -> list[Run]:
    """Runs that are not terminal."""
    store = ref.open()
    try:
        return await store.list_runs(states=NON_TERMINAL, limit=limit)
    finally:
        await store.close()


def now() -> datetime:
    return datetime.now(UTC)


def wait_for(probe: Any, timeout: float, interval: float = 0.02) -> Any:
    """Call ``probe()`` until it returns a truthy value or ``timeout`` passes; returns the last."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


async def await_for(probe: Any, within: float, interval: float = 0.05) -> Any:
    """:func:`wait_for` for an async probe, for at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def signal_group(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@contextlib.contextmanager
def workers(
    ref: StoreRef,
    names: Sequence[str],
    log_dir: Path,
    attempt_log: Path,
    *,
    source: Path | None = None,
    target: str = "chaos_sleepy",
    extra: dict[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """functions-framework processes (``tests/_workers.py``), one per name, serving ``target``
    of ``source`` (default: the chaos worker) on ``ref``'s store, with ``extra`` env."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _workers import serve_worker

    env = ref.env()
    env["CHAOS_ATTEMPT_LOG"] = str(attempt_log)
    env.update(extra or {})
    with contextlib.ExitStack() as stack:
        served = {
            name: stack.enter_context(
                serve_worker(
                    target,
                    env=env,
                    source=source or WORKER_SOURCE,
                    log_dir=log_dir / name,
                )
            )
            for name in names
        }
        yield served
