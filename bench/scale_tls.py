"""TLS, as every real dispatch pays it: one tick's CPU per fired run over plain HTTP, over
TLS with a full handshake per dispatch, over TLS with session resumption, and through
Cloud Tasks.

Every cloud target is https and firecron opens one connection per dispatch, so each
fired run pays a TLS handshake. This benchmark measures that on SQLite (the store is
not what is measured: the same store, sizes and sink serve every mode):

- the sink is ``bench/_sink.py`` in its own process, serving the same targets over
  plain HTTP and over TLS (``--tls-cert/--tls-key``), with a certificate for the IP
  address 127.0.0.1 (subjectAltName IPAddress) issued by the benchmark's own throwaway
  CA (:func:`write_tls_files`, in a temporary directory);
- the dispatcher trusts that CA through ``FIRECRON_CA_FILE`` (``Settings.ca_file``),
  added to the default trust store. Verification is never turned off: the check "TLS
  verification on" sends one request with the default trust store only, which must be
  refused;
- each mode seeds ``runs`` due hourly schedules into a fresh SQLite store and runs ONE
  real ``Dispatcher.tick`` (concurrency 64) at the sink's ``/ack/0``, which answers at
  once: what is measured is the dispatcher's own CPU (``time.process_time``, every
  thread of the process) per fired run, and fired/s. One unmeasured send first warms
  the dispatcher up as a previous tick would have (CA bundles loaded, Cloud Tasks
  channel open, and a TLS session cached when the mode resumes);
- modes: ``http`` (plain), ``tls_full`` (the dispatcher's sender with a TLS context that
  does not resume: a full handshake per dispatch), ``tls_resumed`` (the dispatcher's
  default sender, which resumes TLS sessions per host: the share of resumed handshakes
  is counted by the sink), ``cloud_tasks`` (``delivery: cloud_tasks`` into
  gcloud-tasks-emulator, ``make tasks-emulator``: one CreateTask RPC per run on one
  long-lived gRPC channel, plaintext to the emulator as the tests do; its queue is
  paused so the emulator delivers nothing while it is measured, and the created tasks
  are listed to check each run was enqueued once). Without the emulator that mode is
  skipped, and says so.

"Sender alone" then isolates the transport: firecron's ``Sender`` without a store or
a tick, ``sender_requests`` POSTs at 64 in flight per mode (plain, full TLS, resumed
TLS), after 200 unmeasured ones: CPU ms per request and requests/s.

``rounds`` repeats all modes, interleaved; each figure is the median over rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from bench._common import (
    ROOT,
    Backends,
    BenchResult,
    Check,
    CpuMeter,
    SinkProcess,
    bench_settings,
    dispatch_keys,
    exactly_once,
    print_table,
    receipt_check,
    schedules,
    seed,
    whole_second,
)
from firecron.core.lifecycle import SendOutcome
from firecron.core.models import TargetDelivery
from firecron.dispatch import Dispatcher
from firecron.transport.cloud_tasks import TaskQueue
from firecron.transport.sender import Dispatch, Sender

NAME = "scale_tls"
MODES = ("http", "tls_full", "tls_resumed", "cloud_tasks")
"""The modes, in the order each round runs them."""
_LABELS = {
    "http": "plain HTTP",
    "tls_full": "TLS, full handshakes",
    "tls_resumed": "TLS, resumed sessions",
    "cloud_tasks": "Cloud Tasks enqueue",
}


@dataclass(frozen=True)
class TlsConfig:
    """Sizes and settings (see the module docstring)."""

    runs: int = 5_000
    """Due schedules fired by each mode's tick."""
    concurrency: int = 64
    """FIRECRON_CONCURRENCY of the dispatcher (the default)."""
    rounds: int = 1
    """How many times every mode runs (interleaved); figures are medians. One round by
    default: a later round's Cloud Tasks mode would enqueue the same run ids again,
    which the emulator (as Cloud Tasks) refuses by name for an hour. (One round's
    resumed/full ratio swung from 0.94 to 1.00 between two quiet runs.)"""
    key_type: str = "rsa"
    """The sink certificate's key: ``rsa`` (2048 bits) or ``ec`` (P-256)."""
    tick_budget_s: float = 600.0
    """FIRECRON_TICK_BUDGET: large enough for one tick to fire every run."""
    cloud_tasks: bool = True
    """Run the Cloud Tasks mode when the emulator is installed."""
    sender_requests: int = 2_000
    """Requests of the "Sender alone" part (per mode and round; 0: skipped)."""

    @classmethod
    def quick(cls) -> TlsConfig:
        """Small sizes: well under a minute."""
        return cls(runs=1_000, sender_requests=500)


