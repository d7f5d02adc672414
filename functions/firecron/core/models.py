"""Schedule definitions and their state: the vocabulary of firecron.

A schedule is a :class:`ScheduleSpec` (what the user wrote in YAML, immutable) plus
a :class:`ScheduleState` (what the dispatcher keeps: next fire time, counters).
:class:`StoredSchedule` pairs them with the store's opaque ``version`` token used for
compare-and-set. Conversion to rows or documents happens only in ``firecron.store``.

All datetimes in these models are timezone-aware UTC; naive input is rejected or,
where the YAML format allows wall-clock times (``at``, ``start_at``, ``end_at``),
interpreted in the schedule's ``timezone``.

Bounds on input: validated with ``context=INPUT`` (as
:func:`~firecron.core.schedule_file.parse_schedule_file` reads a schedules file), a spec
refuses durations over :data:`~firecron.core.durations.MAX_DURATION` (ten years),
instants outside ``[EARLIEST_INSTANT, LATEST_INSTANT)`` and ``params`` nested deeper
than :data:`MAX_PARAMS_DEPTH`. Within them, no sum of an instant and durations that the
planner makes can leave the range of ``datetime``. Without the context (a record
read back from a store) they are not re-judged, so a schedule stored before a bound
existed stays readable.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import JsonValue as _JsonValue
from pydantic_core import InitErrorDetails, PydanticCustomError

from firecron.core.durations import format_duration, parse_duration
from firecron.core.events import Route, SinkConfig
from firecron.core.frequencies import (
    Frequency,
    normalize_clock,
    normalize_month_day,
    normalize_times,
    normalize_weekdays,
)

__all__ = [
    "EARLIEST_INSTANT",
    "INPUT",
    "LATEST_INSTANT",
    "MAX_PARAMS_DEPTH",
    "MAX_PIPELINE_TASKS",
    "SCHEDULE_ID_PATTERN",
    "TRIGGER_FIELDS",
    "ChainOn",
    "ChainStep",
    "ClockTime",
    "ContinuousSpec",
    "DailyTimes",
    "Duration",
    "HourlySpec",
    "JsonValue",
    "MisfirePolicy",
    "MisfirePolicyKind",
    "MonthDay",
    "MonthlySpec",
    "NotifyAction",
    "OverlapPolicy",
    "PipelineSpec",
    "RetryPolicy",
    "ScheduleSpec",
    "ScheduleState",
    "StoredSchedule",
    "Target",
    "TargetAuth",
    "TargetDelivery",
    "TaskRule",
    "TaskSpec",
    "TriggerKind",
    "WaitSpec",
    "Weekdays",
    "WeeklySpec",
    "check_strict_json",
]

JsonValue = _JsonValue

SCHEDULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")

INPUT: dict[str, bool] = {"firecron_input": True}
"""Validation context of user input: ``Model.model_validate(data, context=INPUT)``
applies the bounds of the module docstring."""
EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
"""The earliest ``at``/``start_at``/``end_at`` accepted (the Unix epoch, every's anchor)."""
LATEST_INSTANT = datetime(9000, 1, 1, tzinfo=UTC)
"""Instants must be before this: ten years of durations later is still far from year 9999."""
MAX_PARAMS_DEPTH = 32
"""How deeply ``params`` may nest lists and objects (``{"a": [1]}`` is depth 2)."""


def _is_input(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("firecron_input"))


def _duration_field(value: object, info: ValidationInfo) -> timedelta:
    return parse_duration(value, bounded=_is_input(info))


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration_field),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A duration field: accepts ``90s``/``15m``/``2h``/``1d`` (a bare number is refused), dumps
as text in JSON. At most ten years when validated as :data:`INPUT`."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TRIGGER_FIELDS = ("cron", "every", "at", "hourly", "daily", "weekly", "monthly", "continuous")
"""The fields of a schedule that say when it fires; it sets at most one (none: on demand)."""


class TriggerKind(StrEnum):
    """Which trigger field a schedule uses."""

    cron = "cron"
    """A cron expression (5 fields, or 6 with seconds first) or a macro."""
    every = "every"
    """A fixed interval anchored at ``start_at`` or the Unix epoch; ignores DST."""
    at = "at"
    """One shot at an instant; the schedule is exhausted after it fires."""
    hourly = "hourly"
    """Every hour at a minute past it (``15 * * * *``)."""
    daily = "daily"
    """Every day at one or more times (``30 2 * * *``)."""
    weekly = "weekly"
    """On chosen weekdays at a time (``0 9 * * 1,5``)."""
    monthly = "monthly"
    """On a day of the month, or one counted from its end, at a time."""


