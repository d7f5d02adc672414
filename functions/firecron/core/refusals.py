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
- on an on-demand schedule (none of ``cron``, ``every``, ``at`` or a frequency), ``start_at``,
  ``end_at``, ``jitter`` and ``max_runs``: they bound or delay occurrences, and it has
  none, so each is a mistake (a forgotten trigger, most likely), not a setting;
- a wait (the schedule's ``wait:`` gate, or a ``wait`` target) that can never end well
  (:func:`unworkable_wait`): a key template that can never name a key, or that names a
  param the schedule does not have (for a pipeline target, the pipeline's params
  count too, and :mod:`firecron.core.schedule_file` judges that); an ``until`` that does not compile or names a
  variable other than ``value``; an ``every`` longer than its ``timeout``. And a
  schedule with both a ``wait:`` gate and a ``wait`` target, which would wait twice;
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

from collections.abc import Mapping
from datetime import datetime, timedelta

from firecron.core.durations import format_duration
from firecron.core.events import EmailSink, Notifications, PagerDutySink, WebhookSink
from firecron.core.models import JsonValue, MisfirePolicyKind, ScheduleSpec, Target, WaitSpec
from firecron.core.planning import DEFAULT_MISFIRE_THRESHOLD
from firecron.core.render import rfc3339
from firecron.core.target_rules import check_static, host_url, redact_url
from firecron.core.triggers import jitter_offset
from firecron.core.waits import template_problem, until_problem

__all__ = ["unworkable", "unworkable_sinks", "unworkable_target", "unworkable_wait"]


def _rfc3339(value: datetime) -> str:
    return rfc3339(value.replace(microsecond=0))


def _url_problem(url: str, *, allow_private_targets: bool, shown: str | None = None) -> str | None:
    try:
        check_static(url, allow_private=allow_private_targets)
    except ValueError as exc:
        return f"{shown or redact_url(url)} is always refused by the SSRF guard: {exc}"
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
    spec: ScheduleSpec,
    *,
    now: datetime | None,
    allow_private_targets: bool,
    function_timeouts: Mapping[str, timedelta] | None = None,
) -> list[str]:
    """Why ``spec`` can never work, one ``field: reason`` line each; empty when it can.

    ``now`` is the validation instant (``None`` skips the checks that need it);
    ``allow_private_targets`` is the deployment's ``FIRECRON_ALLOW_PRIVATE_TARGETS``;
    ``function_timeouts`` the deployed functions' timeouts by name, where known.
    """
    problems = [
        f"target.{line}"
        for line in unworkable_target(spec.target, allow_private_targets=allow_private_targets)
    ]
    if spec.wait is not None:
        # A pipeline target's params are defaults under the schedule's: the file's
        # parser judges the template against both once it knows the pipeline.
        known = spec.params if spec.target.pipeline is None else None
        problems.extend(f"wait.{line}" for line in unworkable_wait(spec.wait, known))
    if spec.target.wait is not None:
        problems.extend(
            f"target.wait.{line}" for line in unworkable_wait(spec.target.wait, spec.params)
        )
        if spec.wait is not None:
            problems.append(
                "wait: the target is a wait already, so the run would wait twice: drop the "
                "'wait:' gate (or give the gate a target to fire)"
            )
    problem = _at_problem(spec, now)
    if problem is not None:
        problems.append(f"at: {problem}")
    if spec.on_demand:
        problems.extend(_on_demand_problems(spec))
    problem = _window_problem(spec, function_timeouts or {})
    if problem is not None:
        problems.append(f"continuous.window: {problem}")
    return problems


WINDOW_MARGIN = timedelta(seconds=30)
"""How much shorter than the run's timeout a continuous window must be: the instance
needs time to notice the window's end, return and record it before it is stopped."""


