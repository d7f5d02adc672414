"""Event delivery bookkeeping, shared by the dispatcher and the worker SDK.

Events are already recorded in their run (see :mod:`firecron.core.events`) when these
functions run. :func:`emit` logs new events and tries their deliveries once, right
away; :func:`flush` (used by the watchdog) retries the deliveries that are due. Both
record the outcomes with a compare-and-set on the run, re-reading and merging when
another writer got there first, so a delivery acknowledged by a sink is recorded once
and never sent again. A sink's failure never raises here: it is recorded and retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from firecron.core import events as ev
from firecron.core.lifecycle import derive_watch
from firecron.core.runs import Run, RunState
from firecron.errors import FirecronError
from firecron.store.base import Store

__all__ = ["Deliverer", "emit", "flush"]

log = logging.getLogger("firecron.outbox")
_CAS_TRIES = 5


class Deliverer(Protocol):
    """What :mod:`firecron.notify`'s ``Notifier`` offers (kept abstract for the services)."""

    async def deliver(self, event: ev.Event, route: ev.Route) -> str | None: ...

    def log(self, event: ev.Event, *, trace: str | None = None) -> None: ...

    async def send_message(self, sink: ev.SinkConfig, text: str, run: Run) -> str | None:
        """Send a ``notify`` target's message through ``sink``: None when delivered, else
        the error as one line (the contract of ``deliver``)."""
        ...

    async def aclose(self) -> None: ...


def _logs(run: Run) -> bool:
    return any(isinstance(r.sink, ev.LogSink) for r in run.notify)


async def emit(store: Store, notifier: Deliverer, run: Run, known: set[str], now: datetime) -> Run:
    """Log the events of ``run`` not in ``known`` and try their deliveries once.

    Adds the emitted ids to ``known``; returns the run as last recorded.
    """
    new = [e for e in run.events if e.id not in known]
    if not new:
        return run
    known.update(e.id for e in new)
    if _logs(run):
        for event in new:
            notifier.log(event)
    ids = {e.id for e in new}
    due = [(e, d) for e, d in ev.due_deliveries(run.events, now, immediate=True) if e.id in ids]
    return await _deliver(store, notifier, run, due, now)


async def flush(store: Store, notifier: Deliverer, run: Run, now: datetime) -> Run:
    """Retry the deliveries of ``run`` that are due at ``now``; returns the run as last recorded."""
    return await _deliver(store, notifier, run, ev.due_deliveries(run.events, now), now)


async def _superseded(
    store: Store,
    run: Run,
    todo: Sequence[tuple[ev.Event, ev.Delivery]],
    routes: dict[str, ev.Route],
) -> dict[tuple[str, str], str]:
    """The PagerDuty triggers among ``todo`` that must not be sent, keyed (event id, sink),
    with the reason: retries of a trigger older than the schedule's latest success.

    That success's ``run.succeeded`` resolves the incident (it goes to the same route), so
    a trigger that got through only now would reopen an incident of a healthy schedule.
    First tries are never held back (no read on the hot path): only retries, already
    late, pay one indexed read. A read that fails holds nothing back: better a reopened
    incident than a lost page.
    """
    retries = [
        (e, d)
        for e, d in todo
        if d.attempts > 0
        and e.type in ev.PAGERDUTY_TRIGGERS
        and isinstance(routes[d.sink].sink, ev.PagerDutySink)
    ]
    if not retries:
        return {}
    try:
        latest = await store.list_runs(
            schedule_id=run.schedule_id, states=[RunState.succeeded], limit=1
        )
    except FirecronError as exc:
        log.warning("cannot tell whether run %s's triggers are moot: %s", run.id, exc)
        return {}
    if not latest or latest[0].id == run.id:
        return {}
    success = latest[0]
    succeeded_at = success.ended_at or success.created_at
    reason = f"not sent: run {success.id} succeeded since, and its success resolves the incident"
    return {(e.id, d.sink): reason for e, d in retries if succeeded_at > e.time}


async def _deliver(
    store: Store,
    notifier: Deliverer,
    run: Run,
    due: Sequence[tuple[ev.Event, ev.Delivery]],
    now: datetime,
) -> Run:
    routes = {r.sink_name: r for r in run.notify}
    todo = [(e, d) for e, d in due if d.sink in routes]
    if not todo:
        return run
    moot = await _superseded(store, run, todo, routes)
    send = [(e, d) for e, d in todo if (e.id, d.sink) not in moot]
    errors = await asyncio.gather(*(notifier.deliver(e, routes[d.sink]) for e, d in send))
    for (event, delivery), error in zip(send, errors, strict=True):
        if error is not None:
            log.warning("event %s to sink %s failed: %s", event.id, delivery.sink, error)
    for (event_id, sink), reason in moot.items():
        log.info("event %s to sink %s %s", event_id, sink, reason)
    current = run
    for _ in range(_CAS_TRIES):
        events = list(current.events)
        for (event, delivery), error in zip(send, errors, strict=True):
            events = ev.record_delivery(events, event.id, delivery.sink, now, error)
        for (event_id, sink), reason in moot.items():
            events = ev.record_delivery(events, event_id, sink, now, reason, superseded=True)
        changes = {
            "events": events,
            "watch_at": derive_watch(current.deadline_at, events, current.settle_at),
            "updated_at": max(now, current.updated_at),
        }
        try:
            recorded = await store.update_run(current.id, [current.state], changes, current=current)
        except FirecronError as exc:
            log.error("recording deliveries of run %s failed: %s", current.id, exc)
            return current
        if recorded is not None:
            return recorded
        fresh = await store.get_run(current.id)
        if fresh is None:
            return current
        current = fresh
    log.error("recording deliveries of run %s kept conflicting; the watchdog will retry", run.id)
    return current
