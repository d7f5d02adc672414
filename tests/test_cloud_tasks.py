"""Cloud Tasks delivery against the real ``gcloud-tasks-emulator`` (tests/_tasks_emulator.py).

The emulator POSTs each task to its URL; a local sink (tests/_sinks.py) or a real
functions-framework worker receives it. The harness starts it with Cloud Tasks' rule on
task names (a name that exists or existed in the last hour is refused with
``ALREADY_EXISTS``; tests/_tasks_emulator_server.py), so every test names its runs
uniquely: the module shares one emulator, as a deployment shares one queue.

"Delivered once" is shown without waiting for nothing to happen: the emulator sends one
queue's tasks one after the other, in the order they were created, so once a task
created after a refused duplicate has arrived, the duplicate would have arrived first.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import uuid4

import grpc
import pytest
from google.api_core.exceptions import AlreadyExists
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from _factories import T0
from _faults import OutcomeWriteFails
from _poll import poll, wait_run
from _sinks import Sink, serve
from _tasks_emulator import QUEUE, Delivery, TasksEmulator, tasks_emulator_started_or_skip
from _workers import TEST_SOURCE, serve_worker, worker_env
from firecron import State
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


CLOCK_TOLERANCE_S = 0.01
"""How far two readings of this machine's clock by two processes may disagree (float
rounding of a Timestamp, nothing more): the emulator, the sink and the worker share it."""


@pytest.fixture(scope="module")
def tasks_emulator() -> Iterator[TasksEmulator]:
    """A Cloud Tasks emulator shared by this module's tests."""
    with tasks_emulator_started_or_skip() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def tasks_host(tasks_emulator: TasksEmulator) -> str:
    """``localhost:PORT`` of the module's emulator."""
    return tasks_emulator.host


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid4().hex[:8]}"


def _deliveries(emulator: TasksEmulator, task: str) -> list[Delivery]:
    return [d for d in emulator.deliveries() if d.task == task]


