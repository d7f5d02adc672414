"""One bad schedule or run never stops a tick (issue 10, item 1), on both stores.

The poison records are written through the store API, as data written by hand or by
an older version would be: a schedule whose planning overflows (its next occurrence at
the far end of time, plus its jitter) and a running run whose deadline does. Both are
valid models, so they stay readable whatever bounds ``validate`` puts on specs.
The healthy schedules beside them must still fire, the watchdog must still run, the
poison schedule must carry its error (``last_error``, status ``error``), announce it as
``schedule.error`` and not be tried again before its backoff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from _factories import T0, make_run
from _sinks import serve
from firecron.core import planning
from firecron.core.events import LOG_ROUTE, EventType, Route, WebhookSink
from firecron.core.models import ScheduleSpec, StoredSchedule
from firecron.core.runs import RunState
from firecron.dispatch import Dispatcher
from firecron.settings import Settings
from firecron.store.base import Store
from firecron.store.sqlite import SQLiteStore

FIRECRON = str(Path(sys.executable).parent / "firecron")

LAST_SECOND = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def settings() -> Settings:
    return Settings(allow_private_targets=True, ack_timeout=timedelta(seconds=2))


async def seed(store: Store, ids: list[str], url: str) -> list[StoredSchedule]:
    """Hourly schedules due at T0."""
    out = []
    for schedule_id in ids:
        spec = ScheduleSpec.model_validate(
            {"id": schedule_id, "every": "1h", "target": {"url": url}}
        )
        state = planning.initial_state(spec, T0 - timedelta(seconds=1))
        out.append(await store.put_schedule(spec, state, expect_version=None))
    return out


async def poison(store: Store, url: str, events_url: str | None = None) -> StoredSchedule:
    """A schedule due at T0 whose plan raises OverflowError (its next fire time is past 9999).

    Its events go to the log and, given ``events_url``, to a webhook sink there.
    """
    routes: list[Route] = [LOG_ROUTE]
    if events_url is not None:
        hook = WebhookSink(type="webhook", url=events_url)
        routes.append(Route(sink_name="hook", types=(EventType.schedule_error,), sink=hook))
    spec = ScheduleSpec.model_validate(
        {"id": "poison", "every": "1h", "jitter": "1h", "target": {"url": url}, "notify": routes}
    )
    state = planning.initial_state(spec, T0 - timedelta(seconds=1)).model_copy(
        update={"next_occurrence": LAST_SECOND, "next_fire_at": T0}
    )
    with pytest.raises(OverflowError):  # the premise: planning it fails
        planning.plan(StoredSchedule(spec=spec, state=state, version="1"), None, T0)
    return await store.put_schedule(spec, state, expect_version=None)


def logged_events(out: str, event_type: str) -> list[dict[str, object]]:
    found = []
    for line in out.splitlines():
        if line.startswith("{") and f'"dev.firecron.{event_type}"' in line:
            found.append(json.loads(line)["cloudevent"])
    return found


async def test_a_poison_schedule_never_stops_the_tick(
    store_factory: Callable[[], Store], capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_factory()
    with serve() as sink, serve() as event_sink:
        await seed(store, ["ok-1", "ok-2", "ok-3"], sink.url + "/hook")
        await poison(store, sink.url + "/hook", event_sink.url + "/events")
        # A run whose dispatcher died before sending it: only the watchdog sends it.
        stale = make_run(
            "ok-1",
            T0 - timedelta(hours=1),
            state=RunState.pending,
            watch_at=T0 - timedelta(minutes=5),
            deadline_at=T0 - timedelta(minutes=5),
            target={"url": sink.url + "/stale"},
        )
        assert await store.create_run(stale) is not None
        d = Dispatcher(store_factory(), settings())
        try:
            first = await d.tick(T0)
            sink.wait_for(4)
            assert sorted(r.path for r in sink.requests) == ["/hook"] * 3 + ["/stale"]
            assert first.claimed == 3
            assert first.fired == 4  # the three healthy schedules and the watchdog's re-send
            assert first.schedule_errors == 1
            assert first.events["schedule.error"] == 1
            assert [e for e in first.errors if e.startswith("schedule poison: OverflowError")]

            stored = await store.get_schedule("poison")
            assert stored is not None
            assert stored.status == "error"
            assert stored.state.last_error is not None
            assert stored.state.last_error.startswith("OverflowError")
            assert stored.state.last_error_at == T0
            assert stored.state.next_fire_at == T0 + planning.ERROR_BACKOFF

            [event] = logged_events(capsys.readouterr().out, "schedule.error")
            assert event["subject"] == "poison"
            assert event["source"] == "//firecron/schedules/poison"
            assert event["data"]["error"] == stored.state.last_error  # type: ignore[index]
            # Offered once to the schedule's routed sinks too, as a CloudEvent.
            [delivered] = event_sink.requests
            assert json.loads(delivered.body)["type"] == "dev.firecron.schedule.error"
            assert delivered.headers["webhook-id"] == event["id"]

            # Until its backoff ends, the poison schedule is not tried again.
            waiting = await d.tick(T0 + planning.ERROR_BACKOFF - timedelta(seconds=1))
            assert waiting.due == 0
            assert waiting.errors == []
            assert (await store.get_schedule("poison")) == stored

            # Then it is tried once more beside the healthy ones, fails once more, and
            # moves on again.
            later = T0 + planning.ERROR_BACKOFF
            again = await d.tick(later)
            assert (again.due, again.claimed, again.schedule_errors) == (4, 3, 1)
            retried = await store.get_schedule("poison")
            assert retried is not None
            assert retried.state.next_fire_at == later + planning.ERROR_BACKOFF
        finally:
            await d.aclose()


async def test_a_later_successful_plan_clears_the_error(store: Store) -> None:
    with serve() as sink:
        stored = await poison(store, sink.url + "/hook")
        d = Dispatcher(store, settings())
        try:
            await d.tick(T0)
            errored = await store.get_schedule(stored.id)
            assert errored is not None
            assert errored.status == "error"
            # Repaired by hand (or by a new version): the next occurrence is sane again.
            fixed = errored.state.model_copy(update={"next_occurrence": T0})
            await store.put_schedule(errored.spec, fixed, expect_version=errored.version)
            summary = await d.tick(T0 + planning.ERROR_BACKOFF)
            sink.wait_for(1)
        finally:
            await d.aclose()
    assert summary.claimed == 1
    assert summary.errors == []
    healed = await store.get_schedule(stored.id)
    assert healed is not None
    assert healed.status == "active"
    assert healed.state.last_error is None
    assert healed.state.last_error_at is None


async def test_one_failing_run_never_stops_the_watchdog(store: Store) -> None:
    with serve() as sink:
        # A running run whose deadlines overflow (started at the far end of time).
        broken = make_run(
            "broken",
            T0 - timedelta(hours=1),
            state=RunState.running,
            started_at=LAST_SECOND,
            watch_at=T0 - timedelta(minutes=5),
            deadline_at=T0 - timedelta(minutes=5),
        )
        stale = make_run(
            "stale",
            T0 - timedelta(hours=1),
            state=RunState.pending,
            watch_at=T0 - timedelta(minutes=4),
            deadline_at=T0 - timedelta(minutes=4),
            target={"url": sink.url + "/stale"},
        )
        for run in (broken, stale):
            assert await store.create_run(run) is not None
        d = Dispatcher(store, settings())
        try:
            summary = await d.tick(T0)
            sink.wait_for(1)
        finally:
            await d.aclose()
        assert [r.path for r in sink.requests] == ["/stale"]
    assert summary.watched == 2
    [error] = summary.errors
    assert error.startswith(f"run {broken.id}: OverflowError")


async def test_list_and_show_display_the_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'firecron.db'}"
    store = SQLiteStore(tmp_path / "firecron.db")
    try:
        spec = ScheduleSpec.model_validate(
            {"id": "bad", "every": "1h", "target": {"url": "https://example.com/hook"}}
        )
        state = planning.errored(
            planning.initial_state(spec, T0), T0, "OverflowError: date value out of range"
        )
        await store.put_schedule(spec, state, expect_version=None)
    finally:
        await store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRECRON_")}

    def firecron(*args: str) -> str:
        proc = subprocess.run(
            [FIRECRON, *args, "--store", url],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    [listed] = json.loads(firecron("list", "--json"))["schedules"]
    assert listed["status"] == "error"
    assert listed["last_error"] == "OverflowError: date value out of range"
    assert " error " in firecron("list")
    shown = " ".join(firecron("show", "bad").split())
    assert "last error" in shown
    assert "2027-01-01T00:00:00Z: OverflowError: date value out of range" in shown
    assert "(next try 2027-01-01T01:00:00Z)" in shown
