"""Cloud Tasks delivery against the real ``gcloud-tasks-emulator`` (tests/_tasks_emulator.py).

The emulator POSTs each task to its URL; a local sink (tests/_sinks.py) receives it.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from _sinks import serve
from _tasks_emulator import QUEUE, tasks_emulator_or_skip

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
