"""Cloud Tasks delivery against the real ``gcloud-tasks-emulator`` (tests/_tasks_emulator.py).

The emulator POSTs each task to its URL; a local sink (tests/_sinks.py) receives it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from _factories import T0
from _poll import wait_run
from _sinks import serve
from _tasks_emulator import QUEUE, tasks_emulator_or_skip
from _workers import serve_worker, worker_env
from firecron.core import planning
from firecron.core.lifecycle import SendOutcome
from firecron.core.models import ScheduleSpec, StoredSchedule, TargetDelivery
from firecron.core.runs import RunState
from firecron.dispatch import Dispatcher
from firecron.settings import Settings
from firecron.store.base import Store
from firecron.store.sqlite import SQLiteStore
from firecron.transport import Dispatch, SendResult, dispatch_body, verify_webhook
from firecron.transport.cloud_tasks import TaskQueue, task_id

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def tasks_host() -> Iterator[str]:
    """``localhost:PORT`` of a Cloud Tasks emulator shared by this module's tests."""
    with tasks_emulator_or_skip() as host:
        yield host


def test_emulator_delivers_an_enqueued_task_to_a_local_sink(tasks_host: str) -> None:
    channel = grpc.insecure_channel(tasks_host)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    with serve() as sink:
        task = tasks_v2.Task(
            name=f"{QUEUE}/tasks/harness-1",
            http_request=tasks_v2.HttpRequest(
                url=f"{sink.url}/hello",
                http_method=tasks_v2.HttpMethod.POST,
                headers={"content-type": "application/json", "x-probe": "1"},
                body=b'{"hello":"tasks"}',
            ),
        )
        client.create_task(parent=QUEUE, task=task)
        sink.wait_for(1)
    channel.close()
    request = sink.requests[0]
    assert (request.method, request.path, request.body) == ("POST", "/hello", b'{"hello":"tasks"}')
    assert request.headers["x-probe"] == "1"
    assert request.headers["x-cloudtasks-taskname"] == "harness-1"
    assert request.headers["x-cloudtasks-queuename"] == QUEUE