# -- pure helpers -----------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the throwaway CA's certificate, and the sink's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def _private_key(key_type: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key_type {key_type!r}: expected rsa or ec")


def write_tls_files(directory: Path, key_type: str = "rsa", ip: str = "127.0.0.1") -> TlsFiles:
    """Write a new CA and a certificate for the address ``ip`` it issued, into ``directory``.

    The CA is ``ca.pem`` (a self-signed CA certificate, its key thrown away once it has
    signed); the sink's certificate ``cert.pem`` names ``ip`` as a subjectAltName
    IPAddress (what a client checks for an address) and ``key.pem`` is its PKCS#8 key.
    Both are valid from a day ago to a day from now.
    """
    now = dt.datetime.now(dt.UTC)
    valid = (now - dt.timedelta(days=1), now + dt.timedelta(days=1))
    ca_key = _private_key(key_type)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "firecron bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = _private_key(key_type)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


def full_handshake_context(ca_file: Path) -> ssl.SSLContext:
    """A verifying client context trusting the default store and ``ca_file`` that never
    resumes a session (a plain :class:`ssl.SSLContext`: the sender offers sessions only
    through its :class:`~firecron.transport.sender.ResumingTLSContext`)."""
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    context.load_verify_locations(cafile=str(ca_file))
    return context


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` to two decimals; None when either is missing or 0."""
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def task_check(
    task_names: Iterable[str], keys: Iterable[str], name_of: Callable[[str], str]
) -> dict[str, Any]:
    """Compare the queues' task names with the dispatch keys that should each have one.

    ``name_of(key)`` is the full name of a key's task (:func:`task_name`);
    ``exactly_once`` means every key has its task, once, and there is no other task.
    """
    return exactly_once(task_names, (name_of(k) for k in keys))


def task_name(queue: TaskQueue, key: str) -> str:
    """The full name of dispatch ``key``'s task, as ``queue`` names it (its queue path,
    and the task id under its namespace)."""
    return f"{queue.queue_for(key)}/tasks/{queue.task_id(key)}"


def median_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode's figures over rounds: the median of each numeric figure, the other
    values of the last round; ``rounds`` is how many there were."""
    out = dict(rounds[-1])
    for key, value in rounds[-1].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
            out[key] = round(statistics.median(values), 3)
    out["rounds"] = len(rounds)
    return out


# -- the sink, over plain HTTP and TLS --------------------------------------------------


class TlsSinkProcess(SinkProcess):
    """``bench/_sink.py`` serving plain HTTP at :attr:`url` (also its control calls) and
    the same targets over TLS at :attr:`tls_url` (``https://127.0.0.1:PORT``)."""

    def __init__(self, files: TlsFiles) -> None:
        # Not SinkProcess.__init__: the command differs and two ports are read.
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench._sink",
                "--tls-cert",
                str(files.cert),
                "--tls-key",
                str(files.key),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        plain, tls = self._proc.stdout.readline(), self._proc.stdout.readline()
        if not plain.strip() or not tls.strip():
            self.close()
            raise RuntimeError("the TLS sink process did not start")
        self.url = f"http://127.0.0.1:{int(plain)}"
        self.tls_url = f"https://127.0.0.1:{int(tls)}"


@contextlib.contextmanager
def tls_sink_process(files: TlsFiles) -> Iterator[TlsSinkProcess]:
    sink = TlsSinkProcess(files)
    try:
        yield sink
    finally:
        sink.close()


# -- the Cloud Tasks emulator -----------------------------------------------------------


class _Tasks:
    """gcloud-tasks-emulator (tests/_tasks_emulator.py) with its queue paused, and a
    synchronous client for the bench's own calls (pause, purge, list)."""

    def __init__(self) -> None:
        import grpc
        from google.cloud import tasks_v2
        from google.cloud.tasks_v2.services.cloud_tasks.transports import (
            CloudTasksGrpcTransport,
        )

        from _emulators import group_members
        from _tasks_emulator import QUEUE, emulator_executable, start_tasks_emulator

        executable = emulator_executable()
        if executable is None:
            raise FileNotFoundError("gcloud-tasks-emulator not found (make tasks-emulator)")
        self.queue: str = QUEUE
        self._emulator = start_tasks_emulator(executable)
        self.host: str = self._emulator.host
        self._group_members = group_members
        # A listing of thousands of tasks (bodies included) is larger than gRPC's
        # default 4 MiB message.
        self._channel = grpc.insecure_channel(
            self.host, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        )
        self.client = tasks_v2.CloudTasksClient(
            transport=CloudTasksGrpcTransport(channel=self._channel)
        )
        try:
            # Paused: the emulator keeps every task and sends none, so delivering them
            # takes no CPU from the dispatcher while it is measured.
            self.client.pause_queue(name=self.queue)
        except BaseException:
            self.close()
            raise

    def pids(self) -> list[int]:
        members: list[int] = self._group_members(self._emulator.pgid)
        return members

    def task_names(self) -> list[str]:
        return [t.name for t in self.client.list_tasks(parent=self.queue)]

    def purge(self) -> None:
        self.client.purge_queue(name=self.queue)

    def close(self) -> None:
        self._channel.close()
        self._emulator.stop()


# -- one mode ---------------------------------------------------------------------------


async def _verification_probe(sink: TlsSinkProcess) -> dict[str, Any]:
    """One dispatch to the TLS sink trusting the default store only: must be refused."""
    before = (await asyncio.to_thread(sink.stats))["tls_received"]
    sender = Sender(concurrency=1, max_open=1, ack_timeout=5.0, allow_private_targets=True)
    result = await sender.send(
        Dispatch(url=f"{sink.tls_url}/ack/0", body=b"{}", headers={}, key="probe/1")
    )
    await sender.aclose()
    after = (await asyncio.to_thread(sink.stats))["tls_received"]
    error = result.error or ""
    return {
        "outcome": result.outcome.value,
        "error": error,
        "received_by_sink": after - before,
        "refused": result.outcome is not SendOutcome.acknowledged
        and "CERTIFICATE_VERIFY_FAILED" in error
        and after == before,
    }


async def _mode(
    mode: str,
    backends: Backends,
    sink: TlsSinkProcess,
    files: TlsFiles,
    tasks: _Tasks | None,
    cfg: TlsConfig,
) -> dict[str, Any]:
    """Seed ``cfg.runs`` due schedules and fire them in one tick in ``mode``."""
    base = sink.tls_url if mode.startswith("tls") else sink.url
    settings = bench_settings(
        concurrency=cfg.concurrency,
        tick_budget=timedelta(seconds=cfg.tick_budget_s),
        ca_file=str(files.ca),
    )
    sender = None
    if mode == "tls_full":
        sender = Sender(
            concurrency=settings.concurrency,
            max_open=settings.max_open,
            ack_timeout=settings.ack_timeout.total_seconds(),
            allow_private_targets=True,
            ssl_context=full_handshake_context(files.ca),
        )
    elif mode == "cloud_tasks":
        assert tasks is not None
        settings = replace(
            settings,
            delivery=TargetDelivery.cloud_tasks,
            tasks_queue=tasks.queue,
            tasks_emulator_host=tasks.host,
        )
    store = backends.open("sqlite", f"tls-{mode}")
    try:
        due = whole_second(datetime.now(UTC) - timedelta(seconds=1))
        items = schedules(f"tls-{mode}", cfg.runs, f"{base}/ack/0", due)
        await seed(store, items)
        dispatcher = Dispatcher(store, settings, sender=sender)
        await _warm_up(dispatcher, base, tasks if mode == "cloud_tasks" else None)
        meter = CpuMeter(sink.pid, tasks.pids() if tasks is not None else ())
        await asyncio.to_thread(sink.reset)
        meter.start()
        started = time.perf_counter()
        try:
            summary = await dispatcher.tick()
            wall = time.perf_counter() - started
            cpu = meter.stop()
        finally:
            await dispatcher.aclose()
        queue = dispatcher.task_queue if mode == "cloud_tasks" else None
        stats = await asyncio.to_thread(sink.stats)
    finally:
        await store.close()
    keys = dispatch_keys(items, due)
    fired = summary.fired
    out: dict[str, Any] = {
        "mode": mode,
        "runs": cfg.runs,
        "fired": fired,
        "outcomes": dict(summary.outcomes),
        "errors": summary.errors[:3],
        "tick_wall_s": round(wall, 3),
        "fired_per_s": round(fired / wall, 1) if wall else 0.0,
        "dispatcher_cpu_ms_per_run": round(1000 * cpu["dispatcher_cpu_s"] / fired, 3)
        if fired
        else None,
        **cpu,
        "tls_received": stats["tls_received"],
        "tls_resumed": stats["tls_resumed"],
        "resumed_share_pct": round(100 * stats["tls_resumed"] / stats["tls_received"], 1)
        if stats["tls_received"]
        else 0.0,
    }
    if mode == "cloud_tasks":
        assert tasks is not None
        assert queue is not None
        names = await asyncio.to_thread(tasks.task_names)
        out["delivered"] = task_check(names, keys, lambda key: task_name(queue, key))
        out["sink_received"] = stats["received"]  # paused queue: must be 0
    else:
        out["delivered"] = receipt_check(stats["records"], keys)
    return out


async def _warm_up(dispatcher: Dispatcher, base: str, tasks: _Tasks | None) -> None:
    """One send (or enqueue) before the measured tick, as a dispatcher that has already
    ticked has done: its TLS context has loaded its CA bundles, and its Cloud Tasks
    channel is open. To the sink's ``/_reset``, which is never recorded."""
    warm = Dispatch(url=f"{base}/_reset", body=b"{}", headers={}, key="warm-up/1")
    if tasks is not None:
        queue = dispatcher.task_queue
        assert queue is not None
        result = await queue.enqueue(warm, oidc_audience=None, deadline=timedelta(minutes=1))
        await asyncio.to_thread(tasks.purge)  # the queue holds only the measured tasks
    else:
        result = await dispatcher.sender.send(warm)
    if result.outcome not in (SendOutcome.acknowledged, SendOutcome.unacknowledged):
        raise RuntimeError(f"warm-up failed: {result.error}")


def _fired_once(r: dict[str, Any], cfg: TlsConfig) -> bool:
    ok = bool(r["delivered"]["exactly_once"]) and r["fired"] == cfg.runs
    if r["mode"].startswith("tls"):
        ok = ok and r["tls_received"] == cfg.runs  # TLS was used, for every run
    if r["mode"] == "tls_full":
        ok = ok and r["tls_resumed"] == 0
    return ok


async def _sender_alone(
    mode: str, sink: TlsSinkProcess, files: TlsFiles, cfg: TlsConfig
) -> dict[str, Any]:
    """The Sender without store or tick: ``cfg.sender_requests`` POSTs to ``/ack/0`` by
    ``cfg.concurrency`` loops, after 200 unmeasured ones (module docstring)."""
    context = None
    if mode == "tls_full":
        context = full_handshake_context(files.ca)
    sender = Sender(
        concurrency=cfg.concurrency,
        max_open=1000,
        ack_timeout=5.0,
        allow_private_targets=True,
        ssl_context=context,
        ca_file=str(files.ca),
    )
    base = sink.tls_url if mode.startswith("tls") else sink.url
    d = Dispatch(url=f"{base}/ack/0", body=b'{"run_id":"probe"}', headers={}, key="probe/1")

    async def drive(n: int) -> None:
        left = n

        async def loop() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                result = await sender.send(d)
                if result.outcome is not SendOutcome.acknowledged:
                    raise RuntimeError(f"sender alone: {result.error}")

        await asyncio.gather(*(loop() for _ in range(cfg.concurrency)))

    await drive(200)
    await asyncio.to_thread(sink.reset)
    cpu, started = time.process_time(), time.perf_counter()
    await drive(cfg.sender_requests)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - started
    await sender.aclose()
    stats = await asyncio.to_thread(sink.stats)
    n = cfg.sender_requests
    return {
        "mode": mode,
        "requests": n,
        "cpu_ms_per_request": round(1000 * cpu / n, 3),
        "requests_per_s": round(n / wall),
        "resumed_share_pct": round(100 * stats["tls_resumed"] / stats["tls_received"], 1)
        if stats["tls_received"]
        else 0.0,
    }


async def _all(
    backends: Backends, files: TlsFiles, cfg: TlsConfig, tasks: _Tasks | None
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    alone: dict[str, list[dict[str, Any]]] = {}
    with tls_sink_process(files) as sink:
        probe = await _verification_probe(sink)
        per_mode: dict[str, list[dict[str, Any]]] = {}
        for n in range(cfg.rounds):
            for mode in MODES:
                if mode == "cloud_tasks" and tasks is None:
                    continue
                r = await _mode(mode, backends, sink, files, tasks, cfg)
                per_mode.setdefault(mode, []).append(r)
                print(
                    f"  round {n + 1}: {_LABELS[mode]}: fired {r['fired']:,} in "
                    f"{r['tick_wall_s']}s, {r['dispatcher_cpu_ms_per_run']} CPU ms/run",
                    flush=True,
                )
                await asyncio.to_thread(sink.wait_idle)
            for mode in MODES[:3] if cfg.sender_requests else ():
                a = await _sender_alone(mode, sink, files, cfg)
                alone.setdefault(mode, []).append(a)
                print(
                    f"  round {n + 1}: Sender alone, {_LABELS[mode]}: "
                    f"{a['cpu_ms_per_request']} CPU ms/request",
                    flush=True,
                )
                await asyncio.to_thread(sink.wait_idle)
    return probe, per_mode, alone


def run(backends: Backends, backend_names: list[str], cfg: TlsConfig) -> BenchResult:
    """All modes on SQLite whatever ``backend_names`` holds (the transport is what is
    measured, and the store is the same in every mode)."""
    print(
        f"\n[{NAME}] {cfg.runs:,} due runs per mode, one tick each, concurrency "
        f"{cfg.concurrency}, {cfg.key_type} certificate, {cfg.rounds} round(s), SQLite"
    )
    if backend_names != ["sqlite"]:
        print("  (the store is SQLite in every mode: what is measured is the transport)")
    tasks: _Tasks | None = None
    skipped: str | None = None
    if cfg.cloud_tasks:
        try:
            print("  starting gcloud-tasks-emulator...", flush=True)
            tasks = _Tasks()
        except FileNotFoundError as exc:
            skipped = str(exc)
            print(f"  Cloud Tasks mode skipped: {skipped}", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="firecron-tls-") as tmp:
            files = write_tls_files(Path(tmp), cfg.key_type)
            probe, rounds, alone_rounds = asyncio.run(_all(backends, files, cfg, tasks))
    finally:
        if tasks is not None:
            tasks.close()
    modes = {mode: median_rounds(rs) for mode, rs in rounds.items()}
    alone = {mode: median_rounds(rs) for mode, rs in alone_rounds.items()}
    ratios = _ratios(modes, alone)
    checks = [
        Check(
            NAME,
            "sqlite",
            "TLS verification on: the default trust store is refused",
            f"{probe['outcome']}: {probe['error'][:90]}",
            bool(probe["refused"]),
        )
    ]
    for mode, rs in rounds.items():
        last = rs[-1]
        d = last["delivered"]
        checks.append(
            Check(
                NAME,
                "sqlite",
                f"{_LABELS[mode]}: every run fired once"
                + (" over TLS" if mode.startswith("tls") else ""),
                f"{d['unique']:,}/{d['expected']:,}, {d['duplicates']} duplicates, "
                f"{d['missing']} missing"
                + (f", {last['tls_received']:,} over TLS" if mode.startswith("tls") else ""),
                all(_fired_once(r, cfg) for r in rs),
            )
        )
    if "tls_full" in modes and "tls_resumed" in modes:
        resumed_ratio = ratio(
            modes["tls_resumed"]["dispatcher_cpu_ms_per_run"],
            modes["tls_full"]["dispatcher_cpu_ms_per_run"],
        )
        checks.append(
            Check(
                NAME,
                "sqlite",
                "TLS resumption pays: less CPU per run than full handshakes",
                f"resumed / full = {resumed_ratio} "
                f"({modes['tls_resumed']['resumed_share_pct']}% resumed)",
                resumed_ratio is not None and resumed_ratio < 1,
            )
        )
    _print(cfg, modes, alone, ratios, probe, skipped)
    figures = {
        "sender_alone": alone,
        "config": cfg.__dict__,
        "verification_probe": probe,
        "modes": modes,
        "rounds": rounds,
        "ratios": ratios,
        "cloud_tasks_skipped": skipped,
    }
    return BenchResult(NAME, figures, checks)


def _ratios(
    modes: dict[str, dict[str, Any]], alone: dict[str, dict[str, Any]]
) -> dict[str, float | None]:
    def cpu(mode: str) -> float | None:
        return modes[mode]["dispatcher_cpu_ms_per_run"] if mode in modes else None

    def rate(mode: str) -> float | None:
        return modes[mode]["fired_per_s"] if mode in modes else None

    def alone_cpu(mode: str) -> float | None:
        return alone[mode]["cpu_ms_per_request"] if mode in alone else None

    return {
        "cpu_tls_full_over_http": ratio(cpu("tls_full"), cpu("http")),
        "cpu_tls_resumed_over_tls_full": ratio(cpu("tls_resumed"), cpu("tls_full")),
        "cpu_enqueue_over_tls_full": ratio(cpu("cloud_tasks"), cpu("tls_full")),
        "cpu_enqueue_over_tls_resumed": ratio(cpu("cloud_tasks"), cpu("tls_resumed")),
        "rate_tls_full_over_http": ratio(rate("tls_full"), rate("http")),
        "rate_tls_resumed_over_tls_full": ratio(rate("tls_resumed"), rate("tls_full")),
        "rate_enqueue_over_tls_full": ratio(rate("cloud_tasks"), rate("tls_full")),
        "sender_alone_cpu_tls_full_over_http": ratio(alone_cpu("tls_full"), alone_cpu("http")),
        "sender_alone_cpu_tls_resumed_over_tls_full": ratio(
            alone_cpu("tls_resumed"), alone_cpu("tls_full")
        ),
    }


def _print(
    cfg: TlsConfig,
    modes: dict[str, dict[str, Any]],
    alone: dict[str, dict[str, Any]],
    ratios: dict[str, float | None],
    probe: dict[str, Any],
    skipped: str | None,
) -> None:
    names = [m for m in MODES if m in modes]

    def other(r: dict[str, Any]) -> str:
        emulator = r.get("emulator_cpu_share")
        return f"{r['sink_cpu_share']} / {'-' if emulator is None else emulator}"

    rows: list[tuple[str, Any]] = [
        ("fired (or enqueued)", lambda r: r["fired"]),
        ("tick wall time (s)", lambda r: r["tick_wall_s"]),
        ("fired/s", lambda r: r["fired_per_s"]),
        ("dispatcher CPU ms / run", lambda r: r["dispatcher_cpu_ms_per_run"]),
        ("dispatcher CPU share (cores)", lambda r: r["dispatcher_cpu_share"]),
        ("CPU share: sink / emulator", other),
        (
            "machine busy (of 2.0) / steal",
            lambda r: f"{r['machine_busy_share']} / {r['machine_steal_share']}",
        ),
        ("requests over TLS at the sink", lambda r: r["tls_received"]),
        ("  resumed handshakes (%)", lambda r: r["resumed_share_pct"]),
        ("every run fired once", lambda r: _fired_once(r, cfg)),
    ]
    print_table(
        f"TLS per dispatch: {cfg.runs:,} due runs per mode, one tick, concurrency "
        f"{cfg.concurrency}, sink answers at once, {cfg.key_type} certificate "
        f"(median of {cfg.rounds} round(s))",
        ["figure", *(_LABELS[m] for m in names)],
        [[label, *(fn(modes[m]) for m in names)] for label, fn in rows],
        right=[False] + [True] * len(names),
    )
    print_table(
        "Ratios (CPU ms per run; fired/s)",
        ["ratio", "CPU", "rate"],
        [
            [
                "TLS full / plain",
                ratios["cpu_tls_full_over_http"],
                ratios["rate_tls_full_over_http"],
            ],
            [
                "TLS resumed / TLS full",
                ratios["cpu_tls_resumed_over_tls_full"],
                ratios["rate_tls_resumed_over_tls_full"],
            ],
            [
                "enqueue / TLS full",
                ratios["cpu_enqueue_over_tls_full"],
                ratios["rate_enqueue_over_tls_full"],
            ],
            ["enqueue / TLS resumed", ratios["cpu_enqueue_over_tls_resumed"], None],
        ],
        right=[False, True, True],
    )
    if alone:
        print_table(
            f"Sender alone (no store, no tick): {cfg.sender_requests:,} POSTs per mode, "
            f"{cfg.concurrency} in flight (median of {cfg.rounds} round(s))",
            ["mode", "CPU ms / request", "requests/s", "resumed (%)"],
            [
                [
                    _LABELS[m],
                    alone[m]["cpu_ms_per_request"],
                    alone[m]["requests_per_s"],
                    alone[m]["resumed_share_pct"],
                ]
                for m in MODES
                if m in alone
            ],
        )
        print(
            "  CPU ratios: TLS full / plain "
            f"{ratios['sender_alone_cpu_tls_full_over_http']}, TLS resumed / TLS full "
            f"{ratios['sender_alone_cpu_tls_resumed_over_tls_full']}"
        )
    print(f"\nTLS verification on: default trust store -> {probe['outcome']}: {probe['error']}")
    if skipped:
        print(f"Cloud Tasks mode skipped: {skipped}")
    sys.stdout.flush()


def with_sizes(cfg: TlsConfig, **sizes: Any) -> TlsConfig:
    """``cfg`` with some fields replaced (an entry point's command-line overrides)."""
    return replace(cfg, **{k: v for k, v in sizes.items() if v is not None})


if __name__ == "__main__":  # a direct run: python -m bench.scale_tls [--quick] [--rounds=N]
    from bench._common import run_alone

    args = sys.argv[1:]
    config = TlsConfig.quick() if "--quick" in args else TlsConfig()
    for arg in args:
        name, _, value = arg.removeprefix("--").partition("=")
        if name in ("runs", "rounds"):
            config = with_sizes(config, **{name: int(value)})
        elif name == "key-type":
            config = with_sizes(config, key_type=value)
    run_alone(NAME, lambda bk: run(bk, ["sqlite"], config))