def _window_problem(spec: ScheduleSpec, function_timeouts: Mapping[str, timedelta]) -> str | None:
    """Why a continuous schedule's window cannot fit the timeouts its runs live under, or
    None: the schedule's ``timeout``, and for a ``function`` target the deployed
    function's (the platform stops the instance then, whatever firecron thinks)."""
    if spec.continuous is None:
        return None
    window = spec.continuous.window
    limits = []
    if spec.timeout is not None:
        limits.append((spec.timeout, "the timeout"))
    function = spec.target.function
    if function is not None and function in function_timeouts:
        limits.append(
            (function_timeouts[function], f"the deployed timeout of function {function!r}")
        )
    for limit, what in sorted(limits, key=lambda pair: pair[0]):
        if window > limit - WINDOW_MARGIN:
            return (
                f"{format_duration(window)} does not fit {what} ({format_duration(limit)}): "
                f"the window must be at least {format_duration(WINDOW_MARGIN)} shorter, "
                "or every generation is stopped before it hands over"
            )
    return None


def unworkable_target(target: Target, *, allow_private_targets: bool) -> list[str]:
    """Why ``target`` can never be reached, one ``url: reason`` line each (a ``url`` the
    SSRF guard always refuses); used for schedules and for pipeline tasks alike."""
    if target.url is None:
        return []
    problem = _url_problem(target.url, allow_private_targets=allow_private_targets)
    return [] if problem is None else [f"url: {problem}"]


def unworkable_wait(wait: WaitSpec, params: Mapping[str, JsonValue] | None) -> list[str]:
    """Why ``wait`` can never end well, one ``field: reason`` line each (``key``, ``until``,
    ``every``); empty when it can. Used for a schedule's gate and wait target, and for a
    pipeline's wait tasks.

    ``params`` are the names a run's params will surely have (the key template's
    ``{NAME}`` must be one of them, or ``date`` or ``scheduled_for``); None checks the
    template's syntax only. An ``every`` longer than ``timeout`` is refused: the wait
    would time out before it looks a second time, which is never what was meant.
    """
    problems: list[str] = []
    problem = template_problem(wait.key, params)
    if problem is not None:
        problems.append(f"key: {problem}")
    problem = until_problem(wait)
    if problem is not None:
        problems.append(f"until: {problem}")
    if wait.every > wait.timeout:
        problems.append(
            f"every: {format_duration(wait.every)} is longer than timeout "
            f"{format_duration(wait.timeout)}: the wait would time out before it looks again"
        )
    return problems


_NO_OCCURRENCES = "an on-demand schedule (no cron, every, at or frequency) has no occurrences to"


def _on_demand_problems(spec: ScheduleSpec) -> list[str]:
    """The fields that bound or delay occurrences, set on a schedule that has none."""
    problems: list[str] = []
    if spec.start_at is not None or spec.end_at is not None:
        names = [n for n, v in (("start_at", spec.start_at), ("end_at", spec.end_at)) if v]
        problems.extend(f"{name}: {_NO_OCCURRENCES} bound (add a trigger)" for name in names)
    if spec.jitter:
        problems.append(f"jitter: {_NO_OCCURRENCES} delay (add a trigger)")
    if spec.max_runs is not None:
        problems.append(f"max_runs: {_NO_OCCURRENCES} count (add a trigger)")
    return problems


def unworkable_sinks(notifications: Notifications, *, allow_private_targets: bool) -> list[str]:
    """Sinks the SSRF guard always refuses, one ``sinks.NAME.FIELD: reason`` line each:
    a webhook's or PagerDuty's ``url`` (both POSTed by the dispatch sender), and an email
    sink's ``host`` (judged as ``https://host:port/`` would be: a private relay needs
    ``FIRECRON_ALLOW_PRIVATE_TARGETS``, as a private webhook does)."""
    problems: list[str] = []
    for name, sink in notifications.sinks.items():
        if isinstance(sink, WebhookSink | PagerDutySink):
            field, url, shown = "url", sink.url, None
        elif isinstance(sink, EmailSink):
            field, url = "host", host_url(sink.host, sink.port)
            shown = url.removeprefix("https://").removesuffix("/")
        else:
            continue
        problem = _url_problem(url, allow_private_targets=allow_private_targets, shown=shown)
        if problem is not None:
            problems.append(f"sinks.{name}.{field}: {problem}")
    return problems