def _raw_task(name: str, url: str) -> Any:
    return tasks_v2.Task(
        name=f"{QUEUE}/tasks/{name}",
        http_request=tasks_v2.HttpRequest(
            url=url, http_method=tasks_v2.HttpMethod.POST, body=name.encode()
        ),
    )


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
    """An hourly schedule due at T0 whose target is ``url`` (plus ``target``), its id
    unique (run ids, hence task names, never repeat across the module's tests)."""
    spec = ScheduleSpec.model_validate(
        {"id": _unique("queued"), "every": "1h", "timeout": "10m", "target": {"url": url, **target}}
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
        queue = d.task_queue
        assert queue is not None
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
    assert request.headers["x-cloudtasks-taskname"] == queue.task_id(key)
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


async def test_a_task_with_a_schedule_time_reaches_its_target_no_earlier_than_that_second(
    tasks_host: str,
) -> None:
    queue = TaskQueue(
        QUEUE, service_account=None, allow_private_targets=True, emulator_host=tasks_host
    )
    # A whole second 3 to 4 s ahead (the emulator reports the ETA as a float of the
    # Timestamp): enqueued now, it must not be sent before then.
    at = (datetime.now(UTC) + timedelta(seconds=4)).replace(microsecond=0)
    with serve() as sink:
        d = Dispatch(url=f"{sink.url}/at", body=b"{}", headers={}, key=f"{_unique('held')}/1")
        try:
            result = await queue.enqueue(
                d, oidc_audience=None, deadline=timedelta(minutes=1), schedule_time=at
            )
        finally:
            await queue.aclose()
        sink.wait_for(1)
    assert result == SendResult(SendOutcome.unacknowledged, None, None)
    request = sink.requests[0]
    assert float(request.headers["x-cloudtasks-tasketa"]) == at.timestamp()
    # Held until its second: the sink's own clock saw it arrive then or later (no upper
    # bound is asserted: how late is the benchmark's, bench/scale_seconds.py).
    assert request.received_at >= at.timestamp() - CLOCK_TOLERANCE_S


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
                "id": _unique("exact"),
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
    # Cloud Tasks was asked to send it at that second (not at the tick's), and did.
    assert float(sink.requests[0].headers["x-cloudtasks-tasketa"]) == at.timestamp()
    assert sink.requests[0].received_at >= at.timestamp() - CLOCK_TOLERANCE_S


# -- a name is enqueued once -------------------------------------------------------------


def _paths_once_arrived(sink: Sink, last: str) -> list[str]:
    """The sink's request paths, once ``last`` (created after everything else) arrived."""
    return poll(
        lambda: [r.path for r in sink.requests],
        lambda paths: last in paths,
        what=f"{last} at the sink",
    )


def test_the_emulator_refuses_a_task_name_that_exists_or_existed(
    tasks_emulator: TasksEmulator,
) -> None:
    channel = grpc.insecure_channel(tasks_emulator.host)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    name, later = _unique("named"), _unique("later")
    try:
        with serve() as sink:
            client.create_task(parent=QUEUE, task=_raw_task(name, f"{sink.url}/first"))
            with pytest.raises(AlreadyExists):  # queued (or being sent)
                client.create_task(parent=QUEUE, task=_raw_task(name, f"{sink.url}/again"))
            sink.wait_for(1)
            with pytest.raises(AlreadyExists):  # sent: the name stays taken for an hour
                client.create_task(parent=QUEUE, task=_raw_task(name, f"{sink.url}/late"))
            client.create_task(parent=QUEUE, task=_raw_task(later, f"{sink.url}/later"))
            paths = _paths_once_arrived(sink, "/later")
    finally:
        channel.close()
    assert paths == ["/first", "/later"]
    assert [d.refused for d in _deliveries(tasks_emulator, name) if d.refused] == [True, True]


async def test_an_attempt_enqueued_twice_is_sent_once_and_a_new_attempt_is_sent(
    tasks_emulator: TasksEmulator,
) -> None:
    run_id = _unique("twice")

    def queue() -> TaskQueue:
        return TaskQueue(
            QUEUE,
            service_account=None,
            allow_private_targets=True,
            emulator_host=tasks_emulator.host,
        )

    first, second = queue(), queue()
    with serve() as sink:

        def attempt(n: int) -> Dispatch:
            key = f"{run_id}/{n}"
            return Dispatch(url=f"{sink.url}/{n}", body=b"{}", headers={"webhook-id": key}, key=key)

        async def enqueue(q: TaskQueue, n: int) -> SendResult:
            return await q.enqueue(attempt(n), oidc_audience=None, deadline=timedelta(minutes=1))

        try:
            # Two dispatchers racing on the same run: the same attempt at once, two clients.
            raced = await asyncio.gather(enqueue(first, 1), enqueue(second, 1))
            # The first one's answer was lost: it sends the same attempt again.
            resent = await enqueue(first, 1)
            # The run's next attempt is another task, with another name.
            retried = await enqueue(second, 2)
        finally:
            await first.aclose()
            await second.aclose()
        paths = _paths_once_arrived(sink, "/2")
    sent = SendResult(SendOutcome.unacknowledged, None, None)
    # ALREADY_EXISTS counts as sent: every enqueue is the hand-over of its attempt...
    assert [*raced, resent, retried] == [sent] * 4
    # ...and the queue holds one task per attempt: the second create of attempt 1 and
    # the resend were refused, and the target got each attempt once.
    attempt1 = _deliveries(tasks_emulator, first.task_id(f"{run_id}/1"))
    assert sorted(d.refused for d in attempt1) == [False, True, True]
    assert paths == ["/1", "/2"]
    assert [r.headers["webhook-id"] for r in sink.requests] == [f"{run_id}/1", f"{run_id}/2"]


async def test_the_same_run_id_in_two_namespaces_sharing_a_queue_is_sent_for_each(
    tasks_emulator: TasksEmulator,
) -> None:
    # Scheduled run ids are {schedule_id}@{time}: two namespaces with a schedule of the
    # same id fire runs of the same id. Without the namespace in the task name, the
    # second would be refused as the first.
    key = f"{_unique('shared')}@20260101T000000Z/1"
    queues = [
        TaskQueue(
            QUEUE,
            service_account=None,
            allow_private_targets=True,
            emulator_host=tasks_emulator.host,
            namespace=namespace,
        )
        for namespace in ("staging", "prod")
    ]
    with serve() as sink:
        try:
            results = [
                await q.enqueue(
                    Dispatch(url=f"{sink.url}/{q.namespace}", body=b"{}", headers={}, key=key),
                    oidc_audience=None,
                    deadline=timedelta(minutes=1),
                )
                for q in queues
            ]
        finally:
            for q in queues:
                await q.aclose()
        paths = _paths_once_arrived(sink, "/prod")
    assert results == [SendResult(SendOutcome.unacknowledged, None, None)] * 2
    assert paths == ["/staging", "/prod"]
    names = [r.headers["x-cloudtasks-taskname"] for r in sink.requests]
    assert names == [q.task_id(key) for q in queues]
    assert [name.split("-", 1)[1] for name in names] == [
        task_id(f"staging/{key}"),
        task_id(f"prod/{key}"),
    ]


async def test_a_resend_of_an_unrecorded_enqueue_is_refused_counts_as_sent_and_arrives_once(
    tasks_emulator: TasksEmulator, store: Store
) -> None:
    settings = _settings(tasks_emulator.host)
    failing = Dispatcher(cast(Store, OutcomeWriteFails(store)), settings, clock=_clock)
    d = Dispatcher(store, settings, clock=_clock)
    queue = d.task_queue
    assert queue is not None
    after = TaskQueue(
        QUEUE, service_account=None, allow_private_targets=True, emulator_host=tasks_emulator.host
    )
    with serve() as sink:
        await _seed(store, f"{sink.url}/hook", delivery="cloud_tasks")
        try:
            first = await failing.tick(T0 + timedelta(seconds=5))
            assert any("recording the send failed" in e for e in first.errors)
            [unrecorded] = await store.list_runs(limit=10)
            assert (unrecorded.state, unrecorded.attempt) == (RunState.pending, 1)
            # The watchdog sends the same attempt again, under the same task name.
            late = T0 + timedelta(seconds=6) + d.timeouts.pending_grace
            resent = await d.tick(late)
            # A task created after it: once it arrived, an accepted duplicate would have.
            probe = Dispatch(url=f"{sink.url}/after", body=b"{}", headers={}, key=_unique("after"))
            await after.enqueue(probe, oidc_audience=None, deadline=timedelta(minutes=1))
        finally:
            await failing.aclose()
            await d.aclose()
            await after.aclose()
        paths = _paths_once_arrived(sink, "/after")
    key = f"{unrecorded.id}/1"
    refused = [x.refused for x in _deliveries(tasks_emulator, queue.task_id(key))]
    assert sorted(refused) == [False, True]
    assert resent.outcomes["unacknowledged"] == 1
    assert paths == ["/hook", "/after"]
    assert sink.requests[0].headers["webhook-id"] == key
    run = await store.get_run(unrecorded.id)
    assert run is not None
    assert (run.state, run.attempt) == (RunState.delivered, 1)
    [attempt] = run.attempts
    assert [s.outcome for s in attempt.sends] == ["unknown", "unacknowledged"]


# -- a long worker holds its task to the end ---------------------------------------------


async def test_a_long_worker_holds_its_task_open_and_answers_200_at_the_end(
    tasks_emulator: TasksEmulator, tmp_path: Path
) -> None:
    secret = "whsec_ZmlyZWNyb24td29ya2VyLXRlc3Qtc2VjcmV0"
    store_url = f"sqlite:///{tmp_path / 'x.db'}"
    ack_timeout = timedelta(seconds=1)
    release_key = _unique("release")
    store = SQLiteStore(tmp_path / "x.db")
    env = worker_env(store_url, secrets=[secret])
    try:
        with serve_worker("gated", env=env, source=TEST_SOURCE, log_dir=tmp_path) as worker:
            spec = ScheduleSpec.model_validate(
                {
                    "id": _unique("gated"),
                    "every": "1h",
                    "timeout": "10m",
                    "params": {"key": release_key},
                    "target": {"url": worker.url, "worker": True, "delivery": "cloud_tasks"},
                }
            )
            await store.put_schedule(
                spec, planning.initial_state(spec, datetime.now(UTC)), expect_version=None
            )
            settings = _settings(
                tasks_emulator.host, signing_secrets=(secret,), ack_timeout=ack_timeout
            )
            d = Dispatcher(store, settings)
            queue = d.task_queue
            assert queue is not None
            try:
                run = await d.trigger(spec.id)
            finally:
                await d.aclose()
            task = queue.task_id(f"{run.id}/1")
            running = await wait_run(store, run.id, lambda r: r.state is RunState.running)
            assert running.started_at is not None
            started = running.started_at.timestamp()
            # The function works on, past the ack timeout a direct send would wait: the
            # task's request stays open (the emulator logs an answer once it has one).
            answered, _ = poll(
                lambda: (_deliveries(tasks_emulator, task), time.time() - started),
                lambda v: bool(v[0]) or v[1] > ack_timeout.total_seconds(),
                what="an answer, or the ack timeout to pass",
            )
            assert answered == [], "the worker answered before its function returned"
            still = await store.get_run(run.id)
            assert still is not None
            assert still.state is RunState.running
            await asyncio.to_thread(_release, store_url, release_key)
            done = await wait_run(store, run.id, lambda r: r.is_terminal)
            [answer] = poll(
                lambda: _deliveries(tasks_emulator, task),
                lambda ds: bool(ds),
                what=f"the answer to task {task}",
            )
    finally:
        await store.close()
    assert done.state is RunState.succeeded
    assert done.output == {"released": "go"}
    assert done.ended_at is not None
    # 200 with the final line (not a streamed 202), sent once the end was recorded.
    assert answer.status == 200
    assert answer.body is not None
    assert json.loads(answer.body) == {"run_id": run.id, "state": "succeeded", "recorded": True}
    assert answer.answered_at is not None
    assert answer.answered_at >= done.ended_at.timestamp() - CLOCK_TOLERANCE_S
    # One request spanned the whole run: sent before the worker started it.
    assert answer.sent_at is not None
    assert answer.sent_at <= started + CLOCK_TOLERANCE_S


def _release(store_url: str, key: str) -> None:
    with State(store_url) as state:
        state.set(key, "go")
