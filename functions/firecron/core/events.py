"""Events and notification routing, pure: what happened to a run, and who must hear of it.

An :class:`Event` is embedded in its run's record and written by the same
compare-and-set as the state change it announces, so it is recorded before any
delivery is tried and is never lost to a crash. Each routed sink has a
:class:`Delivery` in the event; pending deliveries keep the run on the watchdog's
``watch_at`` index until they are delivered or give up, so a dead sink is retried
with backoff without ever delaying a dispatch or a worker.

Event ids are stable (``{run_id}/{type}/{attempt}``) so consumers can deduplicate;
a delivery acknowledged by a sink is recorded and never sent again.

Routing: the schedules file's ``notifications`` (sinks and rules) is resolved per
schedule at ``apply`` time into ``ScheduleSpec.notify`` (a list of :class:`Route`),
which each run snapshots, so emitting an event costs no read.
"""

from __future__ import annotations

import fnmatch
import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from firecron.core.render import rfc3339

__all__ = [
    "DELIVERY_BACKOFF",
    "DELIVERY_LEASE",
    "PAGERDUTY_TRIGGERS",
    "RUN_EVENT_TYPES",
    "SINK_TYPES",
    "UNROUTED_TYPES",
    "Delivery",
    "DeliveryState",
    "EmailSink",
    "Event",
    "EventType",
    "LogSink",
    "NotificationRule",
    "Notifications",
    "PagerDutySink",
    "PubSubSink",
    "Route",
    "SinkConfig",
    "WebhookSink",
    "clock_skew_event",
    "cloudevent",
    "due_deliveries",
    "next_delivery_at",
    "pagerduty_dedup_key",
    "record_delivery",
    "resolve_routes",
    "schedule_error_event",
]

CE_TYPE_PREFIX = "dev.firecron."
DELIVERY_LEASE = timedelta(seconds=30)
"""The emitter's own first try has this long before the watchdog may retry it."""
DELIVERY_BACKOFF = (30, 60, 120, 300, 600, 1200, 1800)
"""Seconds before retry n (1-based) of a failed delivery; after the last it gives up."""


class EventType(StrEnum):
    """What happened. The CloudEvents ``type`` is ``dev.firecron.<value>``."""

    run_started = "run.started"
    run_succeeded = "run.succeeded"
    run_failed = "run.failed"
    run_retrying = "run.retrying"
    run_lost = "run.lost"
    run_timed_out = "run.timed_out"
    run_sla_breached = "run.sla_breached"
    run_skipped = "run.skipped"
    run_missed = "run.missed"
    run_handoff = "run.handoff"
    """A continuous schedule's generation ended and the next one was created (info)."""
    dispatch_failed = "dispatch.failed"
    schedule_error = "schedule.error"
    """A tick could not plan, claim or fire the schedule (not about a run)."""
    dispatcher_clock_skew = "dispatcher.clock_skew"
    """A dispatcher's clock is too far from the store's; its tick fired nothing."""


UNROUTED_TYPES = frozenset({EventType.dispatcher_clock_skew})
"""Types about no schedule: they go to the log only, so notification rules cannot name them."""
RUN_EVENT_TYPES = frozenset(EventType) - {EventType.schedule_error, EventType.dispatcher_clock_skew}
"""Types recorded in runs (the others are logged and offered once, see their constructors)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"invalid url {value!r}: must be an absolute http(s) URL")
    return value


HttpUrlText = Annotated[str, AfterValidator(_http_url)]
"""An absolute ``http(s)`` URL, kept as written (the SSRF guard judges it when sent)."""


class WebhookSink(_Frozen):
    """POSTs the CloudEvent (structured JSON), signed like dispatches; or a Slack message."""

    type: Literal["webhook"]
    url: HttpUrlText
    format: Literal["cloudevents", "slack"] = "cloudevents"


class PubSubSink(_Frozen):
    """Publishes the event data with CloudEvents attributes (``ce-*``) to a topic."""

    type: Literal["pubsub"]
    topic: str = Field(pattern=r"^projects/[a-z][a-z0-9-]+/topics/[A-Za-z][A-Za-z0-9._~+%-]+$")


class LogSink(_Frozen):
    """Writes a structured JSON line in Cloud Logging's format."""

    type: Literal["log"]


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_EMAIL = r"^[^@\s<>,\"]+@[^@\s<>,\"]+$"
_HOST = r"^[A-Za-z0-9.:\[\]-]{1,253}$"
_MAX_RECIPIENTS = 50


