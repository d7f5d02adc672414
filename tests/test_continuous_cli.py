"""``firecron show`` and ``firecron runs`` of a continuous schedule, and the dev view.

Generations are stored through the store API (with known times, so each gap is exact)
or made by a dispatcher driven by explicit ticks; the real ``firecron`` command then
reads them from the same store, SQLite or Firestore (the emulator).
"""

from __future__ import annotations

import io
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from _backend import Backend
from _cli import clean_env, run_cli
from _factories import make_run, store_schedule
from firecron.core.generations import history
from firecron.core.models import StoredSchedule
from firecron.core.runs import Run, RunState, generation_run_id
from firecron.dev import DevStack, live_generations
from firecron.settings import Settings
from firecron.store import Store

WORKER = {"url": "https://worker.example.com/tail", "worker": True}


def _generation(
    schedule_id: str,
    n: int,
    state: RunState,
    created: datetime,
    *,
    started: datetime | None = None,
    ended: datetime | None = None,
    failures: int = 0,
    caused: bool = True,
    **extra: Any,
) -> Run:
    """Generation ``n`` of ``schedule_id`` as the dispatcher would have stored it."""
    return make_run(
        schedule_id,
        created,
        state=state,
        run_id=generation_run_id(schedule_id, n),
        generation=n,
        window=timedelta(minutes=10),
        target=WORKER,
        started_at=started,
        heartbeat_at=extra.pop("heartbeat_at", started),
        ended_at=ended,
        failures=failures,
        cause_run_id=generation_run_id(schedule_id, n - 1) if caused and n > 1 else None,
        **extra,
    )


def _z(t: datetime | None) -> str:
    """``t`` as the CLI prints it (RFC 3339, UTC, ``Z``)."""
    assert t is not None
    return t.isoformat().replace("+00:00", "Z")


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def _value(out: str, field: str) -> str:
    """The VALUE of ``field`` in show's FIELD/VALUE table (a live generation's rows are
    indented under it)."""
    for line in out.splitlines():
        if line.lstrip().startswith(field + "  "):
            return line.lstrip()[len(field) :].strip()
    raise AssertionError(f"no {field!r} row in:\n{out}")


def _rows(out: str, title: str) -> list[list[str]]:
    """The rows (split on runs of 2+ spaces) of the table titled ``title``."""
    import re

    lines = [line.strip() for line in out.splitlines()]
    start = lines.index(title)
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


async def _seed(store: Store, now: datetime) -> list[Run]:
    """Generations of ``tailer``: g1 handed over 26 h ago (outside the 24 h); g2 was
    lost 3 h ago, g3 followed 10 s later and ran its course, g4 followed 200 ms later
    and failed, g5 followed 500 ms later and failed 20 s ago, and g6 waits its
    backoff (2 crashes in a row) until 40 s from now."""
    h = timedelta(hours=1)
    ms = timedelta(milliseconds=1)
    g1_end = now - 26 * h
    g2_end, g3_end, g4_end, g5_end = now - 3 * h, now - 2 * h, now - 1 * h, now - 20 * ms * 1000
    runs = [
        _generation(
            "tailer",
            1,
            RunState.succeeded,
            now - 27 * h,
            started=now - 27 * h,
            ended=g1_end,
            caused=False,
        ),
        _generation(
            "tailer",
            2,
            RunState.lost,
            g1_end,
            started=g1_end + 300 * ms,
            ended=g2_end,
            heartbeat_at=g2_end - timedelta(seconds=30),
        ),
        _generation(
            "tailer",
            3,
            RunState.succeeded,
            g2_end,
            started=g2_end + timedelta(seconds=10),
            ended=g3_end,
            failures=1,
        ),
        _generation(
            "tailer",
            4,
            RunState.failed,
            g3_end,
            started=g3_end + 200 * ms,
            ended=g4_end,
            error="boom",
        ),
        _generation(
            "tailer",
            5,
            RunState.failed,
            g4_end,
            started=g4_end + 500 * ms,
            ended=g5_end,
            failures=1,
            error="boom",
        ),
        _generation(
            "tailer",
            6,
            RunState.queued,
            g5_end,
            failures=2,
            blocked_by=generation_run_id("tailer", 5),
            deadline_at=now + timedelta(seconds=40),
        ),
    ]
    for run in runs:
        assert await store.create_run(run) is not None
    # As the handoffs left it: its state names the live generation.
    stored = await store.get_schedule("tailer")
    assert stored is not None
    state = stored.state.model_copy(
        update={
            "last_run_id": runs[-1].id,
            "run_count": 6,
            "next_fire_at": None,
            "next_occurrence": None,
        }
    )
    await store.put_schedule(stored.spec, state, expect_version=stored.version)
    return runs


