"""The pure tick planner: misfire, overlap, max_runs, jitter, pause/resume. Time is passed in."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from _factories import T0, make_run
from firecron.core import planning
from firecron.core.models import ScheduleSpec, StoredSchedule
from firecron.core.runs import RunState, scheduled_run_id

MIN = timedelta(minutes=1)


def spec(**fields: Any) -> ScheduleSpec:
    base: dict[str, Any] = {"id": "job", "every": "1m", "target": {"function": "work"}}
    base.update(fields)
    return ScheduleSpec.model_validate(base)


def stored(s: ScheduleSpec, next_occurrence: Any = T0, **state: Any) -> StoredSchedule:
    st = planning.initial_state(s, next_occurrence - timedelta(microseconds=1))
    st = st.model_copy(update=state)
    return StoredSchedule(spec=s, state=st, version="1")


def test_not_due_plans_nothing() -> None:
    s = stored(spec())
    p = planning.plan(s, None, T0 - timedelta(seconds=1))
    assert p.runs == []
    assert p.new_state == s.state


def test_on_time_occurrence_fires_one_pending_run() -> None:
    s = stored(spec())
    p = planning.plan(s, None, T0 + timedelta(seconds=3))
    assert [r.id for r in p.to_fire] == [scheduled_run_id("job", T0)]
    run = p.runs[0]
    assert run.state is RunState.pending
    assert run.scheduled_for == T0
    assert run.watch_at == T0 + timedelta(seconds=3) + timedelta(minutes=2)
    assert p.new_state.next_occurrence == T0 + MIN
    assert p.new_state.next_fire_at == T0 + MIN
    assert p.new_state.last_occurrence == T0
    assert p.new_state.last_run_id == run.id
    assert p.new_state.run_count == 1


def test_plan_is_deterministic() -> None:
    s = stored(spec(jitter="30s"))
    now = T0 + timedelta(minutes=5)
    assert planning.plan(s, None, now) == planning.plan(s, None, now)


def test_coalesce_fires_latest_missed_once() -> None:
    s = stored(spec(), next_occurrence=T0 - 10 * MIN)
    p = planning.plan(s, None, T0)
    assert [r.scheduled_for for r in p.to_fire] == [T0]
    assert p.coalesced == 10
    assert p.missed_count == 0
    assert p.new_state.next_occurrence == T0 + MIN


def test_all_fires_each_missed_occurrence() -> None:
    s = stored(spec(misfire={"policy": "all"}, overlap="allow"), next_occurrence=T0 - 10 * MIN)
    p = planning.plan(s, None, T0)
    assert [r.scheduled_for for r in p.to_fire] == [T0 - i * MIN for i in range(10, -1, -1)]
    assert p.new_state.run_count == 11


def test_all_caps_at_100_per_tick_and_continues_next_tick() -> None:
    s = stored(
        spec(every="1s", misfire={"policy": "all"}, overlap="allow"),
        next_occurrence=T0 - timedelta(seconds=499),
    )
    p = planning.plan(s, None, T0)
    assert len(p.to_fire) == planning.MAX_FIRE_PER_TICK
    assert p.new_state.next_occurrence == T0 - timedelta(seconds=399)
    assert p.new_state.next_fire_at is not None
    assert p.new_state.next_fire_at <= T0
    again = planning.plan(StoredSchedule(spec=s.spec, state=p.new_state, version="2"), None, T0)
    assert again.to_fire[0].scheduled_for == T0 - timedelta(seconds=399)


def test_skip_fires_only_the_on_time_occurrence() -> None:
    s = stored(spec(misfire="skip"), next_occurrence=T0 - 10 * MIN)
    p = planning.plan(s, None, T0 + timedelta(seconds=5))
    assert [r.scheduled_for for r in p.to_fire] == [T0]
    assert p.missed_count == 10
    assert p.missed[0] == T0 - 10 * MIN
    assert p.new_state.missed_count == 10


def test_skip_fires_nothing_when_even_the_latest_is_late() -> None:
    s = stored(spec(every="1h", misfire="skip"), next_occurrence=T0)
    p = planning.plan(s, None, T0 + 30 * MIN)
    assert p.to_fire == []
    assert p.missed == [T0]
    assert p.new_state.next_occurrence == T0 + timedelta(hours=1)


def test_occurrences_older_than_grace_are_missed_not_fired() -> None:
    s = stored(
        spec(every="1h", misfire={"policy": "all", "grace": "3h"}, overlap="allow"),
        next_occurrence=T0 - timedelta(hours=10),
    )
    p = planning.plan(s, None, T0)
    fired = [r.scheduled_for for r in p.to_fire]
    assert fired == [T0 - timedelta(hours=h) for h in (3, 2, 1, 0)]
    assert p.missed_count == 7
    assert p.new_state.missed_count == 7


def test_max_runs_exhausts_the_schedule() -> None:
    s = stored(
        spec(max_runs=3, misfire={"policy": "all"}, overlap="allow"),
        next_occurrence=T0 - 5 * MIN,
        run_count=2,
    )
    p = planning.plan(s, None, T0)
    assert len(p.to_fire) == 1
    assert p.new_state.run_count == 3
    assert p.new_state.exhausted is True
    assert p.new_state.next_fire_at is None


def test_at_fires_once_then_is_exhausted() -> None:
    s = spec(every=None, at="2027-01-01T00:00:00Z")
    st = planning.initial_state(s, T0 - timedelta(hours=1))
    assert st.next_fire_at == T0
    p = planning.plan(StoredSchedule(spec=s, state=st, version="1"), None, T0)
    assert len(p.to_fire) == 1
    assert p.new_state.exhausted
    assert p.new_state.next_fire_at is None
    # Applied after its instant but within misfire.grace (24h): due now, not lost.
    late = planning.initial_state(s, T0 + MIN)
    assert late.next_occurrence == T0
    assert (
        len(planning.plan(StoredSchedule(spec=s, state=late, version="1"), None, T0 + MIN).to_fire)
        == 1
    )
    # Past the grace it can never fire (validate refuses it): exhausted.
    assert planning.initial_state(s, T0 + timedelta(hours=25)).exhausted is True


def test_a_late_applied_at_with_misfire_skip_is_recorded_missed_not_dropped() -> None:
    s = spec(every=None, at="2027-01-01T00:00:00Z", misfire="skip")
    st = planning.initial_state(s, T0 + timedelta(minutes=10))
    p = planning.plan(
        StoredSchedule(spec=s, state=st, version="1"), None, T0 + timedelta(minutes=10)
    )
    assert p.to_fire == []
    assert p.missed == [T0]
    assert p.new_state.exhausted


def test_a_recurring_schedule_never_fires_occurrences_from_before_it_existed() -> None:
    st = planning.initial_state(spec(), T0 + timedelta(seconds=30))
    assert st.next_occurrence is not None
    assert st.next_occurrence > T0 + timedelta(seconds=30)


def test_overlap_skip_records_a_skipped_run_for_workers() -> None:
    s = stored(spec(), last_run_id="job@prev")
    active = make_run("job", T0 - MIN, state=RunState.running, run_id="job@prev")
    p = planning.plan(s, active, T0)
    assert p.to_fire == []
    assert [(r.state, r.watch_at) for r in p.runs] == [(RunState.skipped, None)]
    assert p.new_state.skipped_count == 1
    assert p.new_state.last_run_id == "job@prev"
    assert p.new_state.next_occurrence == T0 + MIN


def test_overlap_does_not_apply_to_plain_url_targets() -> None:
    s = stored(spec(target={"url": "https://example.com/h"}))
    active = make_run("job", T0 - MIN, state=RunState.retry_wait)
    assert len(planning.plan(s, active, T0).to_fire) == 1


def test_overlap_allow_fires_while_active() -> None:
    s = stored(spec(overlap="allow"))
    active = make_run("job", T0 - MIN, state=RunState.running)
    assert len(planning.plan(s, active, T0).to_fire) == 1


def test_finished_latest_run_does_not_block() -> None:
    s = stored(spec())
    done = make_run("job", T0 - MIN, state=RunState.succeeded)
    assert len(planning.plan(s, done, T0).to_fire) == 1


def test_queue_one_queues_one_then_skips() -> None:
    s = stored(spec(overlap="queue_one"), last_run_id="job@prev")
    active = make_run("job", T0 - MIN, state=RunState.running, run_id="job@prev")
    p = planning.plan(s, active, T0)
    [queued] = p.runs
    assert queued.state is RunState.queued
    assert queued.blocked_by == "job@prev"
    assert queued.watch_at == T0
    assert p.new_state.last_run_id == queued.id
    # Next tick: the latest run is the queued one, so the new occurrence is skipped.
    s2 = StoredSchedule(spec=s.spec, state=p.new_state, version="2")
    p2 = planning.plan(s2, queued, T0 + MIN)
    assert [r.state for r in p2.runs] == [RunState.skipped]


def test_all_with_overlap_skip_fires_first_and_skips_rest() -> None:
    s = stored(spec(misfire={"policy": "all"}), next_occurrence=T0 - 2 * MIN)
    p = planning.plan(s, None, T0)
    assert [r.state for r in p.runs] == [RunState.pending, RunState.skipped, RunState.skipped]


def test_jitter_moves_fire_time_not_scheduled_for() -> None:
    s = spec(every="1h", jitter="10m")
    st = planning.initial_state(s, T0 - timedelta(seconds=1))
    assert st.next_occurrence == T0
    assert st.next_fire_at is not None
    offset = st.next_fire_at - T0
    assert timedelta(0) <= offset < timedelta(minutes=10)
    stored_s = StoredSchedule(spec=s, state=st, version="1")
    if offset > timedelta(0):
        assert planning.plan(stored_s, None, st.next_fire_at - timedelta(milliseconds=1)).runs == []
    [run] = planning.plan(stored_s, None, st.next_fire_at).runs
    assert run.scheduled_for == T0
    assert run.fire_at == st.next_fire_at
    assert run.id == scheduled_run_id("job", T0)


def test_disabled_schedule_is_idle_not_exhausted() -> None:
    st = planning.initial_state(spec(enabled=False), T0)
    assert st.next_fire_at is None
    assert st.exhausted is False


def test_pause_then_resume_hands_missed_occurrences_to_the_misfire_policy() -> None:
    s = spec(every="1h")
    st = planning.initial_state(s, T0 - timedelta(seconds=1))
    p = planning.plan(StoredSchedule(spec=s, state=st, version="1"), None, T0)
    paused = planning.pause(s, p.new_state, T0 + 10 * MIN)
    assert paused.paused
    assert paused.next_fire_at is None
    assert paused.paused_at == T0 + 10 * MIN
    assert planning.pause(s, paused, T0 + 20 * MIN) == paused  # idempotent
    now = T0 + timedelta(hours=3, minutes=30)
    resumed = planning.resume(s, paused, now)
    assert not resumed.paused
    assert resumed.next_occurrence == T0 + timedelta(hours=1)
    p2 = planning.plan(StoredSchedule(spec=s, state=resumed, version="3"), None, now)
    assert [r.scheduled_for for r in p2.to_fire] == [T0 + timedelta(hours=3)]
    assert p2.coalesced == 2


def test_replan_keeps_state_unless_timing_changed() -> None:
    old = spec(every="1h")
    st = planning.initial_state(old, T0)
    st = st.model_copy(update={"run_count": 7})
    same_timing = spec(every="1h", params={"x": 1})
    assert planning.replan(same_timing, old, st, T0 + MIN) == st
    new = spec(every="15m")
    moved = planning.replan(new, old, st, T0 + MIN)
    assert moved.next_occurrence == T0 + 15 * MIN
    assert moved.run_count == 7


def test_runs_carry_retention_from_the_schedule_or_the_default() -> None:
    s = stored(spec(retention="3d"))
    [run] = planning.plan(s, None, T0, default_retention=timedelta(days=30)).runs
    assert run.retention == timedelta(days=3)
    [run] = planning.plan(stored(spec()), None, T0, default_retention=timedelta(days=30)).runs
    assert run.retention == timedelta(days=30)
    assert run.expire_at is None  # set when it ends


def test_missed_occurrences_leave_one_missed_run_with_its_event() -> None:
    s = stored(spec(misfire="skip"), next_occurrence=T0 - 10 * MIN)
    p = planning.plan(s, None, T0 + timedelta(seconds=5))
    missed = [r for r in p.runs if r.state is RunState.missed]
    assert len(missed) == 1
    [record] = missed
    assert record.scheduled_for == T0 - MIN  # the latest missed occurrence stands for all
    assert "10 occurrence(s)" in (record.error or "")
    assert [e.type.value for e in record.events] == ["run.missed"]
    assert record.deadline_at is None
    assert record.watch_at is None  # no sink to deliver to


def test_skipped_run_is_born_with_its_event_and_watched_for_delivery() -> None:
    from firecron.core.events import Route, WebhookSink

    hook = Route(
        sink_name="ops", types=(), sink=WebhookSink(type="webhook", url="https://h.example/x")
    )
    s = stored(spec(notify=[hook]), last_run_id="job@prev")
    active = make_run("job", T0 - MIN, state=RunState.running, run_id="job@prev")
    [skipped] = planning.plan(s, active, T0).runs
    [event] = skipped.events
    assert event.type.value == "run.skipped"
    assert [d.sink for d in event.deliveries] == ["ops"]
    assert skipped.watch_at == event.deliveries[0].next_at  # the watchdog will deliver it


# ------------------------------------------------------------------ on-demand schedules


def on_demand(**fields: Any) -> ScheduleSpec:
    return spec(every=None, **fields)


def test_an_on_demand_schedule_is_active_never_due_and_never_exhausted() -> None:
    s = on_demand()
    state = planning.initial_state(s, T0)
    assert (state.next_fire_at, state.next_occurrence, state.exhausted) == (None, None, False)
    assert state.status == "active"
    stored_on_demand = StoredSchedule(spec=s, state=state, version="1")
    for now in (T0, T0 + timedelta(days=3650)):
        p = planning.plan(stored_on_demand, None, now)
        assert (p.runs, p.new_state) == ([], state)


def test_the_trigger_of_an_on_demand_schedule_has_no_occurrence() -> None:
    trigger = planning.trigger_of(on_demand(timezone="Europe/Berlin"))
    assert trigger.kind == "on_demand"
    assert trigger.spec == "on demand"
    assert trigger.timezone == "Europe/Berlin"
    assert trigger.next_after(T0) is None
    assert trigger.occurrences(T0, 5) == []
    assert trigger.describe() == "runs only when triggered, chained or submitted from a worker"


def test_replan_between_a_trigger_and_on_demand() -> None:
    cron = spec(every=None, cron="*/5 * * * *")
    timed = planning.initial_state(cron, T0).model_copy(update={"run_count": 4, "last_run_id": "r"})
    # A trigger removed: idle, counters kept, not exhausted.
    idle = planning.replan(on_demand(), cron, timed, T0 + MIN)
    assert (idle.next_fire_at, idle.exhausted, idle.run_count, idle.last_run_id) == (
        None,
        False,
        4,
        "r",
    )
    # And back: the next occurrence strictly after now.
    again = planning.replan(cron, on_demand(), idle, T0 + 7 * MIN)
    assert again.next_fire_at == T0 + 10 * MIN
    # An exhausted one-shot turned on-demand is no longer exhausted.
    at = spec(every=None, at=T0.isoformat())
    plan = planning.plan(
        StoredSchedule(spec=at, state=planning.initial_state(at, T0 - MIN), version="1"), None, T0
    )
    fired = plan.new_state
    assert (len(plan.to_fire), fired.exhausted) == (1, True)
    assert planning.replan(on_demand(), at, fired, T0 + MIN).exhausted is False
    # Unchanged: the state is kept as it is.
    assert planning.replan(on_demand(), on_demand(), idle, T0 + 9 * MIN) is idle


def test_pause_and_resume_an_on_demand_schedule() -> None:
    s = on_demand()
    paused = planning.pause(s, planning.initial_state(s, T0), T0 + MIN)
    assert (paused.paused, paused.exhausted, paused.status) == (True, False, "paused")
    resumed = planning.resume(s, paused, T0 + 2 * MIN)
    assert (resumed.paused, resumed.next_fire_at, resumed.exhausted) == (False, None, False)
    assert resumed.status == "active"


# --- lookahead (Cloud Tasks delivery: occurrences of the coming minute planned at once) ---


def test_lookahead_plans_the_coming_minute_each_at_its_own_second() -> None:
    s = stored(spec(every="15s", target={"url": "https://x.example"}))
    p = planning.plan(s, None, T0 + timedelta(seconds=3), lookahead=MIN)
    seconds = [0, 15, 30, 45, 60]
    assert [r.scheduled_for for r in p.to_fire] == [T0 + timedelta(seconds=x) for x in seconds]
    assert [r.fire_at for r in p.to_fire] == [r.scheduled_for for r in p.to_fire]
    assert {r.state for r in p.runs} == {RunState.pending}
    assert p.new_state.next_occurrence == T0 + timedelta(seconds=75)
    assert p.new_state.last_occurrence == T0 + MIN
    assert p.new_state.run_count == 5
    # Without it, only the occurrence already due.
    plain = planning.plan(s, None, T0 + timedelta(seconds=3))
    assert [r.scheduled_for for r in plain.to_fire] == [T0]


def test_lookahead_plans_an_occurrence_not_yet_due() -> None:
    s = stored(spec(target={"url": "https://x.example"}))
    early = T0 - timedelta(seconds=30)
    assert planning.plan(s, None, early).runs == []
    p = planning.plan(s, None, early, lookahead=MIN)
    assert [(r.scheduled_for, r.fire_at) for r in p.to_fire] == [(T0, T0)]
    assert p.new_state.next_occurrence == T0 + MIN
    # The boundary is exclusive: an occurrence exactly a lookahead away is its own tick's.
    assert planning.plan(s, None, T0 - MIN, lookahead=MIN).runs == []


def test_lookahead_occurrences_are_on_time_whatever_the_misfire_policy() -> None:
    s = stored(
        spec(every="30s", target={"url": "https://x.example"}, misfire={"policy": "skip"}),
        next_occurrence=T0 - 10 * MIN,
    )
    p = planning.plan(s, None, T0 + timedelta(seconds=1), lookahead=MIN)
    # The late backlog is judged by the policy; the coming minute fires in full.
    fired = [r.scheduled_for for r in p.to_fire]
    assert fired == [T0, T0 + timedelta(seconds=30), T0 + MIN]
    assert p.missed_count == 20