def _env_name(value: str) -> str:
    if not re.fullmatch(_ENV_NAME, value):
        raise ValueError(
            f"{value!r} is not an environment variable name (letters, digits and _,"
            " not starting with a digit)"
        )
    return value


def _address(value: str) -> str:
    if not re.fullmatch(_EMAIL, value):
        raise ValueError(f"{value!r} is not an email address (a bare one: name@domain)")
    return value


def _host(value: str) -> str:
    if not re.fullmatch(_HOST, value):
        raise ValueError(f"{value!r} is not a host name or IP address")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]
"""An environment variable's name: where a sink's secret is read (never the secret itself)."""
EmailAddress = Annotated[str, AfterValidator(_address)]
"""One bare address: no display name, and nothing (a newline) that could add a header."""


class PagerDutySink(_Frozen):
    """Triggers a PagerDuty incident through the Events API v2, and resolves it.

    ``routing_key_env`` names the environment variable that holds the integration's
    routing key (deployed, a Secret Manager secret mounted as that variable), so the key
    is never in the schedules file or the store. ``url`` is the Events API endpoint
    (change it only for tests or the EU service region).
    """

    type: Literal["pagerduty"]
    routing_key_env: EnvName
    url: HttpUrlText = "https://events.pagerduty.com/v2/enqueue"


class EmailSink(_Frozen):
    """Sends a plain-text email over SMTP, always upgraded with STARTTLS.

    ``password_env`` names the environment variable holding the SMTP password (deployed,
    a Secret Manager secret mounted as that variable); without it the sink does not log
    in (a relay that trusts its network). ``username`` defaults to ``from``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["email"]
    host: Annotated[str, AfterValidator(_host)]
    port: int = Field(default=587, ge=1, le=65535)
    from_: EmailAddress = Field(alias="from")
    to: tuple[EmailAddress, ...]
    username: str | None = None
    password_env: EnvName | None = None

    @field_validator("to")
    @classmethod
    def _to(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Here, not as Field(min_length=...): pydantic would add "at least 1 item" to
        # the error of a bad address, which leaves none valid.
        if not 1 <= len(value) <= _MAX_RECIPIENTS:
            raise ValueError(f"give 1 to {_MAX_RECIPIENTS} addresses (got {len(value)})")
        return value


SinkConfig = Annotated[
    WebhookSink | PubSubSink | LogSink | PagerDutySink | EmailSink, Field(discriminator="type")
]

SINK_TYPES: frozenset[str] = frozenset(
    get_args(model.model_fields["type"].annotation)[0]
    for model in get_args(get_args(SinkConfig)[0])
)
"""The ``type`` tag of every :data:`SinkConfig` (read from the union itself)."""

PAGERDUTY_TRIGGERS = (
    EventType.run_failed,
    EventType.run_lost,
    EventType.run_timed_out,
    EventType.run_sla_breached,
)
"""The event types that trigger a PagerDuty incident; ``run.succeeded`` resolves them."""


def pagerduty_dedup_key(schedule_id: str, event_type: EventType) -> str:
    """The incident key of ``schedule_id``'s ``event_type`` incidents: one open incident
    per schedule and kind, which every later trigger joins and a success resolves."""
    return f"firecron/{schedule_id}/{event_type.value}"


class NotificationRule(BaseModel):
    """Send events of the listed types, of matching schedules, to one sink."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    on: list[str] = Field(min_length=1)
    """Event types (``run.failed``...) or ``*`` for all."""

    @field_validator("on")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        known = {t.value for t in EventType if t not in UNROUTED_TYPES}
        for item in value:
            if item != "*" and item not in known:
                raise ValueError(
                    f"unknown event type {item!r}; one of: *, {', '.join(sorted(known))}"
                )
        return value

    schedules: list[str] = Field(default_factory=lambda: ["*"])
    """Schedule ids, globs (``nightly-*``) or label selectors (``team=data``); any may match."""
    sink: str
    """Name of a sink under ``notifications.sinks``."""


