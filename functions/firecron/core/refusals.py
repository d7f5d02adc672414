"""Schedules that are well formed but can never work. Pure: ``now`` and settings are passed in.

:func:`unworkable` judges a valid :class:`~firecron.core.models.ScheduleSpec` against
what the planner and the SSRF guard will do with it, so that ``firecron validate`` and
``apply`` refuse it up front instead of it failing, or never firing, at every tick.
Each reason is one line ``field: reason``. Refused:

- a ``url`` target that the SSRF guard refuses without DNS (the same rules, from
  :mod:`firecron.core.target_rules`): the metadata server by name or address,
  link-local, unspecified, multicast or reserved addresses, and, unless private targets
  are allowed, ``http``, loopback and private literal addresses and ``localhost``;
- an ``at`` outside ``[start_at, end_at]``;
- with ``now`` given, an ``at`` that no tick from ``now`` on can fire. The planner
  counts an occurrence older than ``misfire.grace`` as missed, whatever the policy, and
  ``misfire: skip`` fires only an occurrence seen at most
  :data:`~firecron.core.planning.DEFAULT_MISFIRE_THRESHOLD` after its fire time
  (jitter included). So an ``at`` earlier than ``now - misfire.grace``, or with
  ``skip`` a fire time earlier than ``now - DEFAULT_MISFIRE_THRESHOLD``, never fires.

Not refused: an ``at`` in the recent past that is still within grace. A new schedule
points at it (:func:`~firecron.core.planning.initial_state`) and the next tick's
misfire policy decides; one applied before and not yet ticked may still fire it.

Cron expressions that never match are refused by the model itself
(:func:`~firecron.core.triggers.validate_cron`).
"""

from __future__ import annotations

from datetime import datetime

from firecron.core.durations import format_duration
from firecron.core.events import Notifications, WebhookSink
from firecron.core.models import MisfirePolicyKind, ScheduleSpec
from firecron.core.planning import DEFAULT_MISFIRE_THRESHOLD
from firecron.core.render import rfc3339
from firecron.core.target_rules import check_static, redact_url
from firecron.core.triggers import jitter_offset

__all__ = ["unworkable", "unworkable_sinks"]


def _rfc3339(value: datetime) -> str:
    return rfc3339(value.replace(microsecond=0))


def _url_problem(url: str, *, allow_private_targets: bool) -> str | None:
    try:
        check_static(url, allow_private=allow_private_targets)
    except ValueError as exc:
        return f"{redact_url(url)} is always refused by the SSRF guard: {exc}"
    return None


def _at_problem(spec: ScheduleSpec, now: datetime | None) -> str | None:
    at = spec.at
    if at is None:
        return None
    when = _rfc3339(at)
    if spec.start_at is not None and at < spec.start_at:
        return f"{when} is before start_at {_rfc3339(spec.start_at)}: it never fires"
    if spec.end_at is not None and at > spec.end_at:
        return f"{when} is after end_at {_rfc3339(spec.end_at)}: it never fires"
    if now is None:
        return None
    grace = spec.misfire.grace
    if at < now - grace:
        return (
            f"{when} is more than misfire.grace ({format_duration(grace)}) in the past "
            f"(now {_rfc3339(now)}): it can never fire"
        )
    fire_at = at + jitter_offset(spec.id, at, spec.jitter)
    if spec.misfire.policy is MisfirePolicyKind.skip and fire_at < now - DEFAULT_MISFIRE_THRESHOLD:
        return (
            f"{when} is more than {format_duration(DEFAULT_MISFIRE_THRESHOLD)} in the past "
            f"(now {_rfc3339(now)}) and misfire is skip, which fires only on-time "
            "occurrences: it can never fire"
        )
    return None


def unworkable(
    spec: ScheduleSpec, *, now: datetime | None, allow_private_targets: bool
) -> list[str]:
    """Why ``spec`` can never work, one ``field: reason`` line each; empty when it can.

    ``now`` is the validation instant (``None`` skips the checks that need it);
    ``allow_private_targets`` is the deployment's ``FIRECRON_ALLOW_PRIVATE_TARGETS``.
    """
    problems: list[str] = []
    if spec.target.url is not None:
        problem = _url_problem(spec.target.url, allow_private_targets=allow_private_targets)
        if problem is not None:
            problems.append(f"target.url: {problem}")
    problem = _at_problem(spec, now)
    if problem is not None:
        problems.append(f"at: {problem}")
    return problems


def unworkable_sinks(notifications: Notifications, *, allow_private_targets: bool) -> list[str]:
    """Webhook sinks the SSRF guard always refuses, one ``sinks.NAME.url: reason`` line each."""
    problems: list[str] = []
    for name, sink in notifications.sinks.items():
        if isinstance(sink, WebhookSink):
            problem = _url_problem(sink.url, allow_private_targets=allow_private_targets)
            if problem is not None:
                problems.append(f"sinks.{name}.url: {problem}")
    return problems
