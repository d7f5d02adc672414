"""Notifications end to end: real workers, real webhook sinks, the watchdog's retries.

Schedules and their notification rules are loaded from YAML exactly as `firecron
apply` does; workers are functions-framework processes that emit their own events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from _notify_servers import serve_pagerduty
from _poll import wait_run
from _sinks import Sink, serve
from _workers import TEST_SOURCE, serve_workers, worker_env
from firecron import admin
from firecron.core.events import DeliveryState, EventType, Notifications, resolve_routes
from firecron.core.runs import Run, RunState
from firecron.core.schedule_file import parse_schedule_file
from firecron.dispatch import Dispatcher, TickSummary
from firecron.settings import Settings
from firecron.store import Store, open_store
from firecron.transport.signing import verify_webhook

SECRET = "whsec_bm90aWZ5LXNlY3JldA=="


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    yield s
    await s.close()


def settings(store_url: str) -> Settings:
    return Settings(store_url=store_url, signing_secrets=(SECRET,), allow_private_targets=True)


def store_url(store: Store) -> str:
    return store._url  # type: ignore[attr-defined,no-any-return]


async def apply(store: Store, yaml_text: str, now: datetime) -> None:
    """Apply the schedules of ``yaml_text`` with their first occurrence due at ``now``.

    ``every`` counts from the Unix epoch unless ``start_at`` is set; anchoring at ``now``
    puts the next occurrence a whole interval later, whatever the time of day, so the
    later ticks of a test fire nothing new.
    """
    doc = parse_schedule_file(yaml_text)
    specs = [spec.model_copy(update={"start_at": now}) for spec in doc.schedules]
    await admin.apply_schedules(store, specs, now - timedelta(hours=1), prune=False, dry_run=False)


def events_at(sink: Sink) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in sink.requests]


def delivered(run: Run) -> bool:
    """Every routed delivery of every event of ``run`` was acknowledged and recorded."""
    return all(d.state is DeliveryState.delivered for e in run.events for d in e.deliveries)


def routed(run: Run) -> list[tuple[str, str]]:
    """``(event type, sink)`` of every delivery recorded on ``run``."""
    return [(e.type.value, d.sink) for e in run.events for d in e.deliveries]


async def tick(store: Store, at: datetime) -> TickSummary:
    """One tick at ``at`` (claims, fires, then the watchdog pass) by a fresh dispatcher."""
    d = Dispatcher(store, settings(store_url(store)))
    try:
        return await d.tick(at)
    finally:
        await d.aclose()


async def test_failed_worker_notifies_a_webhook_in_cloudevents_and_slack(store: Store) -> None:
    now = datetime.now(UTC)
    with (
        serve() as ce_sink,
        serve() as slack_sink,
        serve_workers(["fail"], env=worker_env(store_url(store), secrets=[SECRET])) as w,
    ):
        await apply(
            store,
            f"""
notifications:
  sinks:
    hook: {{type: webhook, url: "{ce_sink.url}/events"}}
    chat: {{type: webhook, url: "{slack_sink.url}/slack", format: slack}}
  rules:
    - on: [run.failed]
      sink: hook
    - on: [run.failed]
      schedules: ["broken-*"]
      sink: chat
schedules:
  - id: broken-job
    every: 1h
    target: {{url: "{w["fail"].url}", worker: true}}
    params: {{message: disk full}}
    retry: {{max_attempts: 1}}
    labels: {{team: data}}
""",
            now,
        )
        await tick(store, now)
        [run] = await store.list_runs()
        # Wait while the worker lives: it records the deliveries after the sinks answered,
        # and leaving the block kills it.
        failed = await wait_run(
            store,
            run.id,
            lambda r: r.state is RunState.failed and bool(routed(r)) and delivered(r),
        )
        assert routed(failed) == [("run.failed", "hook"), ("run.failed", "chat")]
        assert failed.watch_at is None
        # Both deliveries are recorded, so a later watchdog pass has nothing to send.
        later = await tick(store, now + timedelta(minutes=30))
        assert (later.watched, later.fired) == (0, 0)
        [ce_req] = ce_sink.requests
        [slack_req] = slack_sink.requests
    body = json.loads(ce_req.body)
    assert body["specversion"] == "1.0"
    assert body["type"] == "dev.firecron.run.failed"
    assert body["source"] == "//firecron/schedules/broken-job"
    assert body["subject"] == run.id
    assert body["id"] == f"{run.id}/run.failed/1"
    assert body["data"]["error"] == "RuntimeError: disk full"
    assert body["data"]["labels"] == {"team": "data"}
    assert ce_req.headers["content-type"] == "application/cloudevents+json"
    verify_webhook(ce_req.headers, ce_req.body, [SECRET], datetime.now(UTC))
    text = json.loads(slack_req.body)["text"]
    assert "broken-job" in text
    assert "failed" in text
    assert "RuntimeError: disk full" in text
    assert f"firecron run {run.id}" in text


async def test_sla_breach_is_notified_exactly_once(store: Store) -> None:
    now = datetime.now(UTC)
    with (
        serve() as sink,
        serve_workers(
            ["sleepy"], env=worker_env(store_url(store), secrets=[SECRET]), source=TEST_SOURCE
        ) as w,
    ):
        await apply(
            store,
            f"""
