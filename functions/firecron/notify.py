"""Notification sinks: deliver one :class:`~firecron.core.events.Event` to one routed sink.

The event model (ids, routing, retry bookkeeping) is pure and lives in
:mod:`firecron.core.events`; this module only does the I/O of one try. Contract of
:meth:`Notifier.deliver`: it returns None when the sink acknowledged the event and
otherwise a one-line error (never a secret, a URL query string or a Slack webhook
path), and it never raises for a sink's failure. Cancellation propagates.

Sinks:

- ``webhook`` / ``cloudevents``: a POST of the CloudEvents 1.0 structured-mode JSON
  (``application/cloudevents+json``, built with the ``cloudevents`` package), signed
  like dispatches (Standard Webhooks, ``webhook-id`` = the event id). Any 2xx is an
  acknowledgement; anything else, a timeout or a connection error is a failure.
  Redirects are never followed.
- ``webhook`` / ``slack``: a POST of ``{"text": slack_text(event)}`` (``application/json``),
  signed too (harmless, Slack ignores the headers).
- ``pubsub``: a message whose data is the event data as JSON, with the CloudEvents
  Pub/Sub binary-mode attributes (``ce-specversion``, ``ce-id``, ``ce-source``,
  ``ce-type``, ``ce-subject``, ``ce-time``, ``content-type``). Acknowledged when the
  publish future resolves within ``timeout``.
- ``log``: one JSON line on stdout in Cloud Logging's structured format (:meth:`Notifier.log`).
- ``pagerduty``: Events API v2 events (:func:`pagerduty_events`), POSTed as JSON by the
  same sender as webhooks (unsigned: PagerDuty authenticates by the routing key in the
  body). ``run.failed``, ``run.lost``, ``run.timed_out`` and ``run.sla_breached``
  trigger the incident ``firecron/{schedule_id}/{type}``; ``run.succeeded`` resolves the
  schedule's incidents of every type the route triggers on (one request each; resolving
  a key with no open incident does nothing). Acknowledged when every request got a 2xx
  (PagerDuty answers ``202``).
- ``email``: a plain-text message (:func:`email_message`) over SMTP, always upgraded
  with STARTTLS before logging in or sending (a server without it is a failure, so the
  password never travels in clear), certificates verified against the default store
  plus ``FIRECRON_CA_FILE``. Acknowledged when the server accepted the message for at
  least one recipient (the refused ones are logged: a retry would resend to the others).
  Its ``Message-ID`` derives from the event id, so a retry after a lost
  acknowledgement is the same message to a receiver that deduplicates.

The secrets of ``pagerduty`` and ``email`` are read from ``settings.secret_env`` under
the names the sink gives; a missing one is a failed try naming the variable (retried
like any other failure, as the variable may be fixed by a redeploy).

:meth:`Notifier.send_message` sends a ``notify`` run's message through the same code
paths, with the same contract: a CloudEvent of type ``dev.firecron.message`` (webhook,
Pub/Sub, log) or a Slack ``{"text": ...}``; see :func:`message_data`.

Webhooks are sent by a :class:`~firecron.transport.sender.Sender`, the code that sends
dispatches: the same SSRF guard, the request sent to the exact address the guard
approved (host name kept for ``Host``, SNI and certificate checks) on a new connection,
so DNS rebinding between check and connect is impossible, the same HTTP/1.1 client
and ``user-agent``. ``timeout`` bounds each try as a whole (DNS, connect, TLS, write
and the status line); the response body is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import logging
import smtplib
import socket
import sys
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote, urlsplit

from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent

from firecron.core.events import (
    CE_TYPE_PREFIX,
    PAGERDUTY_TRIGGERS,
    EmailSink,
    Event,
    EventType,
    LogSink,
    PagerDutySink,
    PubSubSink,
    Route,
    SinkConfig,
    WebhookSink,
    cloudevent,
    pagerduty_dedup_key,
)
from firecron.core.lifecycle import SendOutcome
from firecron.core.messages import render_message
from firecron.core.render import one_line, rfc3339
from firecron.core.runs import Run
from firecron.errors import TargetRefusedError
from firecron.settings import Settings
from firecron.transport.guard import redact_url, resolve_host
from firecron.transport.sender import Dispatch, Sender, shared_tls, user_agent
from firecron.transport.signing import signature_headers

__all__ = [
    "MESSAGE_TYPE",
    "Notifier",
    "email_message",
    "log_entry",
    "log_severity",
    "message_cloudevent",
    "message_data",
    "message_log_entry",
    "pagerduty_events",
    "pubsub_attributes",
    "slack_text",
]

log = logging.getLogger("firecron.notify")

MESSAGE_TYPE = CE_TYPE_PREFIX + "message"
"""The CloudEvents ``type`` of a ``notify`` run's message."""