async def _store_tailer(store: Store, now: datetime) -> None:
    await store_schedule(
        store,
        now,
        id="tailer",
        continuous={"window": "10m"},
        heartbeat_timeout="30s",
        target=WORKER,
        retry={"backoff": "20s", "max_backoff": "1m"},
    )


async def test_show_tells_the_live_generation_and_the_handoffs_of_the_last_day(
    backend: Backend,
) -> None:
    now = datetime.now(UTC)
    await _store_tailer(backend.store, now)
    runs = await _seed(backend.store, now)
    env = backend.env()

    out = _ok(run_cli("show", "tailer", env=env))
    assert _value(out, "trigger").startswith("continuous (window 10m)  —  continuously")
    assert _value(out, "heartbeat timeout") == "30s"
    assert _value(out, "live generation") == "6  tailer@g0000000006  queued"
    assert _value(out, "started") == "not yet"
    assert _value(out, "last heartbeat") == "-"
    assert _value(out, "window ends") == "-"
    deadline = runs[-1].deadline_at
    assert deadline is not None
    assert _value(out, "crashes in a row") == (
        f"2, waits until {deadline.isoformat().replace('+00:00', 'Z')}"
    )
    # g1 -> g2 was 26 h ago: not counted. Gaps 10s, 200ms, 500ms; g6 has not started.
    assert _value(out, "handoffs (24 h)") == "4, gap p50 500ms, max 10s, 1 waiting"
    assert "Next fire times" not in out

    g2, g3, g4, g5 = runs[1:5]
    assert _rows(out, "Last handoffs") == [
        [
            "5 -> 6",
            _z(g5.ended_at),
            "failed (crash)",
            f"waiting since {_z(g5.ended_at)} (until {_z(deadline)})",
        ],
        ["4 -> 5", _z(g4.ended_at), "failed (crash)", "500ms"],
        ["3 -> 4", _z(g3.ended_at), "succeeded", "200ms"],
        ["2 -> 3", _z(g2.ended_at), "lost (crash)", "10s"],
    ]

    data = json.loads(_ok(run_cli("show", "tailer", "--json", env=env)))
    continuous = data["continuous"]
    assert continuous["window"] == "10m"
    assert continuous["heartbeat_timeout"] == "30s"
    assert continuous["heartbeat_timeout_is_default"] is False
    assert continuous["live"] == {
        "generation": 6,
        "run_id": "tailer@g0000000006",
        "state": "queued",
        "started_at": None,
        "heartbeat_at": None,
        "window_end": None,
        "crashes_in_a_row": 2,
        "waits_until": _z(deadline),
    }
    handoffs = continuous["handoffs"]
    assert (handoffs["count"], handoffs["waiting"], handoffs["truncated"]) == (4, 1, False)
    assert (handoffs["gap_p50_s"], handoffs["gap_max_s"]) == (0.5, 10.0)
    assert [
        (h["from_generation"], h["to_generation"], h["from_state"], h["crashed"], h["gap_s"])
        for h in handoffs["last"]
    ] == [
        (5, 6, "failed", True, None),
        (4, 5, "failed", True, 0.5),
        (3, 4, "succeeded", False, 0.2),
        (2, 3, "lost", True, 10.0),
    ]
    assert data["next"] == []
    # list names the trigger too (not as an `at` with no instant).
    [row] = [r for r in json.loads(_ok(run_cli("list", "--json", env=env)))["schedules"]]
    assert row["trigger"] == "continuous (window 10m)"

    # runs --schedule lists the generations with their numbers; --json has the fields.
    listed = _ok(run_cli("runs", "--schedule", "tailer", env=env)).splitlines()
    assert listed[0].split()[:3] == ["RUN", "GEN", "STATE"]
    assert [line.split()[:3] for line in listed[1:]] == [
        [generation_run_id("tailer", n), str(n), state]
        for n, state in [
            (6, "queued"),
            (5, "failed"),
            (4, "failed"),
            (3, "succeeded"),
            (2, "lost"),
            (1, "succeeded"),
        ]
    ]
    dumped = json.loads(_ok(run_cli("runs", "--schedule", "tailer", "--json", env=env)))
    assert [(r["generation"], r["failures"], r["window"]) for r in dumped[:2]] == [
        (6, 2, "10m"),
        (5, 1, "10m"),
    ]


