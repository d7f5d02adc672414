"""Notification sinks against real parts: HTTP sinks on 127.0.0.1, the Pub/Sub emulator, stdout.

No timing assertions: the machine is shared.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from _emulators import EMULATOR_PROJECT, emulator_or_skip
from _factories import T0, make_run
from _poll import poll
from _sinks import closed_port, serve
from firecron.core.events import (
    Event,
    EventType,
    LogSink,
    PubSubSink,
    Route,
    WebhookSink,
    cloudevent,
)
from firecron.core.lifecycle import make_event
from firecron.core.messages import render_message
from firecron.core.models import NotifyAction, Target
from firecron.core.runs import Run, RunState
from firecron.notify import (
    MESSAGE_TYPE,
    Notifier,
    _ce_attributes,
    message_cloudevent,
    pubsub_attributes,
)
from firecron.settings import Settings
from firecron.transport import guard
from firecron.transport.sender import user_agent
from firecron.transport.signing import verify_webhook

SECRET = "whsec_" + "c2VjcmV0LWtleS1vbmUtMTIzNDU2Nzg5MA=="
OLD_SECRET = "whsec_YW4tb2xkZXItcGxhaW4tc2VjcmV0"  # base64 of an-older-plain-secret
SCHEDULE = "nightly-report"
WHEN = T0 + timedelta(minutes=5)


def _run(state: RunState = RunState.failed, **overrides: Any) -> Run:
    fields: dict[str, Any] = {
        "state": state,
        "attempt": 3,
        "error": "RuntimeError: boom",
        "labels": {"team": "data", "tier": "gold"},
        "params": {"api_token": "PARAM-SECRET-xyz"},
        "started_at": T0 + timedelta(seconds=2),
        "ended_at": T0 + timedelta(minutes=4),
        "expected_duration": timedelta(minutes=2),
        "watch_at": None,
    }
    fields.update(overrides)
    return make_run(SCHEDULE, **fields)


def _event(event_type: EventType = EventType.run_failed, **overrides: Any) -> Event:
    return make_event(_run(**overrides), event_type, WHEN, [])


def _webhook(url: str, fmt: str = "cloudevents") -> Route:
    return Route(sink_name="hook", types=(), sink=WebhookSink(type="webhook", url=url, format=fmt))


@pytest.fixture
async def notifier() -> AsyncIterator[Notifier]:
    n = Notifier(Settings(allow_private_targets=True, signing_secrets=(SECRET,)))
    yield n
    await n.aclose()


# -- webhook, CloudEvents ------------------------------------------------------------


async def test_cloudevent_webhook_posts_signed_structured_json(notifier: Notifier) -> None:
    event = _event()
    with serve() as sink:
        error = await notifier.deliver(event, _webhook(f"{sink.url}/events"))
        assert error is None
        assert len(sink.requests) == 1
        request = sink.requests[0]
    assert request.method == "POST"
    assert request.path == "/events"
    assert request.headers["content-type"] == "application/cloudevents+json"
    body = json.loads(request.body)
    assert body["specversion"] == "1.0"
    assert body["id"] == f"{SCHEDULE}@20270101T000000Z/run.failed/3" == event.id
    assert body["type"] == "dev.firecron.run.failed"
    assert body["source"] == f"//firecron/schedules/{SCHEDULE}"
    assert body["subject"] == event.subject == f"{SCHEDULE}@20270101T000000Z"
    assert body["time"] == "2027-01-01T00:05:00Z"
    assert body["datacontenttype"] == "application/json"
    assert body["data"]["state"] == "failed"
    assert body["data"]["error"] == "RuntimeError: boom"
    assert body["data"]["attempt"] == 3
    assert body["data"]["labels"] == {"team": "data", "tier": "gold"}
    assert body == cloudevent(event)
    # Signed like a dispatch, with the event id as webhook-id.
    assert request.headers["webhook-id"] == event.id
    assert verify_webhook(request.headers, request.body, [SECRET], datetime.now(UTC)) == event.id


async def test_a_webhook_is_sent_like_a_dispatch_pinned_and_as_firecron(
    notifier: Notifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dispatch sender's path: the guard's address, the host name in Host, one
    # connection per request, firecron's user-agent (a stock client says its own name).
    guard._dns_cache.clear()
    loop = asyncio.get_running_loop()

    async def resolve(host: str, port: int, **_: Any) -> Any:
        assert host == "events.test"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    try:
        with serve() as sink:
            url = f"http://events.test:{sink.port}/e"
            assert await notifier.deliver(_event(), _webhook(url)) is None
            [request] = sink.requests
    finally:
        guard._dns_cache.clear()
    assert request.headers["host"] == f"events.test:{sink.port}"
    assert request.headers["user-agent"] == user_agent()
    assert request.headers["connection"] == "close"


async def test_cloudevent_webhook_signed_by_every_secret_during_rotation() -> None:
    settings = Settings(allow_private_targets=True, signing_secrets=(SECRET, OLD_SECRET))
    notifier = Notifier(settings)
    try:
        with serve() as sink:
            assert await notifier.deliver(_event(), _webhook(sink.url)) is None
            request = sink.requests[0]
    finally:
        await notifier.aclose()
    assert len(request.headers["webhook-signature"].split()) == 2
    now = datetime.now(UTC)
    for secret in (SECRET, OLD_SECRET):
        verify_webhook(request.headers, request.body, [secret], now)


async def test_one_notifier_delivers_many_events(notifier: Notifier) -> None:
    with serve() as sink:
        for event_type in (EventType.run_started, EventType.run_succeeded):
            event = _event(event_type, state=RunState.succeeded, error=None)
            assert await notifier.deliver(event, _webhook(sink.url)) is None
        assert [json.loads(r.body)["type"] for r in sink.requests] == [
            "dev.firecron.run.started",
            "dev.firecron.run.succeeded",
        ]


# -- webhook, Slack ------------------------------------------------------------------


async def test_slack_webhook_posts_text(notifier: Notifier) -> None:
    event = _event()
    with serve() as sink:
        assert (
            await notifier.deliver(event, _webhook(f"{sink.url}/services/T/B/x", "slack")) is None
        )
        assert len(sink.requests) == 1
        request = sink.requests[0]
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.body)
    assert list(body) == ["text"]
    text = body["text"]
    assert SCHEDULE in text
    assert "failed" in text
    assert "RuntimeError: boom" in text
    assert f"firecron run {event.subject}" in text
    assert "PARAM-SECRET" not in text


async def test_slack_error_hides_the_webhook_path(notifier: Notifier) -> None:
    with serve(status=500) as sink:
        error = await notifier.deliver(
            _event(), _webhook(f"{sink.url}/services/T0/B0/TOKENPATH", "slack")
        )
    assert error is not None
    assert "500" in error
    assert "TOKENPATH" not in error


# -- webhook failures ----------------------------------------------------------------


async def test_server_error_is_an_error_line(notifier: Notifier) -> None:
    with serve(status=500) as sink:
        error = await notifier.deliver(_event(), _webhook(f"{sink.url}/hook?key=QUERYSECRET"))
        assert sink.received == 1
    assert error is not None
    assert "500" in error
    assert "\n" not in error
    assert "QUERYSECRET" not in error
    assert "/hook" in error


async def test_closed_port_is_an_error_line(notifier: Notifier) -> None:
    error = await notifier.deliver(_event(), _webhook(f"http://127.0.0.1:{closed_port()}/x"))
    assert error is not None
    assert "connection failed" in error
    assert "\n" not in error


async def test_no_answer_is_an_error_line() -> None:
    notifier = Notifier(Settings(allow_private_targets=True), timeout=0.5)
    try:
        with serve(hold=True) as sink:
            error = await notifier.deliver(_event(), _webhook(sink.url))
    finally:
        await notifier.aclose()
    assert error is not None
    assert "no response" in error


async def test_redirect_is_not_followed(notifier: Notifier) -> None:
    with serve() as other, serve(status=301, headers={"location": f"{other.url}/x"}) as redirect:
        error = await notifier.deliver(_event(), _webhook(redirect.url))
        assert redirect.received == 1
        assert other.received == 0
    assert error is not None
    assert "301" in error


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_private_target_refused_without_allow_private(scheme: str) -> None:
    notifier = Notifier(Settings(allow_private_targets=False, signing_secrets=(SECRET,)))
    try:
        with serve() as sink:
            url = f"{scheme}://127.0.0.1:{sink.port}/hook?token=QUERYSECRET"
            error = await notifier.deliver(_event(), _webhook(url))
            assert sink.received == 0
    finally:
        await notifier.aclose()
    assert error is not None
    assert "refused" in error
    assert "QUERYSECRET" not in error


async def test_metadata_server_refused_even_with_allow_private(notifier: Notifier) -> None:
    error = await notifier.deliver(_event(), _webhook("http://169.254.169.254/computeMetadata"))
    assert error is not None
    assert "refused" in error


# -- log -----------------------------------------------------------------------------


def _logged(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    entry: dict[str, Any] = json.loads(lines[0])
    return entry


def test_log_failed_is_error_with_labels_trace_and_cloudevent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event()
    trace = "projects/p/traces/0123456789abcdef0123456789abcdef"
    Notifier(Settings()).log(event, trace=trace)
    entry = _logged(capsys)
    assert entry["severity"] == "ERROR"
    assert entry["message"] == (
        f"run.failed: schedule {SCHEDULE} run {event.subject} failed (attempt 3 of 3):"
        " RuntimeError: boom"
    )
    assert "PARAM-SECRET" not in entry["message"]
    assert entry["logging.googleapis.com/labels"] == {
        "schedule_id": SCHEDULE,
        "run_id": event.subject,
        "event_type": "run.failed",
        "label.team": "data",
        "label.tier": "gold",
    }
    assert entry["logging.googleapis.com/trace"] == trace
    assert entry["cloudevent"] == cloudevent(event)


def test_log_error_with_line_break_stays_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    Notifier(Settings()).log(_event(error="Traceback:\n  boom\nValueError: x"))
    entry = _logged(capsys)
    assert "\n" not in entry["message"]
    assert "logging.googleapis.com/trace" not in entry


@pytest.mark.parametrize(
    ("event_type", "state", "severity"),
    [
        (EventType.run_failed, RunState.failed, "ERROR"),
        (EventType.run_lost, RunState.lost, "ERROR"),
        (EventType.run_timed_out, RunState.timed_out, "ERROR"),
        (EventType.dispatch_failed, RunState.failed, "ERROR"),
        (EventType.run_sla_breached, RunState.running, "WARNING"),
        (EventType.run_retrying, RunState.retry_wait, "WARNING"),
        (EventType.run_missed, RunState.skipped, "WARNING"),
        (EventType.run_skipped, RunState.skipped, "WARNING"),
        (EventType.run_succeeded, RunState.succeeded, "INFO"),
        (EventType.run_started, RunState.running, "INFO"),
    ],
)
def test_log_severity(
    capsys: pytest.CaptureFixture[str], event_type: EventType, state: RunState, severity: str
) -> None:
    error = "RuntimeError: boom" if severity == "ERROR" else None
    Notifier(Settings()).log(_event(event_type, state=state, error=error))
    entry = _logged(capsys)
    assert entry["severity"] == severity
    assert entry["message"].startswith(f"{event_type.value}: schedule {SCHEDULE} run ")
    assert "PARAM-SECRET" not in entry["message"]


def test_log_sla_breach_says_the_expected_duration(capsys: pytest.CaptureFixture[str]) -> None:
    event = _event(EventType.run_sla_breached, state=RunState.running, error=None, ended_at=None)
    Notifier(Settings()).log(event)
    entry = _logged(capsys)
    assert entry["severity"] == "WARNING"
    assert "expected to take 120.0s" in entry["message"]


async def test_deliver_to_log_sink_prints_and_succeeds(
    notifier: Notifier, capsys: pytest.CaptureFixture[str]
) -> None:
    event = _event(EventType.run_succeeded, state=RunState.succeeded, error=None)
    route = Route(sink_name="log", types=(), sink=LogSink(type="log"))
    assert await notifier.deliver(event, route) is None
    entry = _logged(capsys)
    assert entry["severity"] == "INFO"
    assert entry["cloudevent"]["id"] == event.id


# -- Pub/Sub -------------------------------------------------------------------------


def test_pubsub_attributes_are_cloudevents_binary_mode() -> None:
    event = _event()
    assert pubsub_attributes(event) == {
        "ce-specversion": "1.0",
        "ce-id": event.id,
        "ce-source": f"//firecron/schedules/{SCHEDULE}",
        "ce-type": "dev.firecron.run.failed",
        "ce-subject": event.subject,
        "ce-time": "2027-01-01T00:05:00Z",
        "content-type": "application/json",
    }


def _pull(subscriber: Any, subscription: str, want: int) -> list[Any]:
    """Synchronous pulls until ``want`` messages arrived, acknowledging them."""
    received: list[Any] = []

    def pull_some() -> int:
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": 10}, timeout=10
        )
        if response.received_messages:
            received.extend(response.received_messages)
            subscriber.acknowledge(
                request={
                    "subscription": subscription,
                    "ack_ids": [m.ack_id for m in response.received_messages],
                }
            )
        return len(received)

    poll(pull_some, lambda n: n >= want, interval=0.2, what=f"{want} message(s) on {subscription}")
    return received


@pytest.mark.emulator
async def test_pubsub_publishes_to_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.cloud.pubsub_v1 as pubsub_v1

    with emulator_or_skip("pubsub") as host:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
        topic = f"projects/{EMULATOR_PROJECT}/topics/firecron-events"
        subscription = f"projects/{EMULATOR_PROJECT}/subscriptions/firecron-events-test"
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        notifier = Notifier(Settings())
        try:
            publisher.create_topic(request={"name": topic})
            subscriber.create_subscription(request={"name": subscription, "topic": topic})

            event = _event()
            route = Route(sink_name="bus", types=(), sink=PubSubSink(type="pubsub", topic=topic))
            assert await notifier.deliver(event, route) is None

            messages = _pull(subscriber, subscription, 1)
            assert len(messages) == 1
            message = messages[0].message
            assert json.loads(message.data.decode()) == event.data
            assert dict(message.attributes) == {
                "ce-specversion": "1.0",
                "ce-id": event.id,
                "ce-source": f"//firecron/schedules/{SCHEDULE}",
                "ce-type": "dev.firecron.run.failed",
                "ce-subject": event.subject,
                "ce-time": "2027-01-01T00:05:00Z",
                "content-type": "application/json",
            }

            # A topic that does not exist is an error line, not an exception.
            missing = Route(
                sink_name="gone",
                types=(),
                sink=PubSubSink(type="pubsub", topic=f"projects/{EMULATOR_PROJECT}/topics/nope"),
            )
            error = await notifier.deliver(event, missing)
            assert error is not None
            assert "topics/nope" in error
            assert "\n" not in error
        finally:
            await notifier.aclose()
            subscriber.close()
            publisher.transport.close()


def test_event_log_can_be_turned_off(capsys: pytest.CaptureFixture[str]) -> None:
    from firecron.notify import Notifier
    from firecron.settings import Settings

    event = _failed_event_for_log_switch()
    Notifier(Settings(event_log=False)).log(event)
    assert capsys.readouterr().out == ""
    Notifier(Settings()).log(event)
    assert json.loads(capsys.readouterr().out)["cloudevent"]["id"] == event.id


def _failed_event_for_log_switch() -> Any:
    from _factories import T0, make_run
    from firecron.core.events import EventType
    from firecron.core.lifecycle import make_event
    from firecron.core.runs import RunState

    run = make_run("logswitch", T0, state=RunState.failed, error="boom")
    return make_event(run, EventType.run_failed, T0, [])


# -- messages (notify targets and tasks) ---------------------------------------------

MESSAGE_SINK = "ops"


def _task_run(**overrides: Any) -> Run:
    """A run of a pipeline's notify task, with the message's sink named ``ops``."""
    fields: dict[str, Any] = {
        "state": RunState.pending,
        "run_id": "etl@20270101T000000Z.alert",
        "target": Target(notify=NotifyAction(sink=MESSAGE_SINK, text="unused")),
        "params": {"day": "2027-01-01", "rows": 3, "flags": {"full": True}, "note": "<!channel>"},
        "labels": {"team": "data"},
        "pipeline": "etl",
        "task": "alert",
        "parent_run_id": "etl@20270101T000000Z",
        "cause_run_id": "etl@20270101T000000Z",
    }
    fields.update(overrides)
    return make_run("etl", **fields)


def test_render_message_fills_every_placeholder() -> None:
    text = (
        "{run_id} | {pipeline_run_id} | {schedule_id} | {task} | {param.day} | {param.rows}"
        " | {param.flags} | {param.note}"
    )
    assert render_message(text, _task_run()) == (
        "etl@20270101T000000Z.alert | etl@20270101T000000Z | etl | alert | 2027-01-01 | 3"
        ' | {"full": true} | <!channel>'
    )


def test_render_message_leaves_other_braces_and_missing_values() -> None:
    # Not str.format: JSON, empty braces, unknown names and format specs stay as written.
    text = '{} {"a": 1} {param.nope} {run_id!r} {0} {{run_id}} {param.} {schedule_id:>9}'
    assert render_message(text, _task_run()) == (
        '{} {"a": 1} {param.nope} {run_id!r} {0} {etl@20270101T000000Z.alert} {param.}'
        " {schedule_id:>9}"
    )
    # Outside a pipeline: no task to name, and the run is its own pipeline run.
    plain = make_run(SCHEDULE, params={"a.b": None})
    assert render_message("{task} {pipeline_run_id} {param.a.b}", plain) == (
        f"{{task}} {plain.id} null"
    )


def test_render_message_never_reads_a_value_again() -> None:
    run = _task_run(params={"evil": "{run_id} {param.evil}"})
    assert render_message("x {param.evil} y", run) == "x {run_id} {param.evil} y"


def test_render_message_escapes_values_only() -> None:
    run = _task_run()
    rendered = render_message("<!here> {param.note} & {param.day}", run, escape=str.upper)
    assert rendered == "<!here> <!CHANNEL> & 2027-01-01"


async def test_message_to_cloudevents_webhook_is_a_signed_message_event(
    notifier: Notifier,
) -> None:
    run = _task_run()
    with serve() as sink:
        config = WebhookSink(type="webhook", url=f"{sink.url}/m")
        error = await notifier.send_message(config, "load of {param.day} failed: {run_id}", run)
        assert error is None
        [request] = sink.requests
    assert request.headers["content-type"] == "application/cloudevents+json"
    body = json.loads(request.body)
    assert body["type"] == "dev.firecron.message" == MESSAGE_TYPE
    assert body["id"] == f"{run.id}/message" == request.headers["webhook-id"]
    assert body["source"] == "//firecron/schedules/etl"
    assert body["subject"] == run.id
    assert body["data"] == {
        "text": f"load of 2027-01-01 failed: {run.id}",
        "run_id": run.id,
        "schedule_id": "etl",
        "pipeline": "etl",
        "task": "alert",
        "parent_run_id": "etl@20270101T000000Z",
    }
    assert verify_webhook(request.headers, request.body, [SECRET], datetime.now(UTC)) == body["id"]


async def test_message_to_slack_escapes_what_comes_from_the_run(notifier: Notifier) -> None:
    run = _task_run()
    with serve() as sink:
        config = WebhookSink(type="webhook", url=f"{sink.url}/services/T/B/x", format="slack")
        text = "<!here> *{task}* failed & {param.note} {param.flags}"
        assert await notifier.send_message(config, text, run) is None
        [request] = sink.requests
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == f"{run.id}/message"
    # The author's own markup stays markup; a param cannot mention the channel.
    assert json.loads(request.body) == {
        "text": '<!here> *alert* failed & &lt;!channel&gt; {"full": true}'
    }


async def test_message_failure_is_one_line_naming_the_sink(notifier: Notifier) -> None:
    run = _task_run()
    with serve(status=500) as sink:
        config = WebhookSink(
            type="webhook", url=f"{sink.url}/services/T/B/TOKENPATH", format="slack"
        )
        error = await notifier.send_message(config, "hi", run)
    assert error is not None
    assert "500" in error
    assert "TOKENPATH" not in error
    assert "\n" not in error
    closed = WebhookSink(type="webhook", url=f"http://127.0.0.1:{closed_port()}/m")
    error = await notifier.send_message(closed, "hi", run)
    assert error is not None
    assert "connection failed" in error


async def test_message_to_a_private_webhook_is_refused_without_allow_private() -> None:
    notifier = Notifier(Settings(allow_private_targets=False))
    try:
        with serve() as sink:
            config = WebhookSink(type="webhook", url=f"{sink.url}/m")
            error = await notifier.send_message(config, "hi", _task_run())
            assert sink.received == 0
    finally:
        await notifier.aclose()
    assert error is not None
    assert "refused" in error


async def test_message_to_log_is_one_info_line_even_with_the_event_log_off(
    capsys: pytest.CaptureFixture[str],
) -> None:
    notifier = Notifier(Settings(event_log=False))
    run = _task_run()
    try:
        text = "line one\nline two for {param.day}"
        assert await notifier.send_message(LogSink(type="log"), text, run) is None
    finally:
        await notifier.aclose()
    entry = _logged(capsys)
    assert entry["severity"] == "INFO"
    assert entry["message"] == "line one\nline two for 2027-01-01"
    assert entry["logging.googleapis.com/labels"] == {
        "schedule_id": "etl",
        "run_id": run.id,
        "event_type": "message",
        "pipeline": "etl",
        "task": "alert",
        "label.team": "data",
    }
    assert entry["cloudevent"]["type"] == MESSAGE_TYPE
    assert entry["cloudevent"]["data"]["text"] == entry["message"]


def test_message_pubsub_attributes_are_those_of_its_cloudevent() -> None:
    run = _task_run()
    ce = message_cloudevent("hi", run, WHEN)
    assert _ce_attributes(ce) == {
        "ce-specversion": "1.0",
        "ce-id": f"{run.id}/message",
        "ce-source": "//firecron/schedules/etl",
        "ce-type": MESSAGE_TYPE,
        "ce-subject": run.id,
        "ce-time": "2027-01-01T00:05:00Z",
        "content-type": "application/json",
    }


@pytest.mark.emulator
async def test_message_publishes_to_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.cloud.pubsub_v1 as pubsub_v1

    with emulator_or_skip("pubsub") as host:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
        topic = f"projects/{EMULATOR_PROJECT}/topics/firecron-messages"
        subscription = f"projects/{EMULATOR_PROJECT}/subscriptions/firecron-messages-test"
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        notifier = Notifier(Settings())
        try:
            publisher.create_topic(request={"name": topic})
            subscriber.create_subscription(request={"name": subscription, "topic": topic})
            run = _task_run()
            sink = PubSubSink(type="pubsub", topic=topic)
            assert await notifier.send_message(sink, "rows: {param.rows}", run) is None
            [received] = _pull(subscriber, subscription, 1)
            message = received.message
            assert json.loads(message.data.decode()) == {
                "text": "rows: 3",
                "run_id": run.id,
                "schedule_id": "etl",
                "pipeline": "etl",
                "task": "alert",
                "parent_run_id": "etl@20270101T000000Z",
            }
            attributes = dict(message.attributes)
            assert attributes["ce-type"] == MESSAGE_TYPE
            assert attributes["ce-id"] == f"{run.id}/message"
            assert attributes["ce-subject"] == run.id

            missing = PubSubSink(type="pubsub", topic=f"projects/{EMULATOR_PROJECT}/topics/nope")
            error = await notifier.send_message(missing, "hi", run)
            assert error is not None
            assert "topics/nope" in error
            assert "\n" not in error
        finally:
            await notifier.aclose()
            subscriber.close()
            publisher.transport.close()