_ERROR_TYPES = frozenset(
    {
        EventType.run_failed,
        EventType.run_lost,
        EventType.run_timed_out,
        EventType.dispatch_failed,
        EventType.schedule_error,
        EventType.dispatcher_clock_skew,
    }
)
_WARNING_TYPES = frozenset(
    {
        EventType.run_sla_breached,
        EventType.run_retrying,
        EventType.run_missed,
        EventType.run_skipped,
    }
)
_MAX_ERROR = 300
# Limits of a Notifier's own sender. Deliveries come a few per run; the limits only
# keep a burst (a watchdog pass over many runs) from opening sockets without bound.
_WEBHOOK_CONCURRENCY = 64
_WEBHOOK_MAX_OPEN = 1024


def log_severity(event_type: EventType) -> str:
    """Cloud Logging severity of an event type: ``ERROR``, ``WARNING`` or ``INFO``."""
    if event_type in _ERROR_TYPES:
        return "ERROR"
    if event_type in _WARNING_TYPES:
        return "WARNING"
    return "INFO"


def _summary(event: Event) -> str:
    """One human line about ``event``; never the params (they may hold anything)."""
    d = event.data
    if event.type in (EventType.schedule_error, EventType.dispatcher_clock_skew):
        # About a schedule or the dispatcher, not a run: no attempt to show.
        return " ".join(f"{event.type.value}: {event.subject}: {d.get('error')}".split())
    text = (
        f"{event.type.value}: schedule {d.get('schedule_id')} run {event.subject}"
        f" {d.get('state')} (attempt {d.get('attempt')} of {d.get('max_attempts')})"
    )
    if event.type is EventType.run_sla_breached and d.get("expected_duration_s") is not None:
        text += f": expected to take {d['expected_duration_s']}s"
    if d.get("error"):
        text += f": {d['error']}"
    return " ".join(text.split())


def log_entry(event: Event, *, trace: str | None = None) -> dict[str, Any]:
    """The Cloud Logging structured entry of ``event`` (what :meth:`Notifier.log` prints).

    Keys: ``severity``, ``message`` (one line, without params),
    ``logging.googleapis.com/labels`` (``schedule_id``, ``run_id``, ``event_type`` and
    the run's labels as ``label.<key>``), ``logging.googleapis.com/trace`` when
    ``trace`` is given, and ``cloudevent`` (the full :func:`cloudevent` object).
    """
    run_labels = event.data.get("labels") or {}
    labels = {
        "schedule_id": str(event.data.get("schedule_id", "")),
        "run_id": event.subject,
        "event_type": event.type.value,
        **{f"label.{k}": str(v) for k, v in run_labels.items()},
    }
    entry: dict[str, Any] = {
        "severity": log_severity(event.type),
        "message": _summary(event),
        "logging.googleapis.com/labels": labels,
    }
    if trace:
        entry["logging.googleapis.com/trace"] = trace
    entry["cloudevent"] = cloudevent(event)
    return entry


def pubsub_attributes(event: Event) -> dict[str, str]:
    """The CloudEvents Pub/Sub binary-mode attributes of ``event``."""
    return _ce_attributes(cloudevent(event))


def _ce_attributes(ce: dict[str, Any]) -> dict[str, str]:
    """The Pub/Sub binary-mode attributes of the structured CloudEvent ``ce``."""
    attributes = {
        f"ce-{name}": str(ce[name])
        for name in ("specversion", "id", "source", "type", "subject", "time")
    }
    attributes["content-type"] = str(ce["datacontenttype"])
    return attributes