def _times_out(value: tuple[str, ...]) -> str | list[str]:
    # `daily: "02:30"` reads back as it was written; several times as a list.
    return value[0] if len(value) == 1 else list(value)


ClockTime = Annotated[str, BeforeValidator(normalize_clock)]
"""A time of day, ``HH:MM`` on the 24-hour clock (``9:30`` is kept as ``09:30``)."""
DailyTimes = Annotated[
    tuple[str, ...], BeforeValidator(normalize_times), PlainSerializer(_times_out)
]
"""``daily``'s times: one ``HH:MM`` or a list of them, kept sorted; dumps as one string
when there is one."""
Weekdays = Annotated[tuple[str, ...], BeforeValidator(normalize_weekdays)]
"""Weekday short names (``mon`` ... ``sun``, full names accepted), kept in week order."""
MonthDay = Annotated[int | Literal["last"], BeforeValidator(normalize_month_day)]
"""``1``..``31``, ``last``, or ``-1``..``-31`` counted from the month's end."""


class HourlySpec(_Frozen):
    """``hourly: {minute: 15}``: every hour at ``minute`` past it, as ``15 * * * *``."""

    minute: int = Field(default=0, ge=0, le=59)
    """Minute past the hour, 0-59."""

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, value: object) -> object:
        # `hourly: 15` and `hourly: ":15"` are the natural slips: say the file's form.
        if isinstance(value, str | int) and not isinstance(value, bool):
            raise ValueError(f"write it as {{minute: 15}} (got {value!r})")
        return value


class WeeklySpec(_Frozen):
    """``weekly: {days: [mon, fri], at: "09:00"}``: as ``0 9 * * 1,5``."""

    days: Weekdays
    """The weekdays it runs on."""
    at: ClockTime
    """The time of day, ``HH:MM``."""


class MonthlySpec(_Frozen):
    """``monthly: {day: 1 | last | -3, at: "06:00"}``.

    A positive day is ``0 6 1 * *``; ``last`` (or ``-1``) is the month's last day and
    ``-3`` its third-to-last, which cron cannot say. A month without the day (the 31st,
    or ``-31``, in a 30-day month) is skipped.
    """

    day: MonthDay
    """The day of the month, or from its end."""
    at: ClockTime
    """The time of day, ``HH:MM``."""


class TargetDelivery(StrEnum):
    """How a ``url`` or ``function`` target's POST reaches it."""

    direct = "direct"
    """The dispatcher POSTs and waits for the acknowledgement only (a worker answers
    ``202`` at once and works on)."""
    cloud_tasks = "cloud_tasks"
    """The dispatcher enqueues one Cloud Tasks task per send and waits for nothing; Cloud
    Tasks POSTs (at the occurrence's exact second) and holds the request while a worker
    works, so the worker answers at the end of its work."""


class TargetAuth(StrEnum):
    """How a dispatch authenticates itself to its target."""

    none = "none"
    """No extra credential. A signature is still attached when a signing secret is set."""
    oidc = "oidc"
    """A Google ID token whose audience is the target URL (for private Cloud Functions)."""
    hmac = "hmac"
    """The Standard Webhooks HMAC signature is required: dispatch fails if no secret is set."""


class OverlapPolicy(StrEnum):
    """What to do when an occurrence is due while the schedule's latest run is still active."""

    skip = "skip"
    """Record the new occurrence as ``skipped`` (the default)."""
    allow = "allow"
    """Fire it anyway; runs may overlap."""
    queue_one = "queue_one"
    """Hold at most one ``queued`` run and fire it when the active run ends; skip beyond that."""


class MisfirePolicyKind(StrEnum):
    """What to do with occurrences whose tick was missed (fired late beyond the threshold)."""

    coalesce = "coalesce"
    """Fire the latest missed occurrence within ``grace``, once (the default)."""
    all = "all"
    """Fire every missed occurrence within ``grace``, at most 100 per tick."""
    skip = "skip"
    """Fire none of them."""


