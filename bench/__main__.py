"""Run firecron's benchmarks: ``python -m bench`` (``make bench``).

Benchmarks (each prints its table, figures and ratios, and writes
``bench/results/<name>.json``; a final table lists every target with PASS/FAIL and is
written to ``bench/results/summary.json``):

- ``fanout``: 10,000 due schedules, one tick, 64 concurrent, against a 50 ms endpoint;
  ratios to the HTTP and store bounds measured in the same run (``bench/fanout.py``);
- ``held``: 1,000 due runs whose target never answers in time (``bench/held.py``);
- ``decoupling``: 9 and 50 jobs of 5 s due at once, a 4-slot blocking scheduler against
  one firecron tick (``bench/decoupling.py``);
- ``schedules_file``: ``firecron validate``, ``apply`` and ``list --limit 50`` on one file
  of 100,000 schedules, each command in its own process (``bench/schedules_file.py``);
- ``pipelines``: the hop latency along a chain of 20 no-op worker tasks (one
  functions-framework process), and one pipeline of 200 parallel tasks and a join: wall
  time to the join and store work per task run beside a scheduled run's
  (``bench/pipelines.py``);
- ``waits``: the release latency of a gated run by a write through ``firecron.State``
  (``set`` called to the target's start, p50/p99), and 10,000 runs waiting on as many
  keys: a tick's wall time and store work beside an idle tick's, and one write's
  queries and releases (``bench/waits.py``);
- ``continuous``: a continuous schedule (window 2 s) on one functions-framework worker:
  the gap from one generation's end to the next one's start over 200 handoffs (p50,
  p99, max), and 20 SIGKILLed instances: the kill to the successor's start against
  ``heartbeat_timeout`` + one tick, and the overlaps (worker-recorded intervals, checked
  pairwise) (``bench/continuous.py``; about 9 minutes on SQLite, 4 on Firestore);
- ``admin``: 10,000 schedules and 100,000 runs seeded through the store (fewer runs on
  the emulator), ``make_app`` served by werkzeug in its own process, and real HTTP GETs
  of the schedules page, ``/api/v1/runs?limit=50`` and the 24 h timeline: p50, p95 and
  max after warm-ups, against 200, 200 and 500 ms at p95; and the store reads behind
  each page, timed apart (``bench/admin.py``);
- ``scale``: shard scaling (1, 2, 4 ``firecron tick --shard`` processes on 100,000 due
  schedules) and continuations, CPU per fired run over plain HTTP, TLS and TLS with
  resumed sessions and per Cloud Tasks enqueue, second precision through the Cloud
  Tasks emulator, the store reads and writes of one run, and the model built on them:
  instances and cost of 1,000,000 due runs a minute (``bench/scale.py``; about 15
  minutes).

Options: ``--only NAME`` (repeatable), ``--quick`` (smaller sizes, about 2 minutes),
``--backends sqlite,firestore`` (default: both when ``gcloud`` is on PATH), size
overrides, and ``--results-dir``. The HTTP client-setup comparison is separate:
``python -m bench.http_clients``.

Targets never make the exit status non-zero (the machine may be shared); a benchmark
that crashes does.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench import (
    admin,
    continuous,
    decoupling,
    fanout,
    held,
    pipelines,
    scale,
    schedules_file,
    waits,
)
from bench._common import (
    RESULTS_DIR,
    Backends,
    BenchResult,
    Check,
    SinkProcess,
    backend_names,
    machine_info,
    print_table,
    sink_process,
    write_json,
)

NAMES = (
    "fanout",
    "held",
    "decoupling",
    "schedules_file",
    "pipelines",
    "waits",
    "continuous",
    "admin",
    "scale",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="firecron benchmarks")
    p.add_argument("--only", action="append", choices=NAMES, help="run only this (repeatable)")
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument(
        "--backends",
        default=None,
        help="comma-separated: sqlite,firestore (default: both when gcloud is on PATH)",
    )
    p.add_argument("--schedules", type=int, help="fan-out: due schedules")
    p.add_argument("--held", type=int, help="held: due runs")
    p.add_argument("--hold-seconds", type=float, help="held: how long the target holds")
    p.add_argument("--ack-timeout", type=float, help="held: ack_timeout in seconds")
    p.add_argument("--jobs", help="decoupling: comma-separated job counts, e.g. 9,50")
    p.add_argument("--work-seconds", type=float, help="decoupling: seconds of work per job")
    p.add_argument("--http-requests", type=int, help="fan-out: requests per HTTP-bound probe")
    p.add_argument("--file-schedules", type=int, help="schedules_file: entries in the file")
    p.add_argument("--chain-tasks", type=int, help="pipelines: tasks in the chain")
    p.add_argument("--chain-repeats", type=int, help="pipelines: pipeline runs of the chain")
    p.add_argument("--fan-tasks", type=int, help="pipelines: parallel tasks before the join")
    p.add_argument("--wait-trials", type=int, help="waits: release-latency trials")
    p.add_argument("--waiting", type=int, help="waits: runs waiting on different keys")
    p.add_argument("--handoffs", type=int, help="continuous: handoffs (Firestore: at most 50)")
    p.add_argument("--kills", type=int, help="continuous: instances SIGKILLed per backend")
    p.add_argument("--admin-schedules", type=int, help="admin: schedules (both backends)")
    p.add_argument("--admin-runs", type=int, help="admin: runs on SQLite")
    p.add_argument("--admin-firestore-runs", type=int, help="admin: runs on the emulator")
    p.add_argument("--admin-requests", type=int, help="admin: timed GETs per endpoint")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return p


def _configs(
    args: argparse.Namespace,
) -> tuple[fanout.FanoutConfig, held.HeldConfig, decoupling.DecouplingConfig]:
    f, h, d = fanout.FanoutConfig(), held.HeldConfig(), decoupling.DecouplingConfig()
    if args.quick:
        f = replace(f, schedules=2_000, http_requests=1_000, latency_probes=20)
        h = replace(h, runs=200)
        d = replace(d, jobs=(9, 20), work_s=2.0)
    if args.schedules is not None:
        f = replace(f, schedules=args.schedules)
    if args.http_requests is not None:
        f = replace(f, http_requests=args.http_requests)
    if args.held is not None:
        h = replace(h, runs=args.held)
    if args.hold_seconds is not None:
        h = replace(h, hold_s=args.hold_seconds)
    if args.ack_timeout is not None:
        h = replace(h, ack_timeout_s=args.ack_timeout)
    if args.jobs:
        d = replace(d, jobs=tuple(int(x) for x in args.jobs.split(",")))
    if args.work_seconds is not None:
        d = replace(d, work_s=args.work_seconds)
    return f, h, d


def _pipelines_config(args: argparse.Namespace) -> pipelines.PipelinesConfig:
    p = pipelines.PipelinesConfig()
    if args.quick:
        p = replace(p, chain_repeats=3)
    if args.chain_tasks is not None:
        p = replace(p, chain_tasks=args.chain_tasks)
    if args.chain_repeats is not None:
        p = replace(p, chain_repeats=args.chain_repeats)
    if args.fan_tasks is not None:
        p = replace(p, fan_tasks=args.fan_tasks)
    return p


def _waits_config(args: argparse.Namespace) -> waits.WaitsConfig:
    w = waits.WaitsConfig()
    if args.quick:
        w = replace(w, trials=30, waiting=1_000)
    if args.wait_trials is not None:
        w = replace(w, trials=args.wait_trials)
    if args.waiting is not None:
        w = replace(w, waiting=args.waiting)
    return w


def _continuous_config(args: argparse.Namespace) -> continuous.ContinuousConfig:
    c = continuous.ContinuousConfig()
    if args.quick:
        c = replace(c, handoffs=20, kills=5)
    if args.handoffs is not None:
        c = replace(c, handoffs=args.handoffs)
    if args.kills is not None:
        c = replace(c, kills=args.kills)
    return c


def _admin_config(args: argparse.Namespace) -> admin.AdminConfig:
    a = admin.AdminConfig()
    if args.quick:
        a = replace(
            a, schedules=1_000, runs=10_000, firestore_schedules=1_000, firestore_runs=5_000
        )
    if args.admin_schedules is not None:
        a = replace(a, schedules=args.admin_schedules, firestore_schedules=args.admin_schedules)
    if args.admin_runs is not None:
        a = replace(a, runs=args.admin_runs)
    if args.admin_firestore_runs is not None:
        a = replace(a, firestore_runs=args.admin_firestore_runs)
    if args.admin_requests is not None:
        a = replace(a, requests=args.admin_requests)
    return a


def _raise_nofile() -> None:
    # The dispatcher holds up to max_open (1,000) connections in the held benchmark.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = backend_names(args.backends)
    if names is None:
        return 2
    only = args.only or list(NAMES)
    f_cfg, h_cfg, d_cfg = _configs(args)
    sf_cfg = schedules_file.SchedulesFileConfig()
    if args.quick:
        sf_cfg = replace(sf_cfg, schedules=10_000)
    if args.file_schedules is not None:
        sf_cfg = replace(sf_cfg, schedules=args.file_schedules)
    p_cfg = _pipelines_config(args)
    w_cfg = _waits_config(args)
    c_cfg = _continuous_config(args)
    a_cfg = _admin_config(args)
    sc_cfg = scale.ScaleConfig.quick() if args.quick else scale.ScaleConfig()
    _raise_nofile()
    machine = machine_info()
    print(
        f"firecron benchmarks on {machine['cpus']} cores ({machine['cpu_model']}), "
        f"Python {machine['python']}, backends {', '.join(names)}",
        flush=True,
    )
    runners: dict[str, Callable[[Backends, SinkProcess], BenchResult]] = {
        "fanout": lambda b, s: fanout.run(b, names, s, f_cfg),
        "held": lambda b, s: held.run(b, names, s, h_cfg),
        "decoupling": lambda b, s: decoupling.run(b, names, s, d_cfg),
        "schedules_file": lambda b, s: schedules_file.run(b, names, sf_cfg),
        "pipelines": lambda b, s: pipelines.run(b, names, s, p_cfg),
        "waits": lambda b, s: waits.run(b, names, s, w_cfg),
        "continuous": lambda b, s: continuous.run(b, names, c_cfg),
        "admin": lambda b, s: admin.run(b, names, a_cfg),
        "scale": lambda b, s: scale.run(b, names, sc_cfg),
    }
    results: list[BenchResult] = []
    crashed = False
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="firecron-bench-") as tmp:
        backends = Backends(Path(tmp))
        try:
            with sink_process() as sink:
                for name in NAMES:
                    if name not in only:
                        continue
                    t0 = time.perf_counter()
                    try:
                        result = runners[name](backends, sink)
                    except Exception as exc:
                        crashed = True
                        traceback.print_exc()
                        result = BenchResult(
                            name,
                            {"error": f"{type(exc).__name__}: {exc}"},
                            [Check(name, "-", "runs to completion", f"crashed: {exc}", False)],
                        )
                    result.figures["elapsed_s"] = round(time.perf_counter() - t0, 1)
                    results.append(result)
                    path = write_json(
                        args.results_dir, name, {**result.as_dict(), "machine": machine}
                    )
                    print(f"wrote {path}", flush=True)
        finally:
            backends.close()
    checks = [c for r in results for c in r.checks]
    print_table(
        "Summary of targets",
        ["benchmark", "backend", "target", "measured", "verdict"],
        [[c.benchmark, c.backend, c.target, c.measured, c.verdict] for c in checks],
    )
    total = round(time.perf_counter() - started, 1)
    passed = sum(c.passed for c in checks)
    print(f"\n{passed}/{len(checks)} targets pass; total {total}s", flush=True)
    summary = {
        "checks": [{**r.as_dict()["checks"][i]} for r in results for i in range(len(r.checks))],
        "passed": passed,
        "total": len(checks),
        "elapsed_s": total,
        "options": {"only": only, "quick": args.quick, "backends": names},
        "machine": machine,
    }
    print(f"wrote {write_json(args.results_dir, 'summary', summary)}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
