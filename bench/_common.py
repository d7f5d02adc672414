"""Shared parts of the benchmarks: the sink process, stores, seeding, checks, tables, JSON.

Everything here is real: the sink is ``bench/_sink.py`` in its own process, the SQLite
store lives in a temporary directory, and the Firestore store talks to a real emulator
started with the tests' harness (``tests/_emulators.py``, its lower-level
``start_emulator``, which never calls pytest).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from uuid import uuid4

from firecron.core import planning
from firecron.core.models import ScheduleSpec, ScheduleState
from firecron.core.render import rfc3339
from firecron.core.runs import scheduled_run_id
from firecron.settings import Settings
from firecron.store.base import Store

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
FIRESTORE_PROJECT = "firecron-bench"
BACKENDS = ("sqlite", "firestore")

# No proxies: an HTTP(S)_PROXY in the environment must not see loopback control calls.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One target of the summary table."""

    benchmark: str
    backend: str
    target: str
    measured: str
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


@dataclass
class BenchResult:
    """What one benchmark returns: its JSON figures and its targets."""

    name: str
    figures: dict[str, Any]
    checks: list[Check] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "figures": self.figures,
            "checks": [{**asdict(c), "verdict": c.verdict} for c in self.checks],
        }


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Cores, CPU, Python and the versions of what is measured."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": {
            pkg: _version(pkg)
            for pkg in (
                "firecron",
                "httpx",
                "httpcore",
                "pydantic",
                "google-cloud-firestore",
                "grpcio",
            )
        },
        "measured_at": rfc3339(datetime.now(UTC).replace(microsecond=0)),
    }


def backend_names(option: str | None) -> list[str] | None:
    """The backends a ``--backends a,b`` option names; by default SQLite, plus the
    Firestore emulator when ``gcloud`` is on PATH. None (after one line on stderr) when
    it names an unknown backend."""
    if option:
        names = [b.strip() for b in option.split(",") if b.strip()]
    else:
        names = ["sqlite", "firestore"] if shutil.which("gcloud") else ["sqlite"]
        if "firestore" not in names:
            print("gcloud not on PATH: Firestore emulator runs skipped", flush=True)
    bad = [b for b in names if b not in ("sqlite", "firestore")]
    if bad:
        print(f"unknown backend(s): {', '.join(bad)}", file=sys.stderr)
        return None
    return names


