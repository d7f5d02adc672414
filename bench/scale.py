"""Scale: the ``scale`` entry of ``make bench`` (issue 17), and the model built on it.

It runs four benchmarks, each on real parts and each writing its own JSON as well:

- ``scale_shards`` (``bench/scale_shards.py``): 100,000 due schedules on SQLite fired by
  1, 2 and 4 ``firecron tick --shard I/N`` processes (fired/s, speedup, efficiency
  against the cores; target 1.7x with 2 shards on 2 cores), and 100,000 due runs with
  a budget that forces continuations (all fired, 0 duplicates, the count);
- ``scale_tls`` (``bench/scale_tls.py``): CPU per fired run over plain HTTP, over TLS
  with a full handshake and with resumed sessions (a throwaway CA, trusted through
  ``FIRECRON_CA_FILE``), and per Cloud Tasks enqueue (the emulator);
- ``scale_seconds`` (``bench/scale_seconds.py``): ``*/1 * * * * *`` through the Cloud
  Tasks emulator, lateness from ``scheduled_for`` to the worker's start (p99 <= 1 s);
- ``scale_cost`` (``bench/scale_cost.py``): store reads and writes of one run, claim to
  end, for runs of 10 s, 5 min and 1 h (a 5-minute run writes at most 6 times), and the
  monthly cost beside Cloud Scheduler's.

Then :func:`model`: the measured per-run CPU (Firestore's client from ``scale_shards``'
emulator part, TLS or enqueue from ``scale_tls``), and the measured store writes per run
(``scale_cost``), against Google's published limits and prices (constants below, with
their sources): how many dispatch instances 1,000,000 due runs a minute take, which
limit binds first, and what a month of it costs. The model is arithmetic on measured
figures, not a measurement of Google's services (nothing here can reach them).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from bench import scale_cost, scale_seconds, scale_shards, scale_tls
from bench._common import Backends, BenchResult, Check, print_table

NAME = "scale"

# -- published limits and prices (read 2026-11) ------------------------------------------

FIRESTORE_HOT_RANGE_WRITES_S: Final = 500
"""Firestore's guidance for an index whose values only grow (a time): about 500 writes/s
per key range (https://cloud.google.com/firestore/docs/best-practices, "hotspots")."""
BUCKETS: Final = 60
"""firecron's buckets (``firecron.core.shards.BUCKETS``): each is its own key range."""
TASKS_QUEUE_DISPATCHES_S: Final = 500
"""Cloud Tasks: at most 500 dispatches/s per queue (``max_dispatches_per_second``)."""
TASKS_API_REQUESTS_MIN: Final = 6_000_000
"""Cloud Tasks: API requests per minute per project (https://cloud.google.com/tasks/docs/quotas)."""
RUN_VCPU_S_USD: Final = 0.000024
"""Cloud Run, request-based billing, tier 1: per vCPU-second (https://cloud.google.com/run/pricing)."""
RUN_GIB_S_USD: Final = 0.0000025
"""Cloud Run, request-based billing, tier 1: per GiB-second."""
DISPATCH_GIB: Final = 0.5
"""The memory of the modelled dispatch instance: 1 vCPU and 512 MiB (Terraform:
``dispatch = { cpu = "1", memory = "512M" }``)."""
TASKS_OP_USD: Final = 0.40 / 1_000_000
"""Cloud Tasks: per billable operation (an API call or a push delivery attempt), up to
5 billion a month (https://cloud.google.com/tasks/pricing); beyond that, a quote."""
FIRESTORE_WRITE_100K_USD: Final = 0.09
FIRESTORE_READ_100K_USD: Final = 0.03
"""Firestore, regional us-central1 (https://cloud.google.com/firestore/pricing)."""
MINUTES_A_MONTH: Final = 60 * 24 * 30
TICK_BUDGET_S: Final = 50.0
"""``FIRECRON_TICK_BUDGET``'s default: what one tick spends claiming and firing."""


@dataclass(frozen=True)
class ScaleConfig:
    """The four parts' configurations, and the load the model answers for."""

    shards: scale_shards.ShardsConfig = field(default_factory=scale_shards.ShardsConfig)
    tls: scale_tls.TlsConfig = field(default_factory=scale_tls.TlsConfig)
    seconds: scale_seconds.SecondsConfig = field(default_factory=scale_seconds.SecondsConfig)
    cost: scale_cost.CostConfig = field(default_factory=scale_cost.CostConfig)
    runs_per_minute: int = 1_000_000

    @classmethod
    def quick(cls) -> ScaleConfig:
        """Every part at its quick size."""
        return cls(
            shards=scale_shards.ShardsConfig.quick(),
            tls=scale_tls.TlsConfig.quick(),
            seconds=scale_seconds.SecondsConfig.quick(),
            cost=scale_cost.CostConfig.quick(),
        )


@dataclass(frozen=True)
class Measured:
    """What the model takes from the benchmarks (milliseconds of CPU per fired run)."""

    store_cpu_ms: float
    """The dispatcher's CPU per fired run over plain HTTP on the store the model is for."""
    store: str
    """Which store that was measured on (``firestore`` when the emulator ran)."""
    http_cpu_ms: float
    tls_cpu_ms: float
    enqueue_cpu_ms: float
    """From ``scale_tls`` (one store, SQLite): plain HTTP, resumed TLS, one enqueue."""
    writes_per_run: int
    reads_per_run: int
    """Store work of a short (10 s) worker run at default settings (``scale_cost``)."""
    run_index_writes: int
    """Writes per run to the run document (each moves its ``watch_at`` entry)."""


def measured_from(figures: dict[str, Any]) -> Measured:
    """:class:`Measured` from the ``figures`` of :func:`run`; KeyError when a part did not
    report what the model needs (it crashed or was skipped)."""
    modes = figures["tls"]["modes"]
    shards = figures["shards"]["backends"]
    store = "firestore" if "firestore" in shards else "sqlite"
    store_cpu = shards[store]["shard_scaling"][0]["process_cpu_ms_per_fired"]
    short = min(
        # "lease": a direct send at default settings ("legacy" is before leases).
        (r for r in figures["cost"]["runs"] if r["mode"] == "lease"),
        key=lambda r: (r["backend"] != store, r["duration_s"]),
    )
    return Measured(
        store_cpu_ms=float(store_cpu),
        store=store,
        http_cpu_ms=float(modes["http"]["dispatcher_cpu_ms_per_run"]),
        tls_cpu_ms=float(modes["tls_resumed"]["dispatcher_cpu_ms_per_run"]),
        enqueue_cpu_ms=float(modes["cloud_tasks"]["dispatcher_cpu_ms_per_run"]),
        writes_per_run=int(short["writes"]),
        reads_per_run=int(short["reads"]),
        # Every write but the claim's schedule update is to the run's document.
        run_index_writes=int(short["writes"]) - 1,
    )


def model(m: Measured, runs_per_minute: int) -> dict[str, Any]:
    """Instances, binding limits and monthly cost of ``runs_per_minute`` due runs.

    Per delivery path, a dispatch instance (1 vCPU, one tick at a time) fires
    ``1000 / cpu_ms`` runs a second for ``TICK_BUDGET_S`` of each minute; CPU per run on
    the modelled store is its plain-HTTP figure plus what TLS (or an enqueue) adds over
    plain HTTP in ``scale_tls``. The shard count must cover the instances (at most 60).
    """
    per_s = runs_per_minute / 60
    runs_month = runs_per_minute * MINUTES_A_MONTH
    paths: dict[str, Any] = {}
    for path, extra in (
        ("direct (https)", m.tls_cpu_ms - m.http_cpu_ms),
        ("cloud_tasks", m.enqueue_cpu_ms - m.http_cpu_ms),
    ):
        cpu_ms = m.store_cpu_ms + extra
        per_instance_min = 1000 / cpu_ms * TICK_BUDGET_S
        # Less a hair: float division must not turn an exact 36 into 37.
        instances = math.ceil(runs_per_minute / per_instance_min - 1e-9)
        vcpu_s = runs_month * cpu_ms / 1000
        dispatch_usd = vcpu_s * (RUN_VCPU_S_USD + DISPATCH_GIB * RUN_GIB_S_USD)
        tasks_usd = 2 * runs_month * TASKS_OP_USD if path == "cloud_tasks" else 0.0
        paths[path] = {
            "cpu_ms_per_run": round(cpu_ms, 3),
            "runs_per_instance_minute": round(per_instance_min),
            "instances": instances,
            "shards_needed": instances,
            "fits_60_shards": instances <= BUCKETS,
            "queues_needed": math.ceil(per_s / TASKS_QUEUE_DISPATCHES_S)
            if path == "cloud_tasks"
            else 0,
            "dispatch_usd_month": round(dispatch_usd),
            "cloud_tasks_usd_month": round(tasks_usd),
        }
    run_index_s = per_s * m.run_index_writes
    schedule_index_s = per_s  # one claim write per run moves next_fire_at
    ceiling_s = FIRESTORE_HOT_RANGE_WRITES_S * BUCKETS
    firestore_usd = (
        runs_month
        * (m.writes_per_run * FIRESTORE_WRITE_100K_USD + m.reads_per_run * FIRESTORE_READ_100K_USD)
        / 100_000
    )
    return {
        "runs_per_minute": runs_per_minute,
        "runs_per_second": round(per_s),
        "runs_per_month": runs_month,
        "measured_on": m.store,
        "paths": paths,
        "firestore": {
            "schedules_next_fire_at_writes_s": round(schedule_index_s),
            "runs_watch_at_writes_s": round(run_index_s),
            "per_bucket": {
                "schedules": round(schedule_index_s / BUCKETS),
                "runs": round(run_index_s / BUCKETS),
            },
            "guidance_per_bucket": FIRESTORE_HOT_RANGE_WRITES_S,
            "ceiling_runs_per_minute": round(ceiling_s / m.run_index_writes * 60),
            "usd_month": round(firestore_usd),
        },
        "cloud_tasks_api_share": round(runs_per_minute / TASKS_API_REQUESTS_MIN, 3),
    }


def _print_model(result: dict[str, Any]) -> None:
    print(
        f"\nThe model: {result['runs_per_minute']:,} due runs a minute "
        f"({result['runs_per_second']:,}/s, {result['runs_per_month']:,} a month), "
        f"CPU measured on {result['measured_on']}",
        flush=True,
    )
    print_table(
        "Dispatch instances and cost, per delivery path",
        [
            "path",
            "CPU/run",
            "runs/instance-min",
            "instances",
            "queues",
            "dispatch $/mo",
            "Tasks $/mo",
        ],
        [
            [
                path,
                f"{p['cpu_ms_per_run']} ms",
                f"{p['runs_per_instance_minute']:,}",
                p["instances"],
                p["queues_needed"] or "-",
                f"${p['dispatch_usd_month']:,}",
                f"${p['cloud_tasks_usd_month']:,}",
            ]
            for path, p in result["paths"].items()
        ],
    )
    fs = result["firestore"]
    print(
        f"Firestore: next_fire_at {fs['schedules_next_fire_at_writes_s']:,}/s "
        f"({fs['per_bucket']['schedules']}/bucket), watch_at {fs['runs_watch_at_writes_s']:,}/s "
        f"({fs['per_bucket']['runs']}/bucket) against ~{fs['guidance_per_bucket']}/bucket: "
        f"the run index binds at ~{fs['ceiling_runs_per_minute']:,} runs a minute; "
        f"store cost ${fs['usd_month']:,} a month (us-central1); Cloud Tasks API share "
        f"{result['cloud_tasks_api_share']:.0%} of the project's quota",
        flush=True,
    )


def run(backends: Backends, names: list[str], cfg: ScaleConfig) -> BenchResult:
    """Run the four parts, then the model; one result holding all their figures and checks."""
    parts: dict[str, Callable[[], BenchResult]] = {
        "shards": lambda: scale_shards.run(backends, names, cfg.shards),
        "tls": lambda: scale_tls.run(backends, names, cfg.tls),
        "seconds": lambda: scale_seconds.run(backends, names, cfg.seconds),
        "cost": lambda: scale_cost.run(backends, names, cfg.cost),
    }
    figures: dict[str, Any] = {}
    checks: list[Check] = []
    for key, part in parts.items():
        done = part()
        figures[key] = done.figures
        checks.extend(done.checks)
    try:
        measured = measured_from(figures)
    except (KeyError, ValueError) as exc:
        figures["model"] = {"error": f"a part did not report {exc}"}
        checks.append(Check(NAME, "-", "the model has its inputs", f"missing {exc}", False))
        return BenchResult(NAME, figures, checks)
    result = model(measured, cfg.runs_per_minute)
    figures["model"] = {"measured": measured.__dict__, **result}
    _print_model(result)
    return BenchResult(NAME, figures, checks)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.scale --from bench/results/scale.json``: the model again from a
    saved run's figures (another load, say), without running anything."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=main.__doc__)
    parser.add_argument("--from", dest="source", type=Path, required=True)
    parser.add_argument("--runs-per-minute", type=int, default=ScaleConfig().runs_per_minute)
    args = parser.parse_args(argv)
    try:
        figures = json.loads(args.source.read_text())["figures"]
        measured = measured_from(figures)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {args.source}: not a scale result ({exc})", file=sys.stderr)
        return 2
    print(f"measured: {measured}")
    _print_model(model(measured, args.runs_per_minute))
    return 0


__all__ = ["NAME", "Measured", "ScaleConfig", "main", "measured_from", "model", "run"]

if __name__ == "__main__":
    sys.exit(main())
