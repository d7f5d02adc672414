"""Cloud Tasks delivery without the emulator: the task firecron builds, the settings and
the target field, and a cloud_tasks target with no queue configured."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from google.cloud import tasks_v2
from pydantic import ValidationError

from _factories import T0
from _sinks import serve
from firecron.core import planning
from firecron.core.models import ScheduleSpec, Target, TargetDelivery
from firecron.core.runs import RunState
from firecron.dispatch import Dispatcher
from firecron.errors import InvalidInputError
from firecron.settings import Settings
from firecron.store.base import Store
from firecron.transport import Dispatch
from firecron.transport.cloud_tasks import TaskQueue, dispatch_deadline, task_id

QUEUE = "projects/p/locations/l/queues/q"


def test_task_ids_are_valid_and_distinct_for_distinct_keys() -> None:
    keys = ["a/1", "a_2f_1", "a_1", "a-1", "a:b.c/12", "ü/1"]
    ids = [task_id(k) for k in keys]
    assert len(set(ids)) == len(keys)
    assert all((c.isalnum() and c.isascii()) or c in "-_" for i in ids for c in i)
    assert task_id("run-1/2") == "run-1_2f_2"


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        (None, timedelta(minutes=30)),
        (timedelta(seconds=1), timedelta(seconds=15)),
        (timedelta(minutes=10), timedelta(minutes=10)),
        (timedelta(hours=2), timedelta(minutes=30)),
    ],
)
def test_dispatch_deadline_is_the_timeout_within_cloud_tasks_bounds(
    timeout: timedelta | None, expected: timedelta
) -> None:
    assert dispatch_deadline(timeout) == expected


def test_the_task_carries_the_body_headers_oidc_token_deadline_and_schedule_time() -> None:
    queue = TaskQueue(
        QUEUE, service_account="tasks@p.iam.gserviceaccount.com", allow_private_targets=False
    )
    d = Dispatch(
        url="https://w.example/run",
        body=b'{"x":1}',
        headers={
            "content-type": "application/json",
            "user-agent": "firecron/1",
            "authorization": "Bearer t",
            "webhook-id": "r/1",
        },
        key="r/1",
    )
    at = datetime(2027, 1, 1, 0, 0, 17, tzinfo=UTC)
    task = queue.task(
        d, oidc_audience="https://w.example/run", deadline=timedelta(minutes=5), schedule_time=at
    )
    prefix = hashlib.sha256(b"r_2f_1").hexdigest()[:8]
    assert task.name == f"{QUEUE}/tasks/{prefix}-r_2f_1"
    http = task.http_request
    assert (http.url, http.body, http.http_method) == (d.url, d.body, tasks_v2.HttpMethod.POST)
    assert dict(http.headers) == {"content-type": "application/json", "webhook-id": "r/1"}
    assert http.oidc_token.service_account_email == "tasks@p.iam.gserviceaccount.com"
    assert http.oidc_token.audience == "https://w.example/run"
    assert task.dispatch_deadline == timedelta(minutes=5)
    assert task.schedule_time == at
    plain = queue.task(d, oidc_audience=None, deadline=timedelta(minutes=1))
    assert not plain.http_request.oidc_token.service_account_email
    assert not plain.schedule_time


async def test_oidc_through_cloud_tasks_needs_a_service_account() -> None:
    queue = TaskQueue(QUEUE, service_account=None, allow_private_targets=False)
    d = Dispatch(url="https://w.example/run", body=b"{}", headers={}, key="r/1")
    result = await queue.enqueue(d, oidc_audience=d.url, deadline=timedelta(minutes=1))
    assert result.outcome == "permanent"
    assert result.error == "auth: oidc through Cloud Tasks needs FIRECRON_TASKS_SERVICE_ACCOUNT"


def test_settings_read_the_delivery_and_the_queue() -> None:
    env = {"FIRECRON_DELIVERY": "cloud_tasks", "FIRECRON_TASKS_QUEUE": QUEUE}
    settings = Settings.from_env(env)
    assert (settings.delivery, settings.tasks_queue) == (TargetDelivery.cloud_tasks, QUEUE)
    assert Settings.from_env({}).delivery is TargetDelivery.direct


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FIRECRON_DELIVERY": "pigeon"},
            "FIRECRON_DELIVERY='pigeon': expected direct or cloud_tasks",
        ),
        (
            {"FIRECRON_DELIVERY": "cloud_tasks"},
            "FIRECRON_TASKS_QUEUE: required when FIRECRON_DELIVERY=cloud_tasks",
        ),
        (
            {"FIRECRON_TASKS_QUEUE": "q"},
            "FIRECRON_TASKS_QUEUE: 'q' is not a queue path: expected "
            "projects/PROJECT/locations/LOCATION/queues/QUEUE (several: comma-separated)",
        ),
        (
            {"FIRECRON_TASKS_QUEUE": "projects/p/locations/l/queues/a,,"},
            "FIRECRON_TASKS_QUEUE: '' is not a queue path: expected "
            "projects/PROJECT/locations/LOCATION/queues/QUEUE (several: comma-separated)",
        ),
    ],
)
def test_bad_delivery_settings_fail_with_one_line_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        Settings.from_env(env)
    assert str(info.value) == message


_QUEUES = [f"projects/p/locations/l/queues/q{i}" for i in range(4)]


def test_a_queue_names_tasks_with_a_hash_prefix_so_one_schedule_s_are_not_sequential() -> None:
    queue = TaskQueue(_QUEUES[0], service_account=None, allow_private_targets=True, namespace="n")
    keys = [f"job@20261130T1200{s:02d}Z/1" for s in range(60)]
    names = [queue.task_id(key) for key in keys]
    assert names == [queue.task_id(key) for key in keys]  # a duplicate keeps its name
    assert len(set(names)) == len(keys)
    for key, name in zip(keys, names, strict=True):
        prefix, _, rest = name.partition("-")
        assert re.fullmatch(r"[0-9a-f]{8}", prefix), name
        assert rest == task_id(f"n/{key}")
    # Consecutive seconds of one schedule do not sort next to each other.
    assert sorted(names) != names


def test_several_queues_are_read_comma_separated_without_repeats() -> None:
    env = {"FIRECRON_TASKS_QUEUE": f" {_QUEUES[0]}, {_QUEUES[1]} ,{_QUEUES[0]}"}
    assert Settings.from_env(env).tasks_queue == f"{_QUEUES[0]},{_QUEUES[1]}"


def test_with_several_queues_each_task_has_one_queue_and_they_share_the_work() -> None:
    queue = TaskQueue(",".join(_QUEUES), service_account=None, allow_private_targets=True)
    assert queue.queues == tuple(_QUEUES)
    keys = [f"job-{i}@20261130T120000Z/1" for i in range(400)]
    chosen = [queue.queue_for(key) for key in keys]
    # The same attempt always goes to the same queue, so a duplicate is refused by name.
    assert chosen == [queue.queue_for(key) for key in keys]
    counts = {q: chosen.count(q) for q in _QUEUES}
    assert all(count > 50 for count in counts.values()), counts
    d = Dispatch(url="https://x.example/hook", body=b"{}", headers={}, key=keys[0])
    task = queue.task(d, oidc_audience=None, deadline=timedelta(minutes=1))
    assert task.name == f"{chosen[0]}/tasks/{queue.task_id(keys[0])}"
    single = TaskQueue(_QUEUES[2], service_account=None, allow_private_targets=True)
    assert {single.queue_for(key) for key in keys} == {_QUEUES[2]}


def test_delivery_applies_to_url_and_function_targets_only() -> None:
    assert (
        Target(url="https://x.example", delivery="cloud_tasks").effective_delivery(
            TargetDelivery.direct
        )
        is TargetDelivery.cloud_tasks
    )
    assert (
        Target(function="f").effective_delivery(TargetDelivery.cloud_tasks)
        is TargetDelivery.cloud_tasks
    )
    with pytest.raises(ValidationError, match="'delivery' apply to 'url' and 'function'"):
        Target(pipeline="p", delivery="direct")


async def test_a_cloud_tasks_target_without_a_queue_fails_naming_the_variable(store: Store) -> None:
    with serve() as sink:
        spec = ScheduleSpec.model_validate(
            {"id": "q", "every": "1h", "target": {"url": sink.url, "delivery": "cloud_tasks"}}
        )
        await store.put_schedule(
            spec, planning.initial_state(spec, T0 - timedelta(seconds=1)), expect_version=None
        )
        d = Dispatcher(store, Settings(allow_private_targets=True))
        try:
            summary = await d.tick(T0)
        finally:
            await d.aclose()
        assert sink.requests == []
    assert summary.outcomes["permanent"] == 1
    (run,) = await store.list_runs(limit=10)
    assert run.state is RunState.failed
    assert run.error == "delivery: cloud_tasks needs FIRECRON_TASKS_QUEUE"
