"""The dispatcher end to end on both stores, against real HTTP sinks on 127.0.0.1.

Ticks are given their planning instant (time is passed in); the sinks and the
store are real. Wall-clock bounds appear only where the property *is* about time,
and then with wide margins.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest

from _factories import T0
from _faults import OutcomeWriteFails
from _sinks import closed_port, serve
from firecron.core import planning
from firecron.core.models import ScheduleSpec, StoredSchedule
from firecron.core.runs import RunState
from firecron.dispatch import Dispatcher
from firecron.settings import Settings
from firecron.store.base import Store

HOUR = timedelta(hours=1)


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"allow_private_targets": True, "ack_timeout": timedelta(seconds=2)}
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


async def seed(
    store: Store, n: int, url: str, prefix: str = "job", **fields: object
) -> list[StoredSchedule]:
    """``n`` hourly schedules whose first occurrence is T0 (due at T0)."""
    out = []
    for i in range(n):
        spec = ScheduleSpec.model_validate(
            {"id": f"{prefix}-{i:04d}", "every": "1h", "target": {"url": url}, **fields}
        )
        state = planning.initial_state(spec, T0 - timedelta(seconds=1))
        assert state.next_fire_at == (T0 if spec.enabled else None)
        out.append(await store.put_schedule(spec, state, expect_version=None))
    return out


def webhook_ids(sink: object) -> Counter[str]:
    return Counter(r.headers["webhook-id"] for r in sink.requests)  # type: ignore[attr-defined]


async def test_concurrent_ticks_fire_every_occurrence_exactly_once(
    store_factory: Callable[[], Store],
) -> None:
    n = 300
    with serve() as sink:
        await seed(store_factory(), n, sink.url + "/hook")
        dispatchers = [Dispatcher(store_factory(), settings()) for _ in range(4)]
        try:
            summaries = await asyncio.gather(
                *(d.tick(T0 + timedelta(seconds=5)) for d in dispatchers)
            )
        finally:
            await asyncio.gather(*(d.aclose() for d in dispatchers))
        ids = webhook_ids(sink)
    assert len(ids) == n
    assert set(ids.values()) == {1}  # nobody received anything twice
    assert sum(s.claimed for s in summaries) == n
    assert sum(s.fired for s in summaries) == n
    runs = await store_factory().list_runs(limit=1000)
    assert len(runs) == n
    assert {r.state for r in runs} == {RunState.delivered}
    # The next occurrence is an hour later: a repeated tick at the same instant fires nothing.
    again = Dispatcher(store_factory(), settings())
    try:
        assert (await again.tick(T0 + timedelta(seconds=5))).fired == 0
    finally:
        await again.aclose()


async def test_tick_returns_within_ack_timeout_while_targets_hold(store: Store) -> None:
    n = 40
    with serve(hold=True) as sink:
        await seed(store, n, sink.url + "/hold")
        d = Dispatcher(
            store, settings(ack_timeout=timedelta(seconds=1), concurrency=4, max_open=100)
        )
        try:
            summary = await d.tick(T0)
        finally:
            await d.aclose()
        peak = sink.peak_open
    # Every request was open at once: waiting for acks did not hold the 4 send slots
    # (serially by send slot the tick would take n / 4 ack timeouts; `make bench`
    # measures the wall time, held.py).
    assert peak == n
    assert summary.outcomes["unacknowledged"] == n
    runs = await store.list_runs(limit=100)
    assert {r.state for r in runs} == {RunState.delivered}
    assert all(r.attempts[-1].acknowledged is False for r in runs)


async def test_crash_between_claim_and_post_is_refired_once(store: Store) -> None:
    d = Dispatcher(store, settings())
    with serve() as sink:
        [stored] = await seed(store, 1, sink.url + "/hook")
        # The dispatcher claims, then dies before sending: do exactly the claim.
        plan = planning.plan(stored, None, T0, pending_grace=d.timeouts.pending_grace)
        assert await store.claim(stored, plan.new_state, plan.runs) is not None
        try:
            early = await d.tick(T0 + timedelta(seconds=30))
            assert early.fired == 0
            assert sink.received == 0
            late = await d.tick(T0 + d.timeouts.pending_grace + timedelta(seconds=1))
            assert late.fired == 1
            again = await d.tick(T0 + d.timeouts.pending_grace + timedelta(seconds=2))
            assert again.fired == 0
        finally:
            await d.aclose()
        assert [r.headers["webhook-id"] for r in sink.requests] == [f"{plan.runs[0].id}/1"]
    run = await store.get_run(plan.runs[0].id)
    assert run is not None
    assert (run.state, run.attempt) == (RunState.delivered, 1)
    [attempt] = run.attempts
    assert [s.outcome for s in attempt.sends] == ["unknown", "acknowledged"]


async def test_a_resend_of_an_unrecorded_send_keeps_its_key(store: Store) -> None:
    failing = Dispatcher(cast(Store, OutcomeWriteFails(store)), settings())
    d = Dispatcher(store, settings())
    with serve() as sink:
        await seed(store, 1, sink.url + "/hook")
        try:
            first = await failing.tick(T0)
            assert first.fired == 1
            assert any("recording the send failed" in e for e in first.errors)
            [unrecorded] = await store.list_runs(limit=1)
            assert (unrecorded.state, unrecorded.attempt) == (RunState.pending, 1)
            late = T0 + d.timeouts.pending_grace + timedelta(seconds=1)
            resent = await d.tick(late)
            assert resent.fired == 1
            assert (await d.tick(late + timedelta(seconds=1))).fired == 0
        finally:
            await failing.aclose()
            await d.aclose()
        requests = list(sink.requests)
    run_id = unrecorded.id
    # The same attempt twice: same key, same webhook-id, same body, so a target that
    # deduplicates on the key acts once.
    assert [r.headers["idempotency-key"] for r in requests] == [f"{run_id}/1"] * 2
    assert [r.headers["webhook-id"] for r in requests] == [f"{run_id}/1"] * 2
    assert requests[0].body == requests[1].body
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.state, run.attempt) == (RunState.delivered, 1)
    [attempt] = run.attempts
    assert [(s.outcome, s.status_code) for s in attempt.sends] == [
        ("unknown", None),
        ("acknowledged", 200),
    ]
    assert attempt.sends[0].at == late


async def test_blind_resends_end_lost(store: Store) -> None:
    failing = Dispatcher(cast(Store, OutcomeWriteFails(store, failures=100)), settings())
    with serve() as sink:
        await seed(store, 1, sink.url + "/hook", retry={"max_attempts": 5})
        now = T0
        try:
            await failing.tick(now)
            for _ in range(failing.timeouts.blind_sends):
                now += failing.timeouts.pending_grace
                await failing.tick(now)
        finally:
            await failing.aclose()
        keys = set(webhook_ids(sink))
        assert sink.received == failing.timeouts.blind_sends
    [run] = await store.list_runs(limit=1)
    assert keys == {f"{run.id}/1"}
    assert (run.state, run.attempt) == (RunState.lost, 1)
    assert "was never recorded" in (run.error or "")


async def test_failing_target_is_retried_with_backoff_then_fails(store: Store) -> None:
    d = Dispatcher(store, settings())
    with serve(status=503) as sink:
        await seed(store, 1, sink.url + "/down", retry={"max_attempts": 3, "backoff": "10s"})
        try:
            await d.tick(T0)
            now = T0
            for _ in range(6):
                [run] = await store.list_runs(limit=1)
                if run.state is not RunState.retry_wait:
                    break
                assert run.retry_at is not None
                assert run.retry_at <= now + timedelta(seconds=40)
                now = run.retry_at
                await d.tick(now)
        finally:
            await d.aclose()
        assert sink.received == 3
        assert sorted(webhook_ids(sink)) == [f"{run.id}/{i}" for i in (1, 2, 3)]
    [run] = await store.list_runs(limit=1)
    assert run.state is RunState.failed
    assert (run.error or "").endswith("HTTP 503")
    assert [a.outcome for a in run.attempts] == [RunState.failed] * 3


@pytest.mark.parametrize("status", [400, 404])
async def test_4xx_target_fails_at_once(store: Store, status: int) -> None:
    d = Dispatcher(store, settings())
    with serve(status=status) as sink:
        await seed(store, 1, sink.url + "/gone")
        try:
            summary = await d.tick(T0)
            await d.tick(T0 + HOUR - timedelta(seconds=1))
        finally:
            await d.aclose()
        assert sink.received == 1
    assert summary.outcomes["permanent"] == 1
    assert summary.events["dispatch.failed"] == 1
    [run] = await store.list_runs(limit=1)
    assert run.state is RunState.failed
    assert str(status) in (run.error or "")


async def test_unreachable_target_is_retryable(store: Store) -> None:
    # The dispatcher's clock must agree with the tick's planning instant: a retry_at
    # computed from the real clock (2026) would already be due at T0 (2027).
    d = Dispatcher(store, settings(), clock=lambda: T0)
    await seed(store, 1, f"http://127.0.0.1:{closed_port()}/x")
    try:
        summary = await d.tick(T0)
    finally:
        await d.aclose()
    assert summary.outcomes["retryable"] == 1
    [run] = await store.list_runs(limit=1)
    assert run.state is RunState.retry_wait


async def test_private_target_refused_without_the_setting(store: Store) -> None:
    with serve() as sink:
        await seed(store, 1, sink.url + "/hook")
        d = Dispatcher(store, settings(allow_private_targets=False))
        try:
            summary = await d.tick(T0)
        finally:
            await d.aclose()
        assert sink.received == 0
    assert summary.outcomes["permanent"] == 1
    [run] = await store.list_runs(limit=1)
    assert run.state is RunState.failed


async def test_idle_tick_reads_nothing_but_its_queries(store: Store) -> None:
    with serve() as sink:
        await seed(store, 20, sink.url + "/hook", enabled=False)
        d = Dispatcher(store, settings())
        store.stats.reset()
        try:
            summary = await d.tick(T0 + HOUR * 5)
        finally:
            await d.aclose()
    assert summary.due == 0
    assert store.stats.writes == 0
    assert store.stats.reads <= 2  # the due query and the watch query (Firestore bills empties)


async def test_manual_trigger_merges_params_and_ignores_schedule_state(store: Store) -> None:
    with serve() as sink:
        [stored] = await seed(store, 1, sink.url + "/hook", params={"a": 1, "b": 2})
        d = Dispatcher(store, settings())
        try:
            run = await d.trigger(stored.id, {"b": 3})
        finally:
            await d.aclose()
        [req] = sink.requests
    assert run.state is RunState.delivered
    assert run.params == {"a": 1, "b": 3}
    assert b'"trigger":"manual"' in req.body
    after = await store.get_schedule(stored.id)
    assert after is not None
    assert after.state == stored.state


async def test_finished_runs_get_an_expiry(store: Store) -> None:
    with serve() as sink:
        await seed(store, 1, sink.url + "/hook")
        d = Dispatcher(store, settings(run_retention=timedelta(days=2)))
        try:
            await d.tick(T0)
        finally:
            await d.aclose()
    [run] = await store.list_runs(limit=1)
    assert run.state is RunState.delivered
    assert run.ended_at is not None
    assert run.expire_at == run.ended_at + timedelta(days=2)


def test_run_command_shows_the_unknown_send_and_the_resend(tmp_path: Path) -> None:
    import asyncio

    from _factories import make_run
    from firecron.core import lifecycle as lc

    url = f"sqlite:///{tmp_path / 'sends.db'}"
    t = lc.RunTimeouts()
    run = make_run("resent", target={"url": "https://example.com/hook"}, deadline_at=T0)
    at = T0 + t.pending_grace
    decision = lc.watch(run, at, t)
    assert decision.change is not None
    resent = run.model_copy(update=decision.change.changes)
    done = lc.sent(resent, at, lc.SendOutcome.acknowledged, t, status_code=200)

    async def seed() -> None:
        from firecron.store import open_store

        store = open_store(url)
        await store.create_run(resent.model_copy(update=done.changes))
        await store.close()

    asyncio.run(seed())
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRECRON_")}
    env["COLUMNS"] = "200"  # one line per attempt, whatever the terminal
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "firecron"), "run", run.id, "--store", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "SENDS" in shown.stdout
    assert "unknown" in shown.stdout
    assert "acknowledged 200" in shown.stdout