def _structured(ce: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """Headers and body of the structured-mode CloudEvent ``ce``, built by the cloudevents SDK."""
    ce = dict(ce)
    data = ce.pop("data")
    headers, body = to_structured(CloudEvent(ce, data))
    return dict(headers), body


_EMOJI = {
    EventType.run_succeeded: ":white_check_mark:",
    EventType.run_started: ":arrow_forward:",
    EventType.run_sla_breached: ":hourglass:",
    EventType.run_skipped: ":fast_forward:",
    EventType.run_missed: ":zzz:",
    EventType.run_retrying: ":repeat:",
}


def _slack_escaped(value: object) -> str:
    """``value`` as Slack text that shows it literally: ``&``, ``<`` and ``>`` as entities.

    Slack reads ``<...>`` as a mention or link (``<!channel>``, ``<https://x|click>``);
    its "Escaping text" rule is to replace exactly these three, ``&`` first.
    """
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(event: Event) -> str:
    """A readable Slack message: schedule, state, error, and the command to inspect the run.

    Every piece taken from the event is escaped (:func:`_slack_escaped`), so an error
    message or an id can neither mention anyone nor make a link; only the message's own
    formatting (emoji, bold, code, the quote of the error) is Slack markup.
    """
    d = {k: _slack_escaped(v) for k, v in event.data.items() if v is not None}
    subject = _slack_escaped(event.subject)
    if event.type is EventType.schedule_error:
        lines = [f":rotating_light: *{event.type.value}*: schedule `{subject}` could not be fired"]
        lines.extend(f"> {line}" for line in d.get("error", "").splitlines())
        lines.append(f"Inspect: `firecron show {subject}`")
        return "\n".join(lines)
    lines = [
        f"{_EMOJI.get(event.type, ':rotating_light:')} *{event.type.value}*: schedule `{d['schedule_id']}`"
        f" run `{subject}` is *{d['state']}* (attempt {d['attempt']} of {d['max_attempts']})",
    ]
    if event.data.get("error"):
        # Every line of the error is quoted, so a newline in it cannot end the quote.
        lines.extend(f"> {line}" for line in d["error"].splitlines())
    if event.type is EventType.run_sla_breached and "expected_duration_s" in d:
        lines.append(f"Expected to take {d['expected_duration_s']}s; still running.")
    lines.append(f"Inspect: `firecron run {subject}`")
    return "\n".join(lines)


_PD_SUMMARY = 1024  # PagerDuty truncates a longer payload.summary; cut it ourselves
_PD_SEVERITY = {EventType.run_sla_breached: "warning"}
"""PagerDuty severity by trigger type; the others are ``error``."""


def run_link(console_url: str | None, run_id: str) -> str | None:
    """The console page of ``run_id`` (``{console_url}/runs/{id}``), or None without a console."""
    # @ and : are legal in a path segment (RFC 3986 pchar): ids stay readable.
    return f"{console_url}/runs/{quote(run_id, safe='@:')}" if console_url else None


def pagerduty_events(
    event: Event, route: Route, routing_key: str, console_url: str | None
) -> list[dict[str, Any]]:
    """The Events API v2 bodies that deliver ``event`` on the PagerDuty ``route``.

    A trigger type (:data:`~firecron.core.events.PAGERDUTY_TRIGGERS`) gives one
    ``trigger`` of the incident ``pagerduty_dedup_key(schedule, type)``: its
    ``payload`` has the one-line ``summary`` (never the params), ``source``
    (``firecron/{schedule_id}``), ``severity`` (``warning`` for an SLA breach, else
    ``error``), ``timestamp``, ``component`` (the schedule), ``class`` (the event type)
    and ``custom_details`` (run, attempt, state, error, labels); ``links`` holds the run's
    console page when there is a console. ``run.succeeded`` gives one ``resolve`` per
    trigger type of the route. Any other type gives nothing (the route does not take it).
    """
    schedule_id = str(event.data.get("schedule_id", ""))
    if event.type is EventType.run_succeeded:
        return [
            {
                "routing_key": routing_key,
                "event_action": "resolve",
                "dedup_key": pagerduty_dedup_key(schedule_id, kind),
            }
            for kind in route.pagerduty_triggers
        ]
    if event.type not in PAGERDUTY_TRIGGERS:
        return []
    details = {
        key: event.data.get(key)
        for key in ("run_id", "scheduled_for", "attempt", "max_attempts", "state", "error")
    }
    details["labels"] = dict(event.data.get("labels") or {})
    return [
        _pagerduty_trigger(
            routing_key,
            pagerduty_dedup_key(schedule_id, event.type),
            summary=_summary(event),
            schedule_id=schedule_id,
            kind=event.type.value,
            severity=_PD_SEVERITY.get(event.type, "error"),
            time=event.time,
            details=details,
            link=run_link(console_url, event.subject),
        )
    ]


def _pagerduty_trigger(
    routing_key: str,
    dedup_key: str,
    *,
    summary: str,
    schedule_id: str,
    kind: str,
    severity: str,
    time: datetime,
    details: dict[str, Any],
    link: str | None,
) -> dict[str, Any]:
    """One Events API v2 ``trigger`` body about ``schedule_id`` (``kind`` is its class)."""
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "client": "firecron",
        "payload": {
            "summary": one_line(summary, _PD_SUMMARY),
            "source": f"firecron/{schedule_id}",
            "severity": severity,
            "timestamp": rfc3339(time),
            "component": schedule_id,
            "class": kind,
            "custom_details": details,
        },
    }
    if link is not None:
        body["client_url"] = link
        body["links"] = [{"href": link, "text": "The run in the firecron console"}]
    return body