def write_json(results_dir: Path, name: str, data: dict[str, Any]) -> Path:
    """Write ``results_dir/name.json`` (creating the folder) and return its path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def print_table(
    title: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    right: Sequence[bool] | None = None,
) -> None:
    """Print a plain fixed-width table.

    ``right`` says which columns are right-aligned; by default the numeric ones.
    """
    raw = [list(row) for row in rows]
    numeric = (
        list(right)
        if right is not None
        else [
            all(isinstance(r[i], int | float | None) for r in raw) and bool(raw)
            for i in range(len(headers))
        ]
    )
    cells = [[str(h) for h in headers], *([_cell(v) for v in row] for row in raw)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    sys.stdout.flush()


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pct(part: float, whole: float) -> float:
    """``part`` as a percentage of ``whole`` (0 when ``whole`` is 0), one decimal."""
    return round(100 * part / whole, 1) if whole else 0.0


# -- the sink process -------------------------------------------------------------------


class SinkProcess:
    """``bench/_sink.py`` running in its own process (see its docstring for the paths).

    ``argv`` runs another sink with the same protocol instead: it prints its port on
    one line, serves ``/_stats`` and ``/_reset``, and exits when its stdin closes.
    """

    def __init__(self, argv: Sequence[str] | None = None) -> None:
        self._proc = subprocess.Popen(
            list(argv) if argv is not None else [sys.executable, "-m", "bench._sink"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip():
            self.close()
            raise RuntimeError("the sink process did not start")
        self.url = f"http://127.0.0.1:{int(line)}"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _get(self, path: str) -> dict[str, Any]:
        with _OPENER.open(self.url + path, timeout=30) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data

    def stats(self) -> dict[str, Any]:
        """``{"received", "open_now", "peak_open", "records"}`` (see ``bench/_sink.py``)."""
        return self._get("/_stats")

    def reset(self) -> None:
        self._get("/_reset")

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the sink has no open request (the clients have gone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats()["open_now"] == 0:
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@contextlib.contextmanager
def sink_process() -> Iterator[SinkProcess]:
    sink = SinkProcess()
    try:
        yield sink
    finally:
        sink.close()


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by the given processes (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _machine_cpu() -> tuple[float, float]:
    """(busy, steal) seconds of all CPUs so far, from /proc/stat (zeros elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0
    # guest time is already counted in user; count busy as everything not idle.
    busy = sum(fields[:8]) - idle
    return busy / ticks, steal / ticks


class CpuMeter:
    """CPU used by this process, the sink, the emulator and the whole machine over a span.

    Shares are CPU seconds per wall second: 1.0 is one core kept busy. ``machine`` is
    every process on the machine (other sessions included), out of ``os.cpu_count()``;
    ``steal`` is time the hypervisor gave to other machines.
    """

    def __init__(self, sink_pid: int, emulator_pids: Sequence[int] = ()) -> None:
        self._sink = [sink_pid]
        self._emulator = list(emulator_pids)
        self._start: tuple[float, ...] = ()

    def _now(self) -> tuple[float, ...]:
        busy, steal = _machine_cpu()
        return (
            time.perf_counter(),
            time.process_time(),
            cpu_seconds(self._sink),
            cpu_seconds(self._emulator),
            busy,
            steal,
        )

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        end = self._now()
        wall, me, sink, emu, busy, steal = (b - a for a, b in zip(self._start, end, strict=True))

        def share(x: float) -> float:
            return round(x / wall, 2) if wall else 0.0

        out = {
            "dispatcher_cpu_s": round(me, 3),
            "dispatcher_cpu_share": share(me),
            "sink_cpu_s": round(sink, 2),
            "sink_cpu_share": share(sink),
            "machine_busy_share": share(busy),
            "machine_steal_share": share(steal),
        }
        if self._emulator:
            out["emulator_cpu_s"] = round(emu, 2)
            out["emulator_cpu_share"] = share(emu)
        return out


# -- exactly once -----------------------------------------------------------------------


def receipt_check(records: Sequence[Sequence[Any]], expected: Iterable[str]) -> dict[str, Any]:
    """Compare the sink's records with the dispatch keys that should have arrived once each."""
    return exactly_once((str(r[0]) for r in records), expected)


def exactly_once(received: Iterable[str], expected: Iterable[str]) -> dict[str, Any]:
    """Compare what arrived with what should have, once each: the counts, and
    ``exactly_once`` when every expected item arrived once and nothing else did."""
    counts = Counter(received)
    wanted = set(expected)
    duplicates = sum(c - 1 for k, c in counts.items() if c > 1)
    return {
        "expected": len(wanted),
        "received": sum(counts.values()),
        "unique": len(counts),
        "missing": len(wanted - counts.keys()),
        "unexpected": len(counts.keys() - wanted),
        "duplicates": duplicates,
        "exactly_once": duplicates == 0 and counts.keys() == wanted,
    }


# -- stores -----------------------------------------------------------------------------


class Backends:
    """Opens stores of each backend: SQLite files under ``tmp``; the emulator on demand."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._emulator: Any = None

    def emulator_pids(self) -> list[int]:
        if self._emulator is None:
            return []
        from _emulators import group_members

        members: list[int] = group_members(self._emulator.pgid)
        return members

    def start_emulator(self) -> str:
        """Start the Firestore emulator once (own process group, free port, waits for it)."""
        if self._emulator is None:
            from _emulators import start_emulator

            print("starting the Firestore emulator...", flush=True)
            started = time.perf_counter()
            self._emulator = start_emulator("firestore")
            os.environ["FIRESTORE_EMULATOR_HOST"] = self._emulator.host
            print(
                f"  emulator on {self._emulator.host} in {time.perf_counter() - started:.1f}s",
                flush=True,
            )
        host: str = self._emulator.host
        return host

    def open(self, backend: str, name: str) -> Store:
        """A fresh, empty store: its own SQLite file, or its own Firestore namespace."""
        if backend == "sqlite":
            from firecron.store.sqlite import SQLiteStore

            return SQLiteStore(self.tmp / f"{name}-{uuid4().hex[:6]}.db")
        if backend == "firestore":
            self.start_emulator()
            from firecron.store.firestore import FirestoreStore

            return FirestoreStore(FIRESTORE_PROJECT, namespace=f"b{uuid4().hex[:10]}")
        raise ValueError(f"unknown backend {backend!r}")

    def close(self) -> None:
        if self._emulator is not None:
            emulator, self._emulator = self._emulator, None
            emulator.stop()
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)


@dataclass
class SharedStore:
    """A store another process opens too (a worker, a ``firecron.State``): its URL and
    namespace, and this process's client of it."""

    url: str
    namespace: str
    store: Store


def open_shared(backends: Backends, backend: str, name: str) -> SharedStore:
    """A fresh store on ``backend`` that other processes can open by URL and namespace."""
    from firecron.store import open_store

    if backend == "sqlite":
        url, namespace = f"sqlite:///{backends.tmp / f'{name}-{uuid4().hex[:6]}.db'}", "firecron"
    else:
        backends.start_emulator()  # sets FIRESTORE_EMULATOR_HOST, which other processes inherit
        url, namespace = f"firestore://{FIRESTORE_PROJECT}", f"b{uuid4().hex[:10]}"
    return SharedStore(url, namespace, open_store(url, namespace))


def bench_settings(**overrides: Any) -> Settings:
    """Production defaults, with loopback targets allowed (the sink is on 127.0.0.1)."""
    fields: dict[str, Any] = {"allow_private_targets": True}
    fields.update(overrides)
    return Settings(**fields)


def whole_second(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def schedules(
    prefix: str, n: int, url: str, due: datetime
) -> list[tuple[ScheduleSpec, ScheduleState]]:
    """``n`` hourly schedules whose first occurrence is ``due`` (anchored there)."""
    out = []
    for i in range(n):
        spec = ScheduleSpec.model_validate(
            {"id": f"{prefix}-{i:05d}", "every": "1h", "start_at": due, "target": {"url": url}}
        )
        state = planning.initial_state(spec, due - timedelta(seconds=1))
        assert state.next_fire_at == due, (state.next_fire_at, due)
        out.append((spec, state))
    return out


def dispatch_keys(items: Iterable[tuple[ScheduleSpec, ScheduleState]], due: datetime) -> list[str]:
    """The ``webhook-id`` of each schedule's first attempt at ``due``."""
    return [f"{scheduled_run_id(spec.id, due)}/1" for spec, _ in items]


async def seed(store: Store, items: Sequence[tuple[ScheduleSpec, ScheduleState]]) -> float:
    """Create the schedules as fast as the backend allows; returns the seconds it took.

    One :meth:`Store.write_schedules` call: one transaction on SQLite, batches of 500 on
    Firestore (the store's public bulk write, so the bench seeds through the same
    document layout and code as ``firecron apply``).
    """
    from firecron.store.base import ScheduleWrite

    started = time.perf_counter()
    written = await store.write_schedules(
        [ScheduleWrite(spec, state, None) for spec, state in items]
    )
    missing = sum(1 for stored in written if stored is None)
    if missing:
        raise RuntimeError(f"seed: {missing} of {len(items)} schedules were not created")
    return time.perf_counter() - started


async def wait_until(instant: datetime) -> None:
    """Sleep until the wall clock reaches ``instant``."""
    delay = (instant - datetime.now(UTC)).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)


def run_alone(name: str, run: Callable[[Backends], BenchResult]) -> None:
    """A benchmark module's direct run (``python -m bench.NAME``): ``run`` on fresh
    backends in a temporary directory, then one line per check, and the JSON result in
    the system's temporary directory (its path printed; not written if that fails)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        backends = Backends(Path(tmp))
        try:
            result = run(backends)
        finally:
            backends.close()
    for check in result.checks:
        print(f"{check.verdict}  {check.backend}: {check.target}: {check.measured}")
    with contextlib.suppress(OSError):
        print(write_json(Path(tempfile.gettempdir()), name, result.as_dict()))