class NotifyAction(_Frozen):
    """Send one message through a sink of the file's ``notifications:`` (a ``notify`` task).

    ``sink`` names the sink; the parser resolves it into ``sink_config`` (a snapshot, as
    schedules snapshot their routes), so the run needs no read to send it.
    """

    sink: str = Field(min_length=1, max_length=200)
    """Name of a sink under ``notifications.sinks``."""
    text: str = Field(min_length=1, max_length=4000)
    """The message. ``{run_id}``, ``{pipeline_run_id}``, ``{schedule_id}`` and ``{param.NAME}``
    are replaced when it is sent; other braces are left as they are."""
    sink_config: SinkConfig | None = None
    """The sink's definition, filled from ``notifications.sinks`` when the file is read."""


class WaitSpec(_Frozen):
    """A wait on the state collection: the run holds no function while it waits.

    ``key`` is a template: ``{NAME}`` is the run's param ``NAME``, ``{date}`` the
    occurrence's date in the schedule's zone (``YYYY-MM-DD``) and ``{scheduled_for}`` the
    occurrence in RFC 3339 UTC. ``until`` is CEL over ``value`` (the key's JSON value, or
    null while the key does not exist). The watchdog looks again every ``every``, and a
    write through firecron to the key looks at once; past ``timeout`` the wait ends
    ``timed_out``.
    """

    key: str = Field(min_length=1, max_length=256)
    """The key template."""
    until: str = Field(default="value != null", min_length=1, max_length=2000)
    """The condition that ends the wait."""
    every: Duration = timedelta(seconds=30)
    """How often the watchdog reads the key while nothing writes it through firecron."""
    timeout: Duration = timedelta(hours=6)
    """How long to wait at most."""

    @field_validator("every")
    @classmethod
    def _check_every(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("every must be at least 1s")
        return value


class ContinuousSpec(_Frozen):
    """``continuous: {window: 10m}``: exactly one run of the schedule is alive while it is
    enabled. Each run (a *generation*) works until its window has passed, then returns;
    the write that records its end creates the next generation, fired at once."""

    window: Duration
    """How long one generation works before it hands over (``ctx.keep_going()`` turns false)."""

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("window must be at least 1s")
        return value


class Target(_Frozen):
    """What a run does when it is fired.

    Exactly one of:

    - ``url``: POST to an endpoint; a plain endpoint (its runs end ``delivered``) unless
      ``worker: true``;
    - ``function``: POST to a worker built with the SDK, resolved against
      ``FIRECRON_FUNCTIONS_BASE_URL`` at dispatch time;
    - ``pipeline``: start a run of the pipeline with that id (its tasks are runs too);
    - ``notify``: send a message through a notification sink (used by ``notify`` tasks).

    The URL is checked syntactically here; the SSRF guard runs in the transport, where
    DNS is resolved.
    """

    url: str | None = None
    """Absolute http(s) URL of the endpoint."""
    function: str | None = None
    """Name of a worker entry point in ``functions/main.py``."""
    pipeline: str | None = None
    """Id of a pipeline of the schedules file (``pipelines:``)."""
    notify: NotifyAction | None = None
    """A message to send (pipeline ``notify`` tasks)."""
    wait: WaitSpec | None = None
    """Only wait: the run succeeds once the wait's condition holds (pipeline ``wait`` tasks,
    or a schedule that marks a moment for its ``then`` steps)."""
    worker: bool | None = None
    """Whether the target reports run state with the SDK. Defaults to true for ``function``."""
    auth: TargetAuth | None = None
    """How the dispatch authenticates (see :class:`TargetAuth`). Unset: ``none`` for a
    ``url`` target; for a ``function`` target, ``FIRECRON_FUNCTION_AUTH`` (the deploy
    sets ``oidc``, because deployed workers only accept IAM-authenticated calls)."""

    delivery: TargetDelivery | None = None
    """How the POST reaches the target (see :class:`TargetDelivery`). Unset:
    ``FIRECRON_DELIVERY`` (default ``direct``)."""

    def effective_delivery(self, default: TargetDelivery) -> TargetDelivery:
        """The delivery to use, given the deployment's default (``FIRECRON_DELIVERY``)."""
        return self.delivery if self.delivery is not None else default

    def effective_auth(self, function_default: TargetAuth) -> TargetAuth:
        """The auth to use, given the deployment's default for ``function`` targets."""
        if self.auth is not None:
            return self.auth
        return function_default if self.function is not None else TargetAuth.none

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [
            name
            for name, value in (
                ("url", self.url),
                ("function", self.function),
                ("pipeline", self.pipeline),
                ("notify", self.notify),
                ("wait", self.wait),
            )
            if value is not None
        ]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(
                "set exactly one of 'url', 'function', 'pipeline', 'notify' or 'wait' "
                f"(found: {found})"
            )
        if self.function is not None:
            if not _FUNCTION_NAME.match(self.function):
                raise ValueError(f"invalid function name {self.function!r}")
            if self.worker is False:
                raise ValueError("a 'function' target is always a worker; drop 'worker: false'")
        if self.url is not None and not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(f"invalid url {self.url!r}: must be an absolute http(s) URL")
        if self.pipeline is not None and not re.match(SCHEDULE_ID_PATTERN, self.pipeline):
            raise ValueError(f"invalid pipeline id {self.pipeline!r}")
        if (self.pipeline is not None or self.notify is not None or self.wait is not None) and (
            self.worker is not None or self.auth is not None or self.delivery is not None
        ):
            raise ValueError(
                "'worker', 'auth' and 'delivery' apply to 'url' and 'function' targets only"
            )
        return self

    @property
    def is_worker(self) -> bool:
        """True when the target runs the worker SDK and reports its run's state."""
        return self.function is not None or bool(self.worker)

    @property
    def tracks_end(self) -> bool:
        """True when a run's end comes later than its firing (a worker or a pipeline), so the
        overlap policy applies; a plain URL or a message is done once sent."""
        return self.is_worker or self.pipeline is not None

    @property
    def is_http(self) -> bool:
        """True when firing means a POST (``url`` or ``function``)."""
        return self.url is not None or self.function is not None

    def describe(self) -> str:
        """One word and a name for listings: ``function:x``, ``pipeline:y``, ``notify:sink``
        or the URL."""
        if self.function is not None:
            return f"function:{self.function}"
        if self.pipeline is not None:
            return f"pipeline:{self.pipeline}"
        if self.notify is not None:
            return f"notify:{self.notify.sink}"
        if self.wait is not None:
            return f"wait:{self.wait.key}"
        return str(self.url)


class ChainOn(StrEnum):
    """Which ends of a run start a ``then`` step."""

    succeeded = "succeeded"
    """The run succeeded (``delivered`` counts: a plain target reports nothing more)."""
    failed = "failed"
    """The run ended ``failed``, ``timed_out`` or ``lost`` after its last attempt."""
    done = "done"
    """Either."""


class ChainStep(_Frozen):
    """One ``then:`` entry: when a run of this schedule ends, run another schedule at once."""

    schedule: str = Field(pattern=SCHEDULE_ID_PATTERN)
    """Id of the schedule to run (often an on-demand one)."""
    on: ChainOn = ChainOn.succeeded
    """Which ends start it."""
    params: dict[str, JsonValue] = Field(default_factory=dict)
    """Parameters of the chained run, over the target schedule's own."""

    @field_validator("params")
    @classmethod
    def _check_params(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return check_strict_json(value, "params")


class RetryPolicy(_Frozen):
    """Retries of failed dispatches and, for workers, of ``failed``/``lost``/``timed_out`` runs.

    Attempt ``n`` (n >= 2) waits a full-jitter delay in
    ``[0, min(max_backoff, backoff * multiplier ** (n - 2))]``.
    """

    max_attempts: int = Field(default=3, ge=1, le=100)
    """Total tries, the first included. 1 disables retries."""
    backoff: Duration = timedelta(seconds=10)
    """Ceiling of the first retry's delay."""
    max_backoff: Duration = timedelta(minutes=10)
    """Cap of any retry's delay ceiling."""
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    """Growth of the delay ceiling per attempt."""


class MisfirePolicy(_Frozen):
    """Handling of occurrences that were due while no tick ran (see :class:`MisfirePolicyKind`)."""

    policy: MisfirePolicyKind = MisfirePolicyKind.coalesce
    """What to fire of the missed occurrences."""
    grace: Duration = timedelta(hours=24)
    """Occurrences older than this are never fired; they are counted and reported as missed."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `misfire: skip` is friendlier than `misfire: {policy: skip}`.
        return {"policy": data} if isinstance(data, str) else data


@functools.lru_cache(maxsize=4096)
def _validated_cron(value: str, must_fire: bool) -> str:
    """``validate_cron``, remembered: a large file repeats a few expressions many times.

    Only valid expressions are remembered (an error is not cached), and the result
    depends on the arguments alone.
    """
    from firecron.core.triggers import validate_cron

    return validate_cron(value, must_fire=must_fire)


def _non_finite(
    value: object, loc: tuple[int | str, ...]
) -> Iterator[tuple[tuple[int | str, ...], float]]:
    """Where ``value`` holds NaN or an infinity, which strict JSON cannot represent."""
    if isinstance(value, float) and not math.isfinite(value):
        yield loc, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, (*loc, index))


def has_non_finite(value: object) -> bool:
    """True when ``value`` holds NaN or an infinity anywhere (strict JSON cannot)."""
    return next(_non_finite(value, ()), None) is not None


def check_strict_json(value: dict[str, JsonValue], title: str) -> dict[str, JsonValue]:
    """Return ``value``, or raise a :class:`ValidationError` locating each NaN or infinity.

    YAML's ``.nan``/``.inf`` (and a float literal too large, such as ``1.0e+999``) load
    as non-finite floats; JSON has no such values, so a run could not carry them (they
    would silently become ``null``). Each error's location is the path to the value
    (``a[1]`` below the field), so the report names the param.
    """
    bad = list(_non_finite(value, ()))
    if not bad:
        return value
    names = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
    raise ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                # 'value_error' keeps the report to the message (no "(got nan)" suffix).
                type=PydanticCustomError(
                    "value_error",
                    "{value} is not JSON: params must be strict JSON (write a number, "
                    "a string or null)",
                    {"value": names[repr(number)]},
                ),
                loc=loc,
                input=number,
            )
            for loc, number in bad
        ],
    )


def params_depth_problem(value: object, limit: int = MAX_PARAMS_DEPTH) -> str | None:
    """Why ``value`` nests lists and dicts more than ``limit`` deep, or None.

    Iterative, so that a value nested thousands of levels deep is judged without
    recursion (pydantic would otherwise give up with a recursion error naming every
    level of the path).
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Any
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return f"nested more than {limit} levels deep"
        stack.extend((child, depth + 1) for child in children)
    return None


def _instant_field(value: Any, info: ValidationInfo) -> Any:
    """Parse ``at``/``start_at``/``end_at``: RFC 3339, or a naive wall time in the schedule's zone.

    As :data:`INPUT`, an instant outside ``[EARLIEST_INSTANT, LATEST_INSTANT)`` is refused.
    """
    from firecron.core.triggers import parse_instant, validate_timezone

    if value is None:
        return None
    tz = (info.data or {}).get("timezone", "UTC")
    try:
        validate_timezone(tz)
    except ValueError:
        tz = "UTC"  # the timezone field reports its own error
    if isinstance(value, datetime):
        value = value.isoformat()
    if not isinstance(value, str):
        raise ValueError(f"invalid time {value!r}: use RFC 3339, e.g. 2027-01-01T10:00:00+01:00")
    instant = parse_instant(value, tz)
    if _is_input(info) and not EARLIEST_INSTANT <= instant < LATEST_INSTANT:
        raise ValueError(
            f"{value.strip()} is out of range: firecron accepts instants from "
            "1970-01-01T00:00:00Z to before 9000-01-01T00:00:00Z"
        )
    return instant


class TaskRule(StrEnum):
    """When a pipeline task runs, judged once every task in its ``after`` has ended.

    An upstream task counts as *failed* when it ended ``failed``, ``timed_out``, ``lost``
    or ``cancelled``, or when it was skipped because of a failure above it (see
    ``firecron.core.pipelines``); a task skipped for any other reason counts as skipped.
    """

    all_succeeded = "all_succeeded"
    """Every upstream task succeeded (the default)."""
    none_failed = "none_failed"
    """No upstream task failed; skipped ones are fine."""
    any_failed = "any_failed"
    """At least one upstream task failed: the error path."""
    all_done = "all_done"
    """Whatever the upstream tasks did."""


MAX_PIPELINE_TASKS = 400
"""Tasks per pipeline: a pipeline run and its task runs are created in one atomic write
(Firestore commits at most 500 writes at once)."""


class TaskSpec(_Frozen):
    """One task of a pipeline: a run of its own, started once its rule holds."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: str = Field(pattern=SCHEDULE_ID_PATTERN)
    """Unique within the pipeline; the task run's id is ``{pipeline_run_id}.{id}``."""
    target: Target | None = None
    """A ``url`` or ``function`` target (exactly one of ``target`` and ``notify``)."""
    notify: NotifyAction | None = None
    """Send a message through a sink instead (exactly one of ``target``, ``notify``, ``wait``)."""
    wait: WaitSpec | None = None
    """Wait on a state key instead: the task succeeds when the condition holds and ends
    ``timed_out`` at the wait's timeout (so error paths apply)."""
    params: dict[str, JsonValue] = Field(default_factory=dict)
    """The task's params, over the schedule's and the pipeline's."""
    after: list[str] = Field(default_factory=list)
    """Ids of the tasks that must end first; none: it starts with the pipeline."""
    when: TaskRule = TaskRule.all_succeeded
    """The rule over the upstream tasks' outcomes."""
    if_: str | None = Field(default=None, alias="if", min_length=1, max_length=2000)
    """A CEL condition over ``params`` and ``tasks`` (its upstream tasks' ``state`` and
    ``output``), judged with the rule; false: the task is skipped."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    """Retry policy of the task's run."""
    timeout: Duration | None = None
    """The task run is stopped after this."""
    expected_duration: Duration | None = None
    """SLA of the task run."""

    @field_validator("params")
    @classmethod
    def _check_params(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return check_strict_json(value, "params")

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        kinds = sum(x is not None for x in (self.target, self.notify, self.wait))
        if kinds != 1:
            raise ValueError("set exactly one of 'target', 'notify' or 'wait'")
        if self.target is not None and not self.target.is_http:
            raise ValueError("a task's target is a 'url' or a 'function' (use 'notify:' to notify)")
        return self

    @property
    def run_target(self) -> Target:
        """The target its run carries (a ``notify`` task's is ``Target(notify=...)``)."""
        if self.target is not None:
            return self.target
        if self.wait is not None:
            return Target(wait=self.wait)
        return Target(notify=self.notify)


class PipelineSpec(_Frozen):
    """A graph of tasks run as one pipeline run (``pipelines:`` in the schedules file).

    The graph's rules (no cycles, known ``after`` ids, unique task ids) are checked by
    :func:`firecron.core.pipeline_checks.problems`, one line per problem.
    """

    id: str = Field(pattern=SCHEDULE_ID_PATTERN)
    """Unique among the file's pipelines; schedules name it in ``target: {pipeline: ID}``."""
    description: str = ""
    """Free text."""
    params: dict[str, JsonValue] = Field(default_factory=dict)
    """Defaults under the schedule's params."""
    max_parallel: int | None = Field(default=None, ge=1, le=MAX_PIPELINE_TASKS)
    """At most this many tasks run at once (None: no bound)."""
    timeout: Duration | None = None
    """The pipeline run fails after this, and its unfinished tasks are cancelled."""
    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_PIPELINE_TASKS)
    """The tasks, in any order."""

    @field_validator("params")
    @classmethod
    def _check_params(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return check_strict_json(value, "params")

    def task(self, task_id: str) -> TaskSpec:
        """The task with this id (KeyError if none)."""
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)


class ScheduleSpec(_Frozen):
    """One schedule as written in the schedules YAML. Unknown keys are errors."""

    id: str = Field(pattern=SCHEDULE_ID_PATTERN)
    """Unique id: lowercase letters, digits, ``_`` and ``-``, at most 63 characters."""
    description: str = ""
    """Free text shown by ``firecron show``."""
    timezone: str = "UTC"
    """IANA zone in which ``cron``, the frequencies and naive times are read."""
    cron: str | None = None
    """Cron expression (5 fields, or 6 with seconds first) or macro (``@daily``...)."""
    every: Duration | None = None
    """Fixed interval, anchored at ``start_at`` or the Unix epoch."""
    at: AwareDatetime | None = None
    """One-shot instant."""
    hourly: HourlySpec | None = None
    """Every hour at a minute past it."""
    daily: DailyTimes | None = None
    """Every day at a time (``"02:30"``) or at each of a list of times."""
    weekly: WeeklySpec | None = None
    """On chosen weekdays at a time."""
    monthly: MonthlySpec | None = None
    """On a day of the month (``1``, ``last``, ``-3``) at a time."""
    target: Target
    """Where runs are POSTed."""
    params: dict[str, JsonValue] = Field(default_factory=dict)
    """JSON parameters passed to every run (a manual trigger may override keys)."""
    enabled: bool = True
    """A disabled schedule keeps its definition but never fires."""
    start_at: AwareDatetime | None = None
    """No occurrence before this instant."""
    end_at: AwareDatetime | None = None
    """No occurrence after this instant."""
    max_runs: int | None = Field(default=None, ge=1)
    """Stop after this many fired occurrences."""
    jitter: Duration = timedelta(0)
    """Deterministic fire delay in ``[0, jitter)``; ``scheduled_for`` stays nominal."""
    expected_duration: Duration | None = None
    """SLA: a run still running after this emits one SLA-breach event."""
    timeout: Duration | None = None
    """A run still running after this is ``timed_out`` and asked to stop."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    """Retry policy."""
    overlap: OverlapPolicy = OverlapPolicy.skip
    """Overlap policy."""
    misfire: MisfirePolicy = Field(default_factory=MisfirePolicy)
    """Misfire policy."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form key/value labels, used by notification rules and listings."""
    retention: Duration | None = None
    """How long finished runs are kept (default ``FIRECRON_RUN_RETENTION``, 30 days)."""
    notify: list[Route] = Field(default_factory=list)
    """Notification routes; filled by ``firecron apply`` from the file's ``notifications`` rules."""
    then: list[ChainStep] = Field(default_factory=list, max_length=50)
    """Schedules to run at once when a run of this one ends (see :class:`ChainStep`)."""
    pipeline_spec: PipelineSpec | None = None
    """For a ``target: {pipeline: ID}``: that pipeline's definition, filled from the file's
    ``pipelines:`` when it is read (a snapshot, like ``notify``)."""
    wait: WaitSpec | None = None
    """A gate: each occurrence's run is ``waiting`` until the wait's condition holds, then
    fires its target (a manual trigger waits too, unless told not to)."""
    continuous: ContinuousSpec | None = None
    """Exactly one instance, 24/7 (in place of any other trigger): see
    :class:`ContinuousSpec`. Needs a worker target."""
    heartbeat_timeout: Duration | None = None
    """A running run's lease: with no renewal for this long it is lost (default: the
    watchdog's 5 minutes); the longest a dead worker goes unnoticed, plus one tick."""
    managed_by: Literal["file", "api"] = "file"
    """Who owns the definition: ``file`` (a schedules file, through ``firecron apply``) or
    ``api`` (created or replaced through the admin API, which sets it). ``apply --prune``
    never deletes an ``api`` schedule; applying a file that defines the same id takes it
    over (it becomes ``file``). As input (a schedules file, an API body) only ``file`` is
    accepted: ``api`` is the API's to set."""

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from firecron.core.triggers import validate_timezone

        return validate_timezone(value)

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A cron that never fires is refused as input only: a record stored before that
        # rule (it was accepted, and is exhausted) must still read back, or one old
        # schedule would break `list` and every read of the store.
        return None if value is None else _validated_cron(value, _is_input(info))

    @field_validator("params", mode="before")
    @classmethod
    def _check_params_depth(cls, value: Any, info: ValidationInfo) -> Any:
        # Before pydantic's own walk, which recurses once per level.
        if _is_input(info):
            problem = params_depth_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("params")
    @classmethod
    def _check_params(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return check_strict_json(value, "params")

    @field_validator("heartbeat_timeout")
    @classmethod
    def _check_heartbeat_timeout(cls, value: timedelta | None) -> timedelta | None:
        # The SDK beats three times per timeout; below 3s that is more than one write a
        # second per run, and a scheduling hiccup would declare a live run lost.
        if value is not None and not timedelta(seconds=3) <= value <= timedelta(days=1):
            raise ValueError("heartbeat_timeout must be between 3s and 1d")
        return value

    @field_validator("every")
    @classmethod
    def _check_every(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(seconds=1):
            raise ValueError("interval must be at least 1s")
        return value

    @field_validator("managed_by")
    @classmethod
    def _check_managed_by(cls, value: str, info: ValidationInfo) -> str:
        if value != "file" and _is_input(info):
            raise ValueError("managed_by: api is set by the admin API only; leave it out")
        return value

    _instants = field_validator("at", "start_at", "end_at", mode="before")(_instant_field)

    @model_validator(mode="after")
    def _check_trigger(self) -> Self:
        # A tuple of names, not ``TriggerKind``: iterating an enum cost more than the
        # rest of this check, once per schedule of a large file.
        given = [name for name in TRIGGER_FIELDS if getattr(self, name) is not None]
        if len(given) > 1:
            # None at all is an on-demand schedule: it runs when triggered or chained.
            names = ", ".join(f"'{name}'" for name in TRIGGER_FIELDS[:-1])
            raise ValueError(
                f"set at most one of {names} or '{TRIGGER_FIELDS[-1]}' (found: {', '.join(given)})"
            )
        if self.continuous is not None and not self.target.is_worker:
            raise ValueError(
                "a continuous schedule needs a worker target (function, or worker: true)"
            )
        if self.start_at and self.end_at and self.end_at < self.start_at:
            raise ValueError("end_at is before start_at")
        if self.timeout and self.expected_duration and self.expected_duration > self.timeout:
            raise ValueError("expected_duration is longer than timeout")
        return self

    @property
    def on_demand(self) -> bool:
        """True when the schedule has no trigger: it never fires by itself, only when
        triggered, chained or submitted from code."""
        return self.trigger_field is None

    @property
    def trigger_field(self) -> str | None:
        """The name of the one trigger field set (:data:`TRIGGER_FIELDS`), or None."""
        return next((name for name in TRIGGER_FIELDS if getattr(self, name) is not None), None)

    @property
    def frequency(self) -> Frequency | None:
        """The prebuilt frequency (``hourly``, ``daily``, ``weekly`` or ``monthly``) this
        schedule fires on, or ``None`` when it uses another trigger or none."""
        if self.hourly is not None:
            return Frequency.of_hourly(self.hourly.minute)
        if self.daily is not None:
            return Frequency.of_daily(self.daily)
        if self.weekly is not None:
            return Frequency.of_weekly(self.weekly.days, self.weekly.at)
        if self.monthly is not None:
            return Frequency.of_monthly(self.monthly.day, self.monthly.at)
        return None

    def trigger_fields(self) -> tuple[object, ...]:
        """The fields that decide *when* the schedule fires; a change re-plans ``next_fire_at``."""
        return (
            *(getattr(self, name) for name in TRIGGER_FIELDS),
            self.timezone,
            self.start_at,
            self.end_at,
            self.enabled,
            self.max_runs,
            self.jitter,
        )


class ScheduleState(_Frozen):
    """What the dispatcher keeps about a schedule between ticks.

    Invariant: ``next_fire_at`` is ``None`` exactly when the schedule is idle (paused,
    disabled or exhausted), so the due query never returns, nor reads, idle schedules.
    """

    next_fire_at: AwareDatetime | None = None
    """Instant (jitter included) at which the next occurrence is due. Indexed."""
    next_occurrence: AwareDatetime | None = None
    """Nominal time of that occurrence (what the run's ``scheduled_for`` will be)."""
    last_occurrence: AwareDatetime | None = None
    """Nominal time of the latest occurrence handled (fired, skipped or missed)."""
    last_run_id: str | None = None
    """Id of the latest run created for this schedule (for the overlap policy)."""
    run_count: int = 0
    """Occurrences fired (counts toward ``max_runs``)."""
    skipped_count: int = 0
    """Occurrences skipped by the overlap policy."""
    missed_count: int = 0
    """Occurrences not fired because of the misfire policy or grace."""
    paused: bool = False
    """Operator pause (``firecron pause``); survives re-applying the YAML."""
    paused_at: AwareDatetime | None = None
    """When it was paused; on resume the misfire policy judges what was missed since."""
    exhausted: bool = False
    """No occurrence remains (``at`` fired, ``end_at`` passed or ``max_runs`` reached)."""
    created_at: AwareDatetime | None = None
    """When the schedule was first applied."""
    updated_at: AwareDatetime | None = None
    """When the definition or the state last changed."""
    last_error: str | None = None
    """Why the latest tick could not plan, claim or fire this schedule (one line), until a
    later plan succeeds; the dispatcher then moved ``next_fire_at`` on by a backoff."""
    last_error_at: AwareDatetime | None = None
    """When ``last_error`` was recorded."""

    @property
    def status(self) -> str:
        """One word for listings: ``active``, ``paused``, ``exhausted`` or ``error``
        (``disabled`` comes from the spec)."""
        if self.paused:
            return "paused"
        if self.exhausted:
            return "exhausted"
        if self.last_error is not None:
            return "error"
        return "active"


class StoredSchedule(_Frozen):
    """A schedule as read from a store: definition, state and the compare-and-set token."""

    spec: ScheduleSpec
    """The definition."""
    state: ScheduleState
    """The dispatcher's state."""
    version: str
    """Opaque token that changes on every write; claims and updates must present it."""

    @property
    def id(self) -> str:
        """The schedule id."""
        return self.spec.id

    @property
    def status(self) -> str:
        """``disabled``, ``paused``, ``exhausted``, ``error`` or ``active``."""
        return "disabled" if not self.spec.enabled else self.state.status