def _message_id(key: str) -> str:
    """A ``Message-ID`` that is the same for every try of ``key`` (an event or message id)."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@firecron>"


def email_message(
    sink: EmailSink, event: Event, console_url: str | None, now: datetime
) -> EmailMessage:
    """The plain-text email of ``event``: subject ``[firecron] {type}: {schedule}``, a body
    naming the schedule, the run, its state and attempt, the error (every line of it) and
    a link to the run in the console (or the ``firecron run`` command without one).
    Never the params. ``Message-ID`` derives from the event id (see :func:`_message_id`).
    """
    d = event.data
    schedule_id = str(d.get("schedule_id") or event.subject)
    lines = [
        _summary(event),  # "run.failed: schedule ... run ... failed (attempt ...): error"
        "",
        f"Schedule: {schedule_id}",
    ]
    if event.type is not EventType.schedule_error:
        lines += [
            f"Run:      {event.subject}",
            f"State:    {d.get('state')} (attempt {d.get('attempt')} of {d.get('max_attempts')})",
        ]
        if d.get("scheduled_for"):
            lines.append(f"Scheduled for: {d['scheduled_for']}")
    lines.append(f"Time:     {rfc3339(event.time)}")
    if d.get("error"):
        lines += ["", "Error:", *(f"  {line}" for line in str(d["error"]).splitlines())]
    lines.append("")
    link = (
        run_link(console_url, event.subject) if event.type is not EventType.schedule_error else None
    )
    if link is not None:
        lines.append(f"Open the run: {link}")
    elif event.type is EventType.schedule_error:
        lines.append(f"Inspect: firecron show {schedule_id}")
    else:
        lines.append(f"Inspect: firecron run {event.subject}")
    return _email(
        sink,
        f"[firecron] {event.type.value}: {schedule_id}",
        "\n".join(lines) + "\n",
        event.id,
        now,
    )


def _email(sink: EmailSink, subject: str, body: str, key: str, now: datetime) -> EmailMessage:
    """An ``EmailMessage`` from ``sink.from_`` to ``sink.to``, ``Message-ID`` from ``key``."""
    message = EmailMessage()
    # One line: a newline in a header value would start another header.
    message["Subject"] = one_line(subject, 200)
    message["From"] = sink.from_
    message["To"] = ", ".join(sink.to)
    message["Date"] = format_datetime(now)
    message["Message-ID"] = _message_id(key)
    message.set_content(body)
    return message


def message_data(text: str, run: Run) -> dict[str, Any]:
    """The data of a message's CloudEvent: the rendered ``text`` and where it comes from.

    Keys: ``text``, ``run_id``, ``schedule_id``, ``pipeline``, ``task`` and
    ``parent_run_id`` (None outside a pipeline). Never the params: a message shows
    those the author chose to put in ``text``.
    """
    return {
        "text": text,
        "run_id": run.id,
        "schedule_id": run.schedule_id,
        "pipeline": run.pipeline,
        "task": run.task,
        "parent_run_id": run.parent_run_id,
    }


def message_cloudevent(text: str, run: Run, time: datetime) -> dict[str, Any]:
    """The structured CloudEvent of ``run``'s message (``text`` already rendered).

    Its ``id`` is ``{run_id}/message``, the same for every attempt, so a receiver that
    got a message whose acknowledgement was lost can drop the retry by id.
    """
    return {
        "specversion": "1.0",
        "id": f"{run.id}/message",
        "source": f"//firecron/schedules/{run.schedule_id}",
        "type": MESSAGE_TYPE,
        "subject": run.id,
        "time": rfc3339(time),
        "datacontenttype": "application/json",
        "data": message_data(text, run),
    }


def message_log_entry(ce: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The Cloud Logging entry of a message's CloudEvent ``ce`` (severity ``INFO``).

    ``message`` is the text itself; the labels are those of :func:`log_entry` with
    ``event_type`` ``message``, plus ``pipeline`` and ``task`` on a task's message.
    """
    data = ce["data"]
    entry_labels = {
        "schedule_id": str(data["schedule_id"]),
        "run_id": str(data["run_id"]),
        "event_type": "message",
        **{key: str(data[key]) for key in ("pipeline", "task") if data.get(key) is not None},
        **{f"label.{k}": str(v) for k, v in labels.items()},
    }
    return {
        "severity": "INFO",
        "message": data["text"],
        "logging.googleapis.com/labels": entry_labels,
        "cloudevent": ce,
    }


