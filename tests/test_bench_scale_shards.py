"""Smoke tests of ``bench/scale_shards.py``: its pure helpers, its sink, and a tiny real run.

No timing is asserted (the machine is shared): the tiny run checks that real
``firecron tick --shard I/N`` processes fire every schedule exactly once, and that a
tick budget of 1 ms makes one process continue.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from bench._common import Backends
from bench.scale_shards import (
    NAME,
    ShardsConfig,
    _request_head,
    ack_sink,
    best_of,
    cpu_bound,
    read_summary,
    run,
    scaling,
    tick_argv,
    tick_env,
)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def test_scaling_is_speedup_over_one_shard_and_efficiency_over_the_usable_cores() -> None:
    rows = [
        {"shards": 1, "fired_per_s": 1000.0},
        {"shards": 2, "fired_per_s": 1800.0},
        {"shards": 4, "fired_per_s": 1900.0},
    ]
    out = scaling(rows, cores=2)
    assert out[1] == {"speedup": 1.0, "efficiency": 1.0}
    assert out[2] == {"speedup": 1.8, "efficiency": 0.9}
    # 4 shards on 2 cores: judged against the 2 cores, not the 4 processes.
    assert out[4] == {"speedup": 1.9, "efficiency": 0.95}
    assert scaling(rows[1:], cores=2) == {}
    bounded = [{**r, "cpu_bound_per_s": 1000 * r["shards"]} for r in rows]
    assert scaling(bounded, cores=2)[2]["bound_speedup"] == 2.0
    assert scaling([{"shards": 1, "fired_per_s": 0}], cores=2) == {}


def test_cpu_bound_is_one_core_per_process_and_the_machine_for_all() -> None:
    # 1 ms of tick CPU and 0.1 ms of sink CPU per run.
    assert cpu_bound(1000, 1.0, 0.1, shards=1, cores=2) == 1000
    assert cpu_bound(1000, 1.0, 0.1, shards=2, cores=2) == round(2 / 0.0011)
    assert cpu_bound(1000, 1.0, 0.1, shards=4, cores=2) == round(2 / 0.0011)
    assert cpu_bound(0, 1.0, 0.1, shards=1, cores=2) is None
    assert cpu_bound(10, 0.0, 0.1, shards=1, cores=2) is None


def test_best_of_keeps_the_fastest_try_and_judges_every_try() -> None:
    def attempt(rate: float, once: bool) -> dict[str, Any]:
        return {
            "fired_per_s": rate,
            "other_load_cores": 0.1,
            "fired": 10,
            "receipts": {"exactly_once": once},
        }

    best = best_of([attempt(100.0, True), attempt(300.0, True), attempt(200.0, True)])
    assert best["fired_per_s"] == 300.0
    assert [t["fired_per_s"] for t in best["tries"]] == [100.0, 300.0, 200.0]
    assert best["all_exactly_once"]
    # A slower try that was not exactly once still fails the whole configuration.
    assert not best_of([attempt(100.0, False), attempt(300.0, True)])["all_exactly_once"]


def test_read_summary_takes_the_json_object_and_nothing_else() -> None:
    assert read_summary('{\n  "fired": 3,\n  "continuations": 1\n}\n') == {
        "fired": 3,
        "continuations": 1,
    }
    assert read_summary("") == {}
    assert read_summary("Traceback (most recent call last):\n  boom {") == {}
    assert read_summary("[1, 2]") == {}


def test_tick_argv_names_the_shard() -> None:
    assert tick_argv((1, 4))[-4:] == ["tick", "--json", "--shard", "1/4"]
    assert tick_argv(None)[-2:] == ["tick", "--json"]


def test_tick_env_sets_the_store_and_budget_and_drops_what_would_change_the_run() -> None:
    base = {
        "PATH": "/bin",
        "FIRECRON_SIGNING_SECRET": "whsec_x",
        "FIRECRON_SHARDS": "3",
        "FIRECRON_DELIVERY": "cloud_tasks",
        "FIRECRON_TASKS_QUEUE": "q",
    }
    env = tick_env(base, store_url="sqlite:///x.db", namespace="ns", budget="2s", continuations=7)
    assert env == {
        "PATH": "/bin",
        "FIRECRON_STORE": "sqlite:///x.db",
        "FIRECRON_NAMESPACE": "ns",
        "FIRECRON_TICK_BUDGET": "2s",
        "FIRECRON_MAX_CONTINUATIONS": "7",
        "FIRECRON_ALLOW_PRIVATE_TARGETS": "true",
    }


def test_request_head_waits_for_the_whole_head() -> None:
    head = b"POST /ack/0 HTTP/1.1\r\nwebhook-id: s@t/1\r\nContent-Length: 5\r\n"
    assert _request_head(head) is None
    assert _request_head(head + b"\r\n") == ("/ack/0", "s@t/1", len(head) + 2 + 5)
    bad = b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n"
    assert _request_head(bad) == ("/", "-", len(bad))  # a bad length counts as none


def _post(url: str, key: str | None, body: bytes) -> int:
    headers = {"content-type": "application/json"} | ({"webhook-id": key} if key else {})
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with _OPENER.open(request, timeout=10) as response:
        assert json.loads(response.read()) == {"ok": True}
        status: int = response.status
        return status


def test_ack_sink_answers_records_and_resets() -> None:
    with ack_sink() as sink:
        assert _post(sink.url + "/ack/0", "a@1/1", b'{"x": 1}') == 200
        assert _post(sink.url + "/anything", None, b"x" * 100_000) == 200
        stats = sink.stats()
        assert [r[:2] for r in stats["records"]] == [["a@1/1", "/ack/0"], ["-", "/anything"]]
        assert stats["received"] == 2
        assert sink.wait_idle()
        sink.reset()
        assert sink.stats()["records"] == []


@pytest.mark.timeout(240)
def test_tiny_real_run_fires_every_schedule_exactly_once(tmp_path: Path) -> None:
    cfg = ShardsConfig(
        schedules=300,
        shard_counts=(1, 2),
        continuation_runs=1_200,
        continuation_budget_ms=1,
        max_continuations=100,
        repeats=2,
    )
    backends = Backends(tmp_path)
    try:
        result = run(backends, ["sqlite"], cfg)
    finally:
        backends.close()
    assert result.name == NAME
    sqlite: dict[str, Any] = result.figures["backends"]["sqlite"]
    for row in sqlite["shard_scaling"]:
        assert row["receipts"]["exactly_once"], row["receipts"]
        assert row["all_exactly_once"], row["tries"]
        assert len(row["tries"]) == 2
        assert row["fired"] == 300
        assert row["all_exited_0"], row["per_process"]
        assert len(row["per_process"]) == row["shards"]
        # Each shard fired its own part: the parts add up, none fired everything.
        fired = [p["fired"] for p in row["per_process"]]
        assert sum(fired) == 300
        assert row["shards"] == 1 or max(fired) < 300
    cont = sqlite["continuation"]
    assert cont["receipts"]["exactly_once"], cont["receipts"]
    assert cont["fired"] == 1_200
    # 1,200 due at 500 a page, a budget of 1 ms: every page after the first continues.
    assert cont["continuations"] >= 2
    # Every check but the speedup (a timing) passed.
    verdicts = {c.target: c.passed for c in result.checks}
    assert all(ok for target, ok in verdicts.items() if "shards (" not in target), verdicts
    assert len(verdicts) == 1 + 2 + 2