class Notifications(BaseModel):
    """The ``notifications:`` section of a schedules file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sinks: dict[str, SinkConfig] = Field(default_factory=dict)
    rules: list[NotificationRule] = Field(default_factory=list)
    log: bool = True
    """The log sink receives every event unless this is false."""


class Route(_Frozen):
    """One resolved rule of one schedule: these event types go to this sink."""

    sink_name: str
    types: tuple[EventType, ...]
    """Empty means every type."""
    sink: SinkConfig

    def wants(self, event_type: EventType) -> bool:
        """True when this route takes ``event_type``.

        A PagerDuty route takes only the trigger types it lists (``*``: all four of
        :data:`PAGERDUTY_TRIGGERS`), and ``run.succeeded`` whenever it takes one of them,
        listed or not: a success resolves the schedule's incidents, so an incident
        opened by this route is closed by it too.
        """
        if isinstance(self.sink, PagerDutySink):
            if event_type is EventType.run_succeeded:
                return bool(self.pagerduty_triggers)
            return event_type in self.pagerduty_triggers
        return not self.types or event_type in self.types

    @property
    def pagerduty_triggers(self) -> tuple[EventType, ...]:
        """The trigger types of a PagerDuty route (empty for other sinks)."""
        if not isinstance(self.sink, PagerDutySink):
            return ()
        return tuple(t for t in PAGERDUTY_TRIGGERS if not self.types or t in self.types)


def _matches(selector: str, schedule_id: str, labels: dict[str, str]) -> bool:
    if "=" in selector:
        key, _, value = selector.partition("=")
        return labels.get(key.strip()) == value.strip()
    return fnmatch.fnmatchcase(schedule_id, selector)


LOG_ROUTE = Route(sink_name="log", types=(), sink=LogSink(type="log"))
"""Every event goes to the log unless ``notifications.log`` is false."""


def resolve_routes(
    notifications: Notifications, schedule_id: str, labels: dict[str, str]
) -> list[Route]:
    """The routes of one schedule: the log route (unless turned off), then one per matching rule.

    Raises :class:`ValueError` naming the rule when it names an unknown sink.
    """
    routes: list[Route] = [LOG_ROUTE] if notifications.log else []
    for index, rule in enumerate(notifications.rules):
        if rule.sink not in notifications.sinks:
            raise ValueError(f"rules[{index}]: unknown sink {rule.sink!r}")
        if not any(_matches(sel, schedule_id, labels) for sel in rule.schedules):
            continue
        types = () if "*" in rule.on else tuple(EventType(t) for t in rule.on)
        routes.append(Route(sink_name=rule.sink, types=types, sink=notifications.sinks[rule.sink]))
    return routes


class DeliveryState(StrEnum):
    """Where one event stands with one sink."""

    pending = "pending"
    delivered = "delivered"
    failed = "failed"
    """Gave up after the last retry."""
    superseded = "superseded"
    """Not sent, on purpose: a later event made it moot (a PagerDuty trigger still being
    retried after a later run of the schedule succeeded: sent now, it would reopen the
    incident that success resolves)."""


class Delivery(BaseModel):
    """One event's delivery to one sink."""

    model_config = ConfigDict(extra="forbid")

    sink: str
    state: DeliveryState = DeliveryState.pending
    attempts: int = 0
    next_at: AwareDatetime | None = None
    """When the next try is due (None once delivered or failed)."""
    delivered_at: AwareDatetime | None = None
    last_error: str | None = None