def _origin(url: str) -> str:
    """Scheme, host and port only: a Slack webhook's path is its secret."""
    parts = urlsplit(redact_url(url))
    return f"{parts.scheme}://{parts.netloc}/..." if parts.netloc else "<invalid url>"


def _scrub(text: str, url: str, shown: str) -> str:
    """``text`` with any spelling of ``url`` replaced by ``shown`` (messages may echo it)."""
    for spelled in (url, redact_url(url)):
        if spelled and spelled != shown:
            text = text.replace(spelled, shown)
    # When ``shown`` hides the path (Slack), it must not leak through the pinned URL either.
    path = urlsplit(url).path
    if len(path) > 1 and path not in shown:
        text = text.replace(path, "/...")
    return one_line(text, _MAX_ERROR)


class _PinnedSMTP(smtplib.SMTP):
    """An SMTP client that connects to the address the SSRF guard approved, not to a fresh
    lookup of the name (which could be rebound to a private address), while STARTTLS
    still sends and verifies the host name (smtplib keeps it from the constructor)."""

    def __init__(self, address: str, host: str, port: int, timeout: float) -> None:
        self._address = address
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._address, port), timeout, self.source_address)


class Notifier:
    """Delivers events to sinks. Never raises for a sink's failure: returns the error line.

    One ``Notifier`` serves one event loop; create it per process (or per request) and
    :meth:`aclose` it. Constructing one does no I/O: the Pub/Sub publisher is created
    on first use, and so is the TLS context of the webhook ``sender``. ``sender``
    replaces the default one (its limits and TLS context; ``timeout`` still bounds
    each try).
    """

    def __init__(
        self, settings: Settings, *, timeout: float = 3.0, sender: Sender | None = None
    ) -> None:
        self._settings = settings
        self._timeout = timeout
        # Its own timeouts never fire first: deliver() bounds the whole try by
        # ``timeout``. The limits only cap a burst; every try still ends by ``timeout``.
        self._sender = sender or Sender(
            concurrency=_WEBHOOK_CONCURRENCY,
            max_open=_WEBHOOK_MAX_OPEN,
            ack_timeout=timeout,
            connect_timeout=timeout,
            allow_private_targets=settings.allow_private_targets,
            # A webhook behind the same private CA as the targets is trusted alike.
            ca_file=settings.ca_file,
        )
        self._publisher: Any = None
        self._publisher_lock = asyncio.Lock()

    async def deliver(self, event: Event, route: Route) -> str | None:
        """Try ``event`` once on ``route``'s sink: None when acknowledged, else one error line."""
        sink = route.sink
        try:
            if isinstance(sink, LogSink):
                self.log(event)
                return None
            if isinstance(sink, WebhookSink):
                return await self._webhook(event, sink)
            if isinstance(sink, PubSubSink):
                return await self._pubsub(event, sink)
            if isinstance(sink, PagerDutySink):
                return await self._pagerduty(event, route, sink)
            if isinstance(sink, EmailSink):
                now = datetime.now(UTC)
                message = email_message(sink, event, self._settings.console_url, now)
                return await self._smtp(route.sink_name, sink, message)
        except Exception as exc:  # the contract: a sink's failure is a value, never raised
            return one_line(f"sink {route.sink_name}: {type(exc).__name__}: {exc}", _MAX_ERROR)
        return f"sink {route.sink_name}: unknown sink type"  # pragma: no cover

    async def send_message(self, sink: SinkConfig, text: str, run: Run) -> str | None:
        """Send ``run``'s message once through ``sink``: None when acknowledged, else one
        error line (the contract of :meth:`deliver`: a sink's failure is never raised).

        ``text`` is the message as written (``notify.text``); it is rendered here with
        :func:`~firecron.core.messages.render_message`, so a Slack sink escapes what
        comes from the run and nothing else. Per sink: a webhook gets the CloudEvent
        :func:`message_cloudevent` (signed, ``webhook-id`` = its id) or, ``slack``,
        ``{"text": ...}``; Pub/Sub gets its data as JSON with the ``ce-*`` attributes;
        the log gets :func:`message_log_entry`; an email sink sends the text as the body
        (subject ``[firecron] message: {schedule}``); a PagerDuty sink triggers an
        incident whose summary is the text, keyed ``firecron/{run_id}/message`` (a page:
        nothing resolves it but a person). The log line is printed even when the
        event log is off (``FIRECRON_EVENT_LOG=0``): it is what the run was asked to
        do, not a report about a run.
        """
        name = run.target.notify.sink if run.target.notify is not None else sink.type
        try:
            if isinstance(sink, WebhookSink) and sink.format == "slack":
                body = json.dumps(
                    {"text": render_message(text, run, escape=_slack_escaped)},
                    ensure_ascii=False,
                ).encode()
                return await self._post(
                    sink, body, {"content-type": "application/json"}, f"{run.id}/message"
                )
            ce = message_cloudevent(render_message(text, run), run, datetime.now(UTC))
            if isinstance(sink, LogSink):
                self._print(message_log_entry(ce, run.labels))
                return None
            if isinstance(sink, WebhookSink):
                headers, body = _structured(ce)
                return await self._post(sink, body, headers, ce["id"])
            if isinstance(sink, PubSubSink):
                return await self._publish(sink.topic, ce["data"], _ce_attributes(ce))
            if isinstance(sink, PagerDutySink):
                return await self._pagerduty_message(name, sink, ce["data"]["text"], run)
            if isinstance(sink, EmailSink):
                subject = f"[firecron] message: {run.schedule_id}"
                message = _email(
                    sink, subject, ce["data"]["text"] + "\n", ce["id"], datetime.now(UTC)
                )
                return await self._smtp(name, sink, message)
        except Exception as exc:  # the contract: a sink's failure is a value, never raised
            return one_line(f"sink {name}: {type(exc).__name__}: {exc}", _MAX_ERROR)
        return f"sink {name}: unknown sink type"  # pragma: no cover

    def log(self, event: Event, *, trace: str | None = None) -> None:
        """Print ``event`` as ONE JSON line on stdout in Cloud Logging's structured format.

        See :func:`log_entry` for the keys. JSON escapes newlines, so an error with a
        line break still yields one line (one log entry).
        """
        if not self._settings.event_log:
            return  # turned off (firecron dev shows every run in its own view)
        self._print(log_entry(event, trace=trace))

    @staticmethod
    def _print(entry: dict[str, Any]) -> None:
        """One log entry as one JSON line on stdout (where Cloud Logging reads it)."""
        line = json.dumps(entry, ensure_ascii=False, default=str)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def aclose(self) -> None:
        """Close the webhook sender and stop the publisher (flushing what it holds)."""
        await self._sender.aclose()
        if self._publisher is not None:
            publisher, self._publisher = self._publisher, None

            def stop() -> None:
                # Best effort: a publisher that cannot flush must not fail shutdown.
                with contextlib.suppress(Exception):
                    publisher.stop()
                with contextlib.suppress(Exception):
                    publisher.transport.close()

            await asyncio.to_thread(stop)

    # -- webhook ---------------------------------------------------------------

    async def _webhook(self, event: Event, sink: WebhookSink) -> str | None:
        if sink.format == "slack":
            body = json.dumps({"text": slack_text(event)}, ensure_ascii=False).encode()
            headers = {"content-type": "application/json"}
        else:
            headers, body = _structured(cloudevent(event))
        return await self._post(sink, body, headers, event.id)

    async def _post(
        self, sink: WebhookSink, body: bytes, headers: dict[str, str], key: str
    ) -> str | None:
        """POST ``body`` to the webhook, signed with ``key`` as ``webhook-id``: one try."""
        url = sink.url
        shown = _origin(url) if sink.format == "slack" else redact_url(url)
        headers = {k.lower(): v for k, v in headers.items()}
        headers["user-agent"] = user_agent()
        headers.update(
            signature_headers(key, datetime.now(UTC), body, self._settings.signing_secrets)
        )
        return await self._send_once(
            Dispatch(url=url, body=body, headers=headers, key=key), "webhook", shown
        )

    async def _send_once(self, post: Dispatch, kind: str, shown: str) -> str | None:
        """One try of ``post`` through the sender: None when it got a 2xx, else one line
        naming ``kind`` and ``shown`` (the URL as it may be shown), never the URL's secrets."""
        try:
            # One bound for everything: waiting for a slot, DNS, connect, TLS, write and
            # the status line.
            async with asyncio.timeout(self._timeout):
                result = await self._sender.send(post, label=f"{kind} {shown}")
        except TimeoutError:
            return f"{kind} {shown}: no response within {self._timeout:g}s"
        if result.outcome is SendOutcome.acknowledged:
            return None
        return _scrub(result.error or f"{kind} {shown}: failed", post.url, shown)

    # -- pagerduty -------------------------------------------------------------

    def _secret(self, sink_name: str, what: str, env_name: str) -> str:
        """The secret under ``env_name`` in the startup environment; raises a one-line
        :class:`LookupError` naming the variable (never a value) when it is unset."""
        value = self._settings.secret_env.get(env_name, "").strip()
        if not value:
            raise LookupError(f"sink {sink_name}: {what} {env_name} is not set")
        return value

    async def _pagerduty(self, event: Event, route: Route, sink: PagerDutySink) -> str | None:
        """Send every Events API body of ``event`` (:func:`pagerduty_events`), one try each."""
        try:
            key = self._secret(route.sink_name, "routing_key_env", sink.routing_key_env)
        except LookupError as exc:
            return str(exc)
        bodies = pagerduty_events(event, route, key, self._settings.console_url)
        return await self._pagerduty_send(sink, bodies, event.id)

    async def _pagerduty_message(
        self, name: str, sink: PagerDutySink, text: str, run: Run
    ) -> str | None:
        """Trigger an incident whose summary is a ``notify`` run's message ``text``."""
        try:
            key = self._secret(name, "routing_key_env", sink.routing_key_env)
        except LookupError as exc:
            return str(exc)
        body = _pagerduty_trigger(
            key,
            f"firecron/{run.id}/message",
            summary=text,
            schedule_id=run.schedule_id,
            kind="message",
            severity="error",
            time=datetime.now(UTC),
            details={"text": text, "run_id": run.id},
            link=run_link(self._settings.console_url, run.id),
        )
        return await self._pagerduty_send(sink, [body], f"{run.id}/message")

    async def _pagerduty_send(
        self, sink: PagerDutySink, bodies: list[dict[str, Any]], key: str
    ) -> str | None:
        """POST each body (concurrently): None when every one got a 2xx, else the first error.

        A resolve that failed is sent again with the others on the next try: resolving
        twice, like resolving an incident that is not open, does nothing at PagerDuty.
        """
        shown = redact_url(sink.url)
        headers = {"content-type": "application/json", "user-agent": user_agent()}

        def post(body: dict[str, Any]) -> Dispatch:
            data = json.dumps(body, ensure_ascii=False).encode()
            return Dispatch(url=sink.url, body=data, headers=dict(headers), key=key)

        errors = await asyncio.gather(
            *(self._send_once(post(body), "pagerduty", shown) for body in bodies)
        )
        return next((e for e in errors if e is not None), None)

    # -- email -----------------------------------------------------------------

    async def _smtp(self, name: str, sink: EmailSink, message: EmailMessage) -> str | None:
        """Send ``message`` through ``sink``'s server once: STARTTLS first, then log in
        (with ``password_env``) and send. Each network step is bounded by ``timeout``."""
        password = None
        if sink.password_env is not None:
            try:
                password = self._secret(name, "password_env", sink.password_env)
            except LookupError as exc:
                return str(exc)
        shown = f"email {sink.host}:{sink.port}"
        try:
            async with asyncio.timeout(self._timeout):
                addresses = await resolve_host(
                    sink.host, sink.port, allow_private=self._settings.allow_private_targets
                )
        except TargetRefusedError as exc:
            return one_line(f"email: {exc}", _MAX_ERROR)
        except (OSError, TimeoutError) as exc:
            return one_line(f"{shown}: cannot resolve: {type(exc).__name__}: {exc}", _MAX_ERROR)
        context, _ = shared_tls(self._settings.ca_file)
        timeout = self._timeout

        def send() -> dict[str, tuple[int, bytes]]:
            # smtplib is blocking: a thread, with every socket step bounded by ``timeout``.
            with _PinnedSMTP(addresses[0], sink.host.strip("[]"), sink.port, timeout) as smtp:
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
                smtp.starttls(context=context)
                smtp.ehlo()
                if password is not None:
                    smtp.login(sink.username or sink.from_, password)
                # Raises when every recipient is refused; returns those refused otherwise.
                return smtp.send_message(message, from_addr=sink.from_, to_addrs=list(sink.to))

        try:
            refused = await asyncio.to_thread(send)
        except (OSError, smtplib.SMTPException) as exc:
            # smtplib's messages hold the server's replies, never the password.
            return one_line(f"{shown}: {type(exc).__name__}: {exc}", _MAX_ERROR)
        if refused:
            # The others have it: a retry would send it to them again, so this counts as
            # delivered and the refused addresses are logged (a typo is fixed in the file).
            log.warning(
                "email %s:%s refused %s: %s",
                sink.host,
                sink.port,
                ", ".join(sorted(refused)),
                one_line(str(refused), _MAX_ERROR),
            )
        return None

    # -- pubsub ----------------------------------------------------------------

    async def _publisher_client(self) -> Any:
        async with self._publisher_lock:
            if self._publisher is None:
                # Imported and built on first use: grpc is heavy, and finding credentials
                # may query the metadata server, which must not block the event loop.
                pubsub_v1 = importlib.import_module("google.cloud.pubsub_v1")
                self._publisher = await asyncio.to_thread(pubsub_v1.PublisherClient)
            return self._publisher

    async def _pubsub(self, event: Event, sink: PubSubSink) -> str | None:
        return await self._publish(sink.topic, event.data, pubsub_attributes(event))

    async def _publish(
        self, topic: str, data: dict[str, Any], attributes: dict[str, str]
    ) -> str | None:
        """Publish ``data`` as JSON with ``attributes``: one try, acknowledged or an error."""
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            publisher = await self._publisher_client()
            future = publisher.publish(topic, payload, **attributes)
            await asyncio.to_thread(future.result, self._timeout)
        except TimeoutError:
            return f"pubsub {topic}: not acknowledged within {self._timeout:g}s"
        except Exception as exc:  # google.api_core / grpc errors, translated to one line
            return one_line(f"pubsub {topic}: {type(exc).__name__}: {exc}", _MAX_ERROR)
        return None
