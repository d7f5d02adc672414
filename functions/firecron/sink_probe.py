"""Test events for a notification sink: what ``firecron notify-test`` sends.

A sink is set up once (a PagerDuty integration key, an SMTP relay and its password, a
Slack webhook) and then only heard from when something fails: the worst time to learn
that the key was wrong. :func:`probe` sends one made-up event through the same
:class:`~firecron.notify.Notifier` the dispatcher and the workers use, so it goes
through the same SSRF guard, TLS checks, secrets and payloads, and reports each try.

The event is about the schedule :data:`PROBE_SCHEDULE` (no schedule by that id need
exist) and a manual run ``firecron-test@m{time}-{nonce}``, with an error that says it
is a test; the nonce makes each test its own event (its own email ``Message-ID``). On a
PagerDuty sink the trigger opens the incident ``firecron/firecron-test/{event}`` and,
unless ``keep_open``, a ``run.succeeded`` of a later test run resolves it at once, so
a test pages nobody for long; run twice, the tests share one incident.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from firecron.core.events import (
    PAGERDUTY_TRIGGERS,
    EventType,
    PagerDutySink,
    Route,
    SinkConfig,
)
from firecron.core.lifecycle import make_event
from firecron.core.models import RetryPolicy, Target
from firecron.core.runs import Run, RunState, RunTrigger, manual_run_id
from firecron.errors import InvalidInputError
from firecron.notify import Notifier
from firecron.settings import Settings

__all__ = ["PROBE_EVENTS", "PROBE_SCHEDULE", "Sent", "probe", "probe_run"]

PROBE_SCHEDULE = "firecron-test"
"""The schedule id test events are about."""

_STATES = {
    EventType.run_failed: RunState.failed,
    EventType.run_lost: RunState.lost,
    EventType.run_timed_out: RunState.timed_out,
    EventType.run_sla_breached: RunState.running,
    EventType.run_succeeded: RunState.succeeded,
}
"""The state a test run is in for each event it can be the subject of."""

PROBE_EVENTS = tuple(_STATES)
"""The event types a test can send (the ones sinks are usually routed)."""


@dataclass(frozen=True)
class Sent:
    """One try of one test event: ``error`` is None when the sink acknowledged it."""

    event: EventType
    run_id: str
    error: str | None
    resolves: bool = False
    """This is the ``run.succeeded`` that resolves the PagerDuty test incident."""


def probe_run(event_type: EventType, now: datetime, nonce: str) -> Run:
    """The made-up run of a test ``event_type`` at ``now``: ended in the event's state
    (still running for an SLA breach), with an error that says it is a test."""
    started = now - timedelta(minutes=1)
    state = _STATES[event_type]
    ended = state is not RunState.running
    return Run(
        id=manual_run_id(PROBE_SCHEDULE, now, nonce),
        schedule_id=PROBE_SCHEDULE,
        scheduled_for=started,
        fire_at=started,
        trigger=RunTrigger.manual,
        state=state,
        target=Target(function=PROBE_SCHEDULE),
        retry=RetryPolicy(max_attempts=1),
        expected_duration=timedelta(seconds=30),
        labels={"firecron": "test"},
        created_at=started,
        updated_at=now,
        started_at=started,
        ended_at=now if ended else None,
        error=(
            None
            if state is RunState.succeeded
            else "a test event sent by firecron notify-test: nothing failed"
        ),
    )


async def probe(
    settings: Settings,
    sink_name: str,
    sink: SinkConfig,
    event_type: EventType,
    now: datetime,
    *,
    keep_open: bool = False,
) -> list[Sent]:
    """Send a test ``event_type`` to ``sink`` once (and, for PagerDuty, its resolve
    unless ``keep_open``); return every try. Stops at the first failed try.

    Raises :class:`InvalidInputError` when the sink would never send this event (a
    PagerDuty sink takes only its trigger types) or ``event_type`` is not testable.
    """
    if event_type not in PROBE_EVENTS:
        allowed = ", ".join(t.value for t in PROBE_EVENTS)
        raise InvalidInputError(f"--event: {event_type.value} cannot be tested (one of {allowed})")
    route = Route(sink_name=sink_name, types=(event_type,), sink=sink)
    pagerduty = isinstance(sink, PagerDutySink)
    if not route.wants(event_type):  # a success is never sent alone to PagerDuty
        allowed = ", ".join(t.value for t in PAGERDUTY_TRIGGERS)
        raise InvalidInputError(
            f"--event: a pagerduty sink is sent {allowed} (a success only resolves them)"
        )
    steps = [(event_type, now, False)]
    if pagerduty and not keep_open:
        steps.append((EventType.run_succeeded, now + timedelta(seconds=1), True))
    notifier = Notifier(settings)
    sent: list[Sent] = []
    try:
        for kind, at, resolves in steps:
            run = probe_run(kind, at, secrets.token_hex(3))
            event = make_event(run, kind, at, [route])
            # The same call the outbox makes: one try, a failure as a line, never raised.
            error = await notifier.deliver(event, route)
            sent.append(Sent(kind, run.id, error, resolves))
            if error is not None:
                break
    finally:
        await notifier.aclose()
    return sent
