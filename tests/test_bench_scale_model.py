"""The scale model's arithmetic (``bench/scale.py``), on figures whose answer is known."""

from __future__ import annotations

from typing import Any

import pytest
from bench.scale import BUCKETS, Measured, measured_from, model

M = Measured(
    store_cpu_ms=1.0,
    store="firestore",
    http_cpu_ms=0.5,
    tls_cpu_ms=1.0,
    enqueue_cpu_ms=0.75,
    writes_per_run=4,
    reads_per_run=2,
    run_index_writes=3,
)


def test_instances_queues_and_the_binding_firestore_limit() -> None:
    out = model(M, 1_200_000)
    direct = out["paths"]["direct (https)"]
    tasks = out["paths"]["cloud_tasks"]
    # 1.0 ms on the store + 0.5 ms TLS adds: 1.5 ms, 666.7/s for 50 s = 33,333 a minute.
    assert direct["cpu_ms_per_run"] == 1.5
    assert direct["runs_per_instance_minute"] == 33_333
    assert direct["instances"] == 36  # 1,200,000 / 33,333.3, exactly
    assert tasks["cpu_ms_per_run"] == 1.25
    assert tasks["instances"] == 30  # 40,000 a minute each
    assert tasks["queues_needed"] == 40  # 20,000/s at 500 per queue
    assert direct["queues_needed"] == 0
    fs = out["firestore"]
    assert fs["runs_watch_at_writes_s"] == 60_000  # 20,000/s x 3
    assert fs["per_bucket"] == {"schedules": 20_000 // BUCKETS, "runs": 1_000}
    assert fs["ceiling_runs_per_minute"] == 600_000  # 30,000/s over 3 writes a run
    runs_month = 1_200_000 * 60 * 24 * 30
    assert out["runs_per_month"] == runs_month
    assert fs["usd_month"] == round(runs_month * (4 * 0.09 + 2 * 0.03) / 100_000)
    assert tasks["cloud_tasks_usd_month"] == round(2 * runs_month * 0.40 / 1_000_000)


def _figures(with_firestore: bool) -> dict[str, Any]:
    scaling = {"shard_scaling": [{"process_cpu_ms_per_fired": 0.6}]}
    backends: dict[str, Any] = {"sqlite": scaling}
    if with_firestore:
        backends["firestore"] = {"shard_scaling": [{"process_cpu_ms_per_fired": 1.4}]}
    run = {"mode": "lease", "writes": 4, "reads": 2}
    return {
        "shards": {"backends": backends},
        "tls": {
            "modes": {
                m: {"dispatcher_cpu_ms_per_run": v}
                for m, v in (("http", 0.6), ("tls_resumed", 1.2), ("cloud_tasks", 0.7))
            }
        },
        "cost": {
            "runs": [
                {**run, "backend": "sqlite", "duration_s": 10},
                {**run, "backend": "firestore", "duration_s": 300, "writes": 5},
                {**run, "backend": "firestore", "duration_s": 10},
                {**run, "backend": "firestore", "mode": "lease, cloud_tasks", "duration_s": 1},
                {**run, "backend": "firestore", "mode": "legacy", "duration_s": 1, "writes": 9},
            ]
        },
    }


@pytest.mark.parametrize(
    ("with_firestore", "store", "cpu"),
    [(True, "firestore", 1.4), (False, "sqlite", 0.6)],
    # Ids without "firestore": the fast run selects tests by that word (no emulator here).
    ids=["emulator-figures", "sqlite-figures-only"],
)
def test_the_inputs_come_from_the_modelled_store_and_the_shortest_direct_run(
    with_firestore: bool, store: str, cpu: float
) -> None:
    m = measured_from(_figures(with_firestore))
    assert (m.store, m.store_cpu_ms) == (store, cpu)
    assert (m.http_cpu_ms, m.tls_cpu_ms, m.enqueue_cpu_ms) == (0.6, 1.2, 0.7)
    assert (m.writes_per_run, m.reads_per_run, m.run_index_writes) == (4, 2, 3)


def test_a_part_that_did_not_report_is_a_key_error() -> None:
    figures = _figures(True)
    del figures["tls"]["modes"]["cloud_tasks"]
    with pytest.raises(KeyError):
        measured_from(figures)