notifications:
  sinks: {{hook: {{type: webhook, url: "{sink.url}/e"}}}}
  rules: [{{on: [run.sla_breached], sink: hook}}]
schedules:
  - id: slow
    every: 1h
    target: {{url: "{w["sleepy"].url}", worker: true}}
    params: {{seconds: 600}}
    expected_duration: 1s
""",
            now,
        )
        d = Dispatcher(store, settings(store_url(store)))
        try:
            await d.tick(now)
            [run] = await store.list_runs()
            running = await wait_run(store, run.id, lambda r: r.state is RunState.running)
            assert running.started_at is not None
            breach = running.started_at + timedelta(seconds=1, milliseconds=200)
            for i in range(3):  # several ticks past the SLA, concurrently and in a row
                await asyncio.gather(
                    d.tick(breach + timedelta(milliseconds=100 * i)), d.tick(breach)
                )
            # The worker runs until cancelled, so every tick above saw it running.
            cancel = {"cancel_requested": True, "updated_at": breach + timedelta(seconds=1)}
            assert await store.update_run(run.id, [RunState.running], cancel) is not None
            done = await wait_run(store, run.id, lambda r: r.is_terminal and delivered(r))
            assert done.state is RunState.succeeded
            assert routed(done) == [("run.sla_breached", "hook")]
            # Nothing is left for the watchdog: one more pass sends nothing.
            later = await d.tick(breach + timedelta(minutes=30))
            assert (later.watched, later.fired) == (0, 0)
        finally:
            await d.aclose()
        assert [e["type"] for e in events_at(sink)] == ["dev.firecron.run.sla_breached"]


async def test_event_reaches_a_sink_that_was_down_once_it_is_back(store: Store) -> None:
    now = datetime.now(UTC)
    with (
        serve(status=503) as sink,
        serve_workers(["fail"], env=worker_env(store_url(store), secrets=[SECRET])) as w,
    ):
        await apply(
            store,
            f"""
notifications:
  sinks: {{hook: {{type: webhook, url: "{sink.url}/e"}}}}
  rules: [{{on: [run.failed], sink: hook}}]
schedules:
  - id: flaky-sink
    every: 1h
    target: {{url: "{w["fail"].url}", worker: true}}
    retry: {{max_attempts: 1}}
""",
            now,
        )
        d = Dispatcher(store, settings(store_url(store)))
        try:
            await d.tick(now)
            [run] = await store.list_runs()
            pending = await wait_run(
                store,
                run.id,
                lambda r: (
                    r.is_terminal and any(d.attempts >= 1 for e in r.events for d in e.deliveries)
                ),
            )
            [event] = [e for e in pending.events if e.type is EventType.run_failed]
            [delivery] = event.deliveries
            assert delivery.state.value == "pending"
            assert "503" in (delivery.last_error or "")
            assert pending.watch_at == delivery.next_at  # the watchdog will come back for it
            assert sink.received == 1
            sink.status = 200  # the sink is back
            assert delivery.next_at is not None
            await d.tick(delivery.next_at)
            assert sink.received == 2
            # Recorded as delivered, so a later watchdog pass sends nothing more.
            later = await d.tick(delivery.next_at + timedelta(minutes=30))
            assert (later.watched, later.fired) == (0, 0)
        finally:
            await d.aclose()
        assert sink.received == 2
        ids = [json.loads(r.body)["id"] for r in sink.requests]
        assert ids == [event.id, event.id]  # the same stable id, acknowledged once
    done = await store.get_run(run.id)
    assert done is not None
    assert done.events[-1].deliveries[0].state.value == "delivered"
    assert done.watch_at is None


def test_rules_filter_by_type_and_schedule_label() -> None:
    notifications = Notifications.model_validate(
        {
            "sinks": {
                "ops": {"type": "webhook", "url": "https://hooks.example.com/x"},
                "bus": {"type": "pubsub", "topic": "projects/p-1/topics/events"},
            },
            "rules": [
                {"on": ["run.failed", "run.lost"], "schedules": ["team=data"], "sink": "ops"},
                {"on": ["*"], "schedules": ["nightly-*"], "sink": "bus"},
            ],
        }
    )
    data = resolve_routes(notifications, "etl", {"team": "data"})
    web = resolve_routes(notifications, "frontend", {"team": "web"})
    nightly = resolve_routes(notifications, "nightly-report", {})
    assert [r.sink_name for r in data] == ["log", "ops"]
    assert data[1].wants(EventType.run_failed)
    assert not data[1].wants(EventType.run_succeeded)
    assert [r.sink_name for r in web] == ["log"]
    assert [r.sink_name for r in nightly] == ["log", "bus"]
    assert nightly[1].wants(EventType.run_succeeded)
    off = Notifications.model_validate({"log": False})
    assert resolve_routes(off, "x", {}) == []


async def test_rules_filter_end_to_end(store: Store) -> None:
    now = datetime.now(UTC)
    with (
        serve() as sink,
        serve_workers(["fail", "hello"], env=worker_env(store_url(store), secrets=[SECRET])) as w,
    ):
        await apply(
            store,
            f"""