async def test_a_running_generation_and_a_day_without_handoffs(backend: Backend) -> None:
    """The live generation's start, heartbeat and window end; no handoff in 24 h; the
    default heartbeat timeout; and a plain schedule's listing keeps its columns."""
    now = datetime.now(UTC)
    await store_schedule(
        backend.store, now, id="steady", continuous={"window": "10m"}, target=WORKER
    )
    started = now - timedelta(minutes=3)
    beat = now - timedelta(seconds=20)
    live = _generation(
        "steady",
        1,
        RunState.running,
        started,
        started=started,
        heartbeat_at=beat,
        caused=False,
    )
    assert await backend.store.create_run(live) is not None
    await store_schedule(backend.store, now, id="plain", every="1h", target=WORKER)
    assert await backend.store.create_run(make_run("plain", now, target=WORKER)) is not None
    env = backend.env()

    out = _ok(run_cli("show", "steady", env=env))
    assert _value(out, "heartbeat timeout") == "5m (default)"
    assert _value(out, "live generation") == "1  steady@g0000000001  running"
    z = started.isoformat().replace("+00:00", "Z")
    assert _value(out, "started") == z
    assert _value(out, "last heartbeat").startswith(beat.isoformat().replace("+00:00", "Z"))
    assert _value(out, "last heartbeat").endswith(" ago)")
    window_end = (started + timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    assert _value(out, "window ends") == window_end
    assert "crashes in a row" not in out
    assert _value(out, "handoffs (24 h)") == "0"
    assert out.rstrip().splitlines()[-1] == "Handoffs: none in the last 24 h"

    plain = _ok(run_cli("runs", "--schedule", "plain", env=env)).splitlines()
    assert plain[0].split()[:2] == ["RUN", "STATE"]
    shown = _ok(run_cli("show", "plain", env=env))
    assert "live generation" not in shown
    assert "Next fire times" in shown
    assert "continuous" not in json.loads(_ok(run_cli("show", "plain", "--json", env=env)))


async def test_show_after_a_generation_crashed(backend: Backend) -> None:
    """A dispatcher driven by an explicit tick: generation 1's dispatch fails (nothing
    listens), a crash; generation 2 waits its backoff. show says so; then g2 starts and
    the gap is its wait."""
    from _sinks import closed_port

    now = datetime.now(UTC)
    await store_schedule(
        backend.store,
        now,
        id="crashy",
        continuous={"window": "1m"},
        target={"url": f"http://127.0.0.1:{closed_port()}/w", "worker": True},
        retry={"backoff": "10s", "max_backoff": "30s", "multiplier": 2},
    )
    d = backend.dispatcher()
    d.clock = lambda: now
    try:
        await d.tick(now)
    finally:
        await d.aclose()
    env = backend.env()
    g1 = await backend.store.get_run(generation_run_id("crashy", 1))
    g2 = await backend.store.get_run(generation_run_id("crashy", 2))
    assert g1 is not None
    assert g2 is not None
    assert g1.state is RunState.failed
    assert g2.state is RunState.queued
    out = _ok(run_cli("show", "crashy", env=env))
    assert _value(out, "live generation") == "2  crashy@g0000000002  queued"
    until = now + timedelta(seconds=10)
    assert _value(out, "crashes in a row") == (
        f"1, waits until {until.isoformat().replace('+00:00', 'Z')}"
    )
    assert _value(out, "handoffs (24 h)") == "1, 1 waiting"
    [row] = _rows(out, "Last handoffs")
    assert row[:3] == ["1 -> 2", _z(g1.ended_at), "failed (crash)"]
    assert row[3].startswith("waiting since ")

    # Its worker starts it 12 s after g1 failed: the gap of that handoff.
    assert g1.ended_at is not None
    began = g1.ended_at + timedelta(seconds=12)
    moved = await backend.store.update_run(
        g2.id,
        [RunState.queued],
        {"state": RunState.running, "started_at": began, "heartbeat_at": began},
    )
    assert moved is not None
    out = _ok(run_cli("show", "crashy", env=env))
    assert _value(out, "live generation") == "2  crashy@g0000000002  running"
    assert _value(out, "handoffs (24 h)") == "1, gap p50 12s, max 12s"
    assert _rows(out, "Last handoffs")[0][3] == "12s"


def test_history_is_partial_when_a_full_page_does_not_reach_the_period() -> None:
    now = datetime(2027, 1, 1, tzinfo=UTC)
    since = now - timedelta(hours=24)
    page = [
        _generation(
            "t",
            n,
            RunState.succeeded,
            now - timedelta(minutes=n),
            started=now - timedelta(minutes=n),
            ended=now - timedelta(minutes=n - 1),
        )
        for n in range(1, 4)
    ]
    assert history(page, since, limit=3).truncated
    assert not history(page, since, limit=4).truncated
    assert not history(page, since).truncated
    older = [*page[:2], page[2].model_copy(update={"created_at": since - timedelta(seconds=1)})]
    assert not history(older, since, limit=3).truncated


async def test_the_dev_view_marks_a_continuous_schedule(backend: Backend, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    await _store_tailer(backend.store, now)
    await _seed(backend.store, now)
    await store_schedule(backend.store, now, id="hourly", every="1h", target=WORKER)
    schedules = await backend.store.list_schedules()
    live = await live_generations(backend.store, schedules)
    assert {k: v.id for k, v in live.items()} == {"tailer": generation_run_id("tailer", 6)}

    stack = DevStack(
        Settings().with_store(backend.url),
        None,
        port=1,
        source=tmp_path / "main.py",
        console=Console(file=io.StringIO(), width=300),
    )
    shown = io.StringIO()
    Console(file=shown, width=300).print(stack._view(schedules, [], [], live))
    lines = [line.strip() for line in shown.getvalue().splitlines()]
    [tailer] = [line for line in lines if line.startswith("tailer ")]
    assert "continuous (window 10m) · gen 6 queued" in tailer
    [hourly] = [line for line in lines if line.startswith("hourly ")]
    assert "continuous" not in hourly
    # Without the live generations (not read yet), it is still marked continuous.
    bare = io.StringIO()
    Console(file=bare, width=300).print(stack._view(_only(schedules, "tailer"), [], []))
    assert "continuous (window 10m)" in bare.getvalue()
    assert "gen " not in bare.getvalue()


def _only(schedules: list[StoredSchedule], schedule_id: str) -> list[StoredSchedule]:
    return [s for s in schedules if s.id == schedule_id]


def test_show_says_when_the_day_holds_more_generations_than_it_read(tmp_path: Path) -> None:
    """501 generations a minute apart, all within the day: show reads the newest 500 and
    says its counts are partial."""
    import asyncio

    from firecron.store import open_store

    url = f"sqlite:///{tmp_path / 'many.db'}"
    now = datetime.now(UTC)
    minute = timedelta(minutes=1)

    async def seed() -> None:
        store = open_store(url)
        try:
            await store_schedule(store, now, id="busy", continuous={"window": "1m"}, target=WORKER)
            first = now - 501 * minute
            for n in range(1, 502):
                begin = first + (n - 1) * minute
                ended = begin + minute - timedelta(milliseconds=100)
                done = n < 501
                run = _generation(
                    "busy",
                    n,
                    RunState.succeeded if done else RunState.running,
                    begin - timedelta(milliseconds=100),
                    started=begin,
                    ended=ended if done else None,
                )
                assert await store.create_run(run) is not None
        finally:
            await store.close()

    asyncio.run(seed())
    env = {**clean_env(), "FIRECRON_STORE": url}
    out = _ok(run_cli("show", "busy", env=env))
    # 500 runs read make 499 handoffs; each gap is the 100 ms between end and start.
    assert _value(out, "handoffs (24 h)") == (
        "499, gap p50 100ms, max 100ms (partial: only the newest 500 runs were read)"
    )
    data = json.loads(_ok(run_cli("show", "busy", "--json", env=env)))
    assert data["continuous"]["handoffs"]["truncated"] is True


async def test_the_piped_dev_view_prints_a_generation_s_end_after_newer_runs_hid_it(
    backend: Backend, tmp_path: Path
) -> None:
    """A generation lives for its window, while newer runs push it out of the recent
    ones: the piped view still prints its end, and its successor's start."""
    now = datetime.now(UTC)
    await store_schedule(
        backend.store, now, id="tailer", continuous={"window": "10m"}, target=WORKER
    )
    first = _generation("tailer", 1, RunState.running, now, started=now)
    assert await backend.store.create_run(first) is not None
    stored = await backend.store.get_schedule("tailer")
    assert stored is not None
    state = stored.state.model_copy(update={"last_run_id": first.id, "run_count": 1})
    assert await backend.store.put_schedule(stored.spec, state, expect_version=stored.version)
    out = io.StringIO()
    stack = DevStack(
        Settings().with_store(backend.url),
        None,
        port=1,
        source=tmp_path / "main.py",
        console=Console(file=out, width=300),
    )

    async def print_changes() -> list[str]:
        schedules = await backend.store.list_schedules()
        # No recent runs: newer ones pushed the generations out of that page.
        stack._print_changes(await stack._with_generations(backend.store, schedules, []))
        return [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]

    assert await print_changes() == ["tailer@g0000000001 running attempt 1"]
    ended = now + timedelta(minutes=10)
    assert await backend.store.update_run(
        first.id, [RunState.running], {"state": RunState.succeeded, "ended_at": ended}
    )
    second = _generation("tailer", 2, RunState.running, ended, started=ended)
    assert await backend.store.create_run(second) is not None
    stored = await backend.store.get_schedule("tailer")
    assert stored is not None
    state = stored.state.model_copy(update={"last_run_id": second.id, "run_count": 2})
    assert await backend.store.put_schedule(stored.spec, state, expect_version=stored.version)
    assert await print_changes() == [
        "tailer@g0000000001 running attempt 1",
        "tailer@g0000000001 succeeded attempt 1",
        "tailer@g0000000002 running attempt 1",
    ]
    assert await print_changes() == [  # nothing new: nothing printed, nothing read again
        "tailer@g0000000001 running attempt 1",
        "tailer@g0000000001 succeeded attempt 1",
        "tailer@g0000000002 running attempt 1",
    ]
    assert stack._generations == {second.id}
