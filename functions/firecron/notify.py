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

Webhook URLs pass the SSRF guard (:func:`~firecron.transport.guard.resolve_target`)
and the request is sent to the exact address the guard approved (host name kept for
``Host``, SNI and certificate checks) on a new connection, so DNS rebinding between
check and connect is impossible (the same pinning as the dispatch sender).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import socket
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent

from firecron.core.events import (
    Event,
    EventType,
    LogSink,
    PubSubSink,
    Route,
    WebhookSink,
    cloudevent,
    slack_text,
)
from firecron.errors import TargetRefusedError
from firecron.settings import Settings
from firecron.transport.guard import ResolvedTarget, redact_url, resolve_target
from firecron.transport.signing import signature_headers

__all__ = ["Notifier", "log_entry", "log_severity", "pubsub_attributes"]

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


def log_severity(event_type: EventType) -> str:
    """Cloud Logging severity of an event type: ``ERROR``, ``WARNING`` or ``INFO``."""
    if event_type in _ERROR_TYPES:
        return "ERROR"
    if event_type in _WARNING_TYPES:
        return "WARNING"
    return "INFO"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


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
    ce = cloudevent(event)
    attributes = {
        f"ce-{name}": str(ce[name])
        for name in ("specversion", "id", "source", "type", "subject", "time")
    }
    attributes["content-type"] = str(ce["datacontenttype"])
    return attributes


def _structured(event: Event) -> tuple[dict[str, str], bytes]:
    """Headers and body of the structured-mode CloudEvent, built by the cloudevents SDK."""
    ce = cloudevent(event)
    data = ce.pop("data")
    headers, body = to_structured(CloudEvent(ce, data))
    return dict(headers), body


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
    return _one_line(text)


def _pinned_request(
    target: ResolvedTarget, headers: dict[str, str]
) -> tuple[str, dict[str, str], dict[str, Any]]:
    # Connect to the approved address, not the name: a second lookup could be rebound.
    # The host name stays in Host and is the TLS SNI / certificate name.
    address = target.addresses[0]
    host = f"[{address}]" if ":" in address else address
    url = f"{target.scheme}://{host}:{target.port}{target.target}"
    return url, {**headers, "host": target.host_header}, {"sni_hostname": target.host}


class Notifier:
    """Delivers events to sinks. Never raises for a sink's failure: returns the error line.

    One ``Notifier`` serves one event loop; create it per process (or per request) and
    :meth:`aclose` it. The HTTP client and the Pub/Sub publisher are created on first
    use, so constructing a ``Notifier`` does no I/O.
    """

    def __init__(self, settings: Settings, *, timeout: float = 3.0) -> None:
        self._settings = settings
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
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
        except Exception as exc:  # the contract: a sink's failure is a value, never raised
            return _one_line(f"sink {route.sink_name}: {type(exc).__name__}: {exc}")
        return f"sink {route.sink_name}: unknown sink type"  # pragma: no cover

    def log(self, event: Event, *, trace: str | None = None) -> None:
        """Print ``event`` as ONE JSON line on stdout in Cloud Logging's structured format.

        See :func:`log_entry` for the keys. JSON escapes newlines, so an error with a
        line break still yields one line (one log entry).
        """
        if not self._settings.event_log:
            return  # turned off (firecron dev shows every run in its own view)
        line = json.dumps(log_entry(event, trace=trace), ensure_ascii=False, default=str)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def aclose(self) -> None:
        """Close the HTTP client and stop the publisher (flushing what it holds)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
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

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                # No connection is kept: each request connects to the address its own
                # guard check approved, and a pooled connection made for one host name
                # (TLS verified for it) must never carry a request for another.
                limits=httpx.Limits(max_keepalive_connections=0),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def _webhook(self, event: Event, sink: WebhookSink) -> str | None:
        url = sink.url
        shown = _origin(url) if sink.format == "slack" else redact_url(url)
        if sink.format == "slack":
            body = json.dumps({"text": slack_text(event)}, ensure_ascii=False).encode()
            headers = {"content-type": "application/json"}
        else:
            headers, body = _structured(event)
        headers.update(
            signature_headers(event.id, datetime.now(UTC), body, self._settings.signing_secrets)
        )
        try:
            # One bound for everything: DNS, connect, TLS, write and the status line.
            async with asyncio.timeout(self._timeout):
                target = await resolve_target(
                    url, allow_private=self._settings.allow_private_targets
                )
                pinned_url, pinned_headers, extensions = _pinned_request(target, headers)
                client = self._http()
                request = client.build_request(
                    "POST",
                    pinned_url,
                    content=body,
                    headers=pinned_headers,
                    extensions=extensions,
                )
                response = await client.send(request, stream=True)
                # The status is the answer; the body is never read.
                await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            return f"webhook {shown}: no response within {self._timeout:g}s"
        except TargetRefusedError as exc:
            return _scrub(str(exc), url, shown)
        except socket.gaierror as exc:
            return _scrub(f"webhook {shown}: DNS lookup failed: {exc}", url, shown)
        except (httpx.HTTPError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            return _scrub(f"webhook {shown}: connection failed: {detail}", url, shown)
        status = response.status_code
        if 200 <= status < 300:
            return None
        if 300 <= status < 400:
            return f"webhook {shown}: HTTP {status} (redirects are not followed)"
        return f"webhook {shown}: HTTP {status}"

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
        data = json.dumps(event.data, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            publisher = await self._publisher_client()
            future = publisher.publish(sink.topic, data, **pubsub_attributes(event))
            await asyncio.to_thread(future.result, self._timeout)
        except TimeoutError:
            return f"pubsub {sink.topic}: not acknowledged within {self._timeout:g}s"
        except Exception as exc:  # google.api_core / grpc errors, translated to one line
            return _one_line(f"pubsub {sink.topic}: {type(exc).__name__}: {exc}")
        return None