class Event(BaseModel):
    """One CloudEvent about a run, with its delivery state per routed sink."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: EventType
    source: str
    subject: str
    time: AwareDatetime
    data: dict[str, Any]
    deliveries: list[Delivery] = Field(default_factory=list)


def schedule_error_event(
    schedule_id: str,
    labels: dict[str, str],
    error: str,
    now: datetime,
    next_try: datetime | None,
) -> Event:
    """The ``schedule.error`` event: a tick could not plan, claim or fire ``schedule_id``.

    Not about a run, so no run record carries it: it has no tracked deliveries (the
    dispatcher logs it and offers it once to the schedule's routes, see
    ``Dispatcher``), and the schedule's ``last_error`` keeps the error visible. The id,
    ``{schedule_id}/schedule.error/{now}``, is stable per failure.
    """
    return Event(
        id=f"{schedule_id}/{EventType.schedule_error.value}/{rfc3339(now)}",
        type=EventType.schedule_error,
        source=f"//firecron/schedules/{schedule_id}",
        subject=schedule_id,
        time=now,
        data={
            "schedule_id": schedule_id,
            "state": "error",
            "error": error,
            "next_try_at": None if next_try is None else rfc3339(next_try),
            "labels": dict(labels),
        },
    )


def clock_skew_event(dispatcher_time: datetime, store_time: datetime, max_skew: timedelta) -> Event:
    """The ``dispatcher.clock_skew`` event: the dispatcher's clock read ``dispatcher_time``
    when the store's read ``store_time``, more than ``max_skew`` apart; the tick fired nothing.

    About no schedule: it goes to the log sink only (:data:`UNROUTED_TYPES`).
    """
    skew = (dispatcher_time - store_time).total_seconds()
    return Event(
        id=f"dispatcher/{EventType.dispatcher_clock_skew.value}/{rfc3339(store_time)}",
        type=EventType.dispatcher_clock_skew,
        source="//firecron/dispatcher",
        subject="dispatcher",
        time=store_time,
        data={
            "state": "skewed",
            "dispatcher_time": rfc3339(dispatcher_time),
            "store_time": rfc3339(store_time),
            "skew_s": round(skew, 3),
            "max_skew_s": max_skew.total_seconds(),
            "error": (
                f"the dispatcher's clock is {skew:+.1f}s off the store's (at most "
                f"{max_skew.total_seconds():g}s allowed); the tick fired nothing"
            ),
        },
    )


def next_delivery_at(events: list[Event]) -> datetime | None:
    """The earliest ``next_at`` of any pending delivery, or None."""
    times = [
        d.next_at
        for e in events
        for d in e.deliveries
        if d.state is DeliveryState.pending and d.next_at
    ]
    return min(times, default=None)


def due_deliveries(
    events: list[Event], now: datetime, *, immediate: bool = False
) -> list[tuple[Event, Delivery]]:
    """Pending deliveries to try now: due ones, or (``immediate``) every pending one never tried."""
    out = []
    for event in events:
        for d in event.deliveries:
            if d.state is not DeliveryState.pending:
                continue
            if (immediate and d.attempts == 0) or (d.next_at is not None and d.next_at <= now):
                out.append((event, d))
    return out


def record_delivery(
    events: list[Event],
    event_id: str,
    sink: str,
    now: datetime,
    error: str | None,
    *,
    superseded: bool = False,
) -> list[Event]:
    """``events`` with one delivery's outcome recorded (success when ``error`` is None).

    With ``superseded``, the delivery was not tried: it ends ``superseded`` with ``error``
    as the reason, and its attempts unchanged. Only a pending delivery changes: one
    already ``delivered`` stays so (an acknowledged sink is never retried).
    """
    updated: list[Event] = []
    for event in events:
        if event.id != event_id:
            updated.append(event)
            continue
        deliveries = []
        for d in event.deliveries:
            if d.sink != sink or d.state is not DeliveryState.pending:
                deliveries.append(d)
                continue
            attempts = d.attempts + 1
            if superseded:
                deliveries.append(
                    d.model_copy(
                        update={
                            "state": DeliveryState.superseded,
                            "next_at": None,
                            "last_error": error,
                        }
                    )
                )
            elif error is None:
                deliveries.append(
                    d.model_copy(
                        update={
                            "state": DeliveryState.delivered,
                            "attempts": attempts,
                            "delivered_at": now,
                            "next_at": None,
                            "last_error": None,
                        }
                    )
                )
            elif attempts > len(DELIVERY_BACKOFF):
                deliveries.append(
                    d.model_copy(
                        update={
                            "state": DeliveryState.failed,
                            "attempts": attempts,
                            "next_at": None,
                            "last_error": error,
                        }
                    )
                )
            else:
                wait = timedelta(seconds=DELIVERY_BACKOFF[attempts - 1])
                deliveries.append(
                    d.model_copy(
                        update={"attempts": attempts, "next_at": now + wait, "last_error": error}
                    )
                )
        updated.append(event.model_copy(update={"deliveries": deliveries}))
    return updated


def cloudevent(event: Event) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode JSON object of ``event``."""
    return {
        "specversion": "1.0",
        "id": event.id,
        "source": event.source,
        "type": CE_TYPE_PREFIX + event.type.value,
        "subject": event.subject,
        "time": rfc3339(event.time),
        "datacontenttype": "application/json",
        "data": event.data,
    }