def _settings(tasks_host: str | None, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "allow_private_targets": True,
        "tasks_queue": QUEUE if tasks_host else None,
        "tasks_emulator_host": tasks_host,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


async def _seed(store: Store, url: str, **target: object) -> StoredSchedule:
    """An hourly schedule due at T0 whose target is ``url`` (plus ``target``)."""
    spec = ScheduleSpec.model_validate(
        {"id": "queued", "every": "1h", "timeout": "10m", "target": {"url": url, **target}}
    )
    state = planning.initial_state(spec, T0 - timedelta(seconds=1))
    return await store.put_schedule(spec, state, expect_version=None)


def _clock() -> datetime:
    # Five seconds past the occurrence: nothing is ahead, so no schedule_time.
    return T0 + timedelta(seconds=5)


async def test_a_cloud_tasks_target_is_enqueued_and_cloud_tasks_posts_the_signed_body(
    tasks_host: str, store: Store
) -> None:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    with serve() as sink:
        await _seed(store, f"{sink.url}/hook", delivery="cloud_tasks")
        d = Dispatcher(store, _settings(tasks_host, signing_secrets=(secret,)), clock=_clock)
        try:
            summary = await d.tick(T0 + timedelta(seconds=5))
        finally:
            await d.aclose()
        sink.wait_for(1)
    # The tick waited for no acknowledgement: handed to the queue is "unacknowledged".
    assert summary.outcomes["unacknowledged"] == 1
    (run,) = await store.list_runs(limit=10)
    assert run.state is RunState.delivered
    request = sink.requests[0]
    assert request.path == "/hook"
    assert request.body == dispatch_body(run)
    key = f"{run.id}/1"
    assert (request.headers["webhook-id"], request.headers["idempotency-key"]) == (key, key)
    assert verify_webhook(request.headers, request.body, [secret], T0 + timedelta(seconds=5)) == key
    assert request.headers["x-cloudtasks-taskname"] == task_id(key)
    assert request.headers["x-cloudtasks-queuename"] == QUEUE


async def test_a_direct_target_is_posted_by_the_dispatcher_even_with_a_queue(
    tasks_host: str, store: Store
) -> None:
    with serve() as sink:
        await _seed(store, f"{sink.url}/hook")
        d = Dispatcher(store, _settings(tasks_host), clock=_clock)
        try:
            summary = await d.tick(T0 + timedelta(seconds=5))
        finally:
            await d.aclose()
        sink.wait_for(1)
    assert summary.outcomes["acknowledged"] == 1
    assert "x-cloudtasks-taskname" not in sink.requests[0].headers


async def test_the_default_delivery_applies_to_targets_that_set_none(
    tasks_host: str, store: Store
) -> None:
    with serve() as sink:
        await _seed(store, f"{sink.url}/hook")
        settings = _settings(tasks_host, delivery=TargetDelivery.cloud_tasks)
        d = Dispatcher(store, settings, clock=_clock)
        try:
            summary = await d.tick(T0 + timedelta(seconds=5))
        finally:
            await d.aclose()
        sink.wait_for(1)
    assert summary.outcomes["unacknowledged"] == 1
    assert "x-cloudtasks-taskname" in sink.requests[0].headers


async def test_a_task_with_a_schedule_time_is_held_until_then(tasks_host: str) -> None:
    queue = TaskQueue(
        QUEUE, service_account=None, allow_private_targets=True, emulator_host=tasks_host
    )
    # Whole seconds: the emulator reports the ETA as a float of the Timestamp.
    at = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    with serve() as sink:
        d = Dispatch(url=f"{sink.url}/at", body=b"{}", headers={}, key="held/1")
        try:
            result = await queue.enqueue(
                d, oidc_audience=None, deadline=timedelta(minutes=1), schedule_time=at
            )
        finally:
            await queue.aclose()
        sink.wait_for(1)
    assert result == SendResult(SendOutcome.unacknowledged, None, None)
    assert float(sink.requests[0].headers["x-cloudtasks-tasketa"]) == at.timestamp()


async def test_a_worker_reached_through_cloud_tasks_runs_and_records_its_end(
    tasks_host: str, tmp_path: Path
) -> None:
    secret = "whsec_ZmlyZWNyb24td29ya2VyLXRlc3Qtc2VjcmV0"
    db_path = tmp_path / "x.db"
    env = worker_env(f"sqlite:///{db_path}", secrets=[secret])
    store = SQLiteStore(db_path)
    try:
        with serve_worker("hello", env=env, log_dir=tmp_path) as worker:
            spec = ScheduleSpec.model_validate(
                {
                    "id": "hello-tasks",
                    "every": "1h",
                    "params": {"name": "queue"},
                    "target": {"url": worker.url, "worker": True, "delivery": "cloud_tasks"},
                }
            )
            await store.put_schedule(
                spec, planning.initial_state(spec, datetime.now(UTC)), expect_version=None
            )
            d = Dispatcher(store, _settings(tasks_host, signing_secrets=(secret,)))
            try:
                run = await d.trigger("hello-tasks")
            finally:
                await d.aclose()
            # Enqueued, not POSTed: the dispatcher saw no answer from the worker.
            assert run.state is RunState.dispatched
            assert run.attempts[-1].acknowledged is False
            done = await wait_run(store, run.id, lambda r: r.is_terminal)
    finally:
        await store.close()
    assert done.state is RunState.succeeded
    assert done.output == {"greeting": "hello queue"}


async def test_an_occurrence_of_the_coming_minute_is_enqueued_for_its_exact_second(
    tasks_host: str, store: Store
) -> None:
    # Whole seconds in the near future (far enough that a slow machine still ticks
    # before it): a tick now hands it over ahead of time.
    at = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
    with serve() as sink:
        spec = ScheduleSpec.model_validate(
            {
                "id": "exact",
                "at": at.isoformat().replace("+00:00", "Z"),
                "target": {"url": f"{sink.url}/at", "delivery": "cloud_tasks"},
            }
        )
        await store.put_schedule(
            spec, planning.initial_state(spec, datetime.now(UTC)), expect_version=None
        )
        d = Dispatcher(store, _settings(tasks_host))
        try:
            summary = await d.tick()
        finally:
            await d.aclose()
        assert summary.outcomes["unacknowledged"] == 1
        sink.wait_for(1)
    (run,) = await store.list_runs(limit=10)
    assert run.scheduled_for == at
    # Cloud Tasks was asked to send it at that second (not at the tick's).
    assert float(sink.requests[0].headers["x-cloudtasks-tasketa"]) == at.timestamp()