notifications:
  sinks: {{ops: {{type: webhook, url: "{sink.url}/e"}}}}
  rules: [{{on: [run.failed], schedules: ["team=data"], sink: ops}}]
schedules:
  - id: data-fails
    every: 1h
    target: {{url: "{w["fail"].url}", worker: true}}
    retry: {{max_attempts: 1}}
    labels: {{team: data}}
  - id: web-fails
    every: 1h
    target: {{url: "{w["fail"].url}", worker: true}}
    retry: {{max_attempts: 1}}
    labels: {{team: web}}
  - id: data-succeeds
    every: 1h
    target: {{url: "{w["hello"].url}", worker: true}}
    labels: {{team: data}}
""",
            now,
        )
        await tick(store, now)
        runs = await store.list_runs()
        done = {
            run.schedule_id: await wait_run(store, run.id, lambda r: r.is_terminal and delivered(r))
            for run in runs
        }
        # Only the matching run has a delivery to the sink; the others have none to send.
        assert {k: routed(r) for k, r in done.items()} == {
            "data-fails": [("run.failed", "ops")],
            "web-fails": [],
            "data-succeeds": [],
        }
        later = await tick(store, now + timedelta(minutes=30))
        assert (later.watched, later.fired) == (0, 0)
        received = events_at(sink)
    assert [(e["type"], e["data"]["schedule_id"]) for e in received] == [
        ("dev.firecron.run.failed", "data-fails")
    ]


async def test_pagerduty_triggers_on_failure_and_resolves_on_the_next_success(
    store: Store,
) -> None:
    """Real workers record their own ends and deliver to a checking Events API server: the
    failure opens the schedule's incident, a later run that succeeds resolves it."""
    key = "R0UT1NGKEY0123456789abcdefABCDEF"
    now = datetime.now(UTC)
    env = worker_env(
        store_url(store),
        secrets=[SECRET],
        extra={"PD_ROUTING_KEY": key, "FIRECRON_CONSOLE_URL": "https://console.example.com"},
    )

    def schedules(pd_url: str, worker_url: str) -> str:
        return f"""
notifications:
  sinks: {{pager: {{type: pagerduty, routing_key_env: PD_ROUTING_KEY, url: "{pd_url}"}}}}
  rules: [{{on: ["*"], sink: pager}}]
schedules:
  - id: paged-job
    every: 1h
    target: {{url: "{worker_url}", worker: true}}
    retry: {{max_attempts: 1}}
"""

    with serve_pagerduty(key) as pd, serve_workers(["fail", "hello"], env=env) as w:
        await apply(store, schedules(pd.url, w["fail"].url), now)
        await tick(store, now)
        [run] = await store.list_runs()
        failed = await wait_run(
            store, run.id, lambda r: r.state is RunState.failed and bool(routed(r)) and delivered(r)
        )
        # Only the trigger type is routed: run.started is not PagerDuty's.
        assert routed(failed) == [("run.failed", "pager")]
        [trigger] = pd.events("trigger")
        assert trigger["dedup_key"] == "firecron/paged-job/run.failed"
        assert trigger["links"][0]["href"] == f"https://console.example.com/runs/{run.id}"

        # The schedule's next run succeeds.
        later = now + timedelta(hours=2)
        await apply(store, schedules(pd.url, w["hello"].url), later)
        await tick(store, later)
        [ok] = [r for r in await store.list_runs() if r.id != run.id]
        done = await wait_run(
            store,
            ok.id,
            lambda r: r.state is RunState.succeeded and bool(routed(r)) and delivered(r),
        )
        assert routed(done) == [("run.succeeded", "pager")]
        resolved = {e["dedup_key"] for e in pd.events("resolve")}
        assert "firecron/paged-job/run.failed" in resolved
        assert len(pd.events("trigger")) == 1
        assert pd.rejected == []
