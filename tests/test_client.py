"""``firecron.Client`` and ``firecron.AsyncClient`` on each store (SQLite, Firestore).

The client is the service layer of the CLI and the admin API run from Python: the tests
put schedules through it and read them back through the store, the CLI and the client,
check that it validates as a schedules file does (one error per field), and that it
raises the project's errors. Triggered runs go to a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import firecron
from _backend import Backend
from _sinks import serve
from firecron import service
from firecron.client import AsyncClient, Client
from firecron.core.models import ScheduleSpec
from firecron.core.runs import RunState, RunTrigger
from firecron.core.schedule_file import parse_schedule_file
from firecron.errors import ConflictError, FirecronError, InvalidInputError, NotFoundError

BIN = Path(sys.executable).parent


@pytest.fixture
def private_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets on 127.0.0.1 allowed (the sink), as for ``firecron dev``; no other
    ``FIRECRON_*`` setting leaks in from the environment running the tests."""
    for name in list(os.environ):
        if name.startswith("FIRECRON_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FIRECRON_ALLOW_PRIVATE_TARGETS", "1")


def client_of(backend: Backend) -> Client:
    return Client(backend.url, namespace=backend.namespace)


@pytest.mark.usefixtures("private_targets")
async def test_the_sync_client_manages_a_schedule_and_its_runs(backend: Backend) -> None:
    with serve() as sink, client_of(backend) as client:
        spec = ScheduleSpec(
            id="report",
            every="1h",
            target={"url": sink.url + "/report"},
            params={"region": "eu", "rows": 10},
        )
        put = client.put_schedule(spec)
        assert put.id == "report"
        assert put.spec.managed_by == "api"
        assert put.spec.params == {"region": "eu", "rows": 10}
        assert put.state.next_fire_at is not None
        # What the client wrote is what the store (and so every other face) reads.
        stored = await backend.store.get_schedule("report")
        assert stored is not None
        assert stored.spec == put.spec
        assert client.get_schedule("report") == stored
        assert [s.id for s in client.list_schedules()] == ["report"]

        assert client.pause("report").status == "paused"
        assert client.get_schedule("report").status == "paused"
        assert client.resume("report").status == "active"

        run = client.trigger("report", params={"rows": 99})
        assert run.schedule_id == "report"
        assert run.trigger is RunTrigger.manual
        assert run.params == {"region": "eu", "rows": 99}
        assert run.state is RunState.delivered
        assert [r.path for r in sink.requests] == ["/report"]
        assert json.loads(sink.requests[0].body)["params"] == {"region": "eu", "rows": 99}

        assert client.run(run.id) == run
        assert [r.id for r in client.runs(schedule_id="report")] == [run.id]
        assert client.runs(schedule_id="report", states=["failed"]) == []
        assert [r.id for r in client.runs(states=[RunState.delivered])] == [run.id]

        client.delete("report")
        assert await backend.store.get_schedule("report") is None
        with pytest.raises(NotFoundError, match="unknown schedule 'report'"):
            client.get_schedule("report")
        assert client.run(run.id).id == run.id  # the runs are kept


@pytest.mark.usefixtures("private_targets")
async def test_the_async_client_takes_a_schedules_file_entry(backend: Backend) -> None:
    async with AsyncClient(backend.url, namespace=backend.namespace) as client:
        for name in ("a", "b", "c"):
            entry = {"id": name, "cron": "0 9 * * MON-FRI", "timezone": "Europe/Berlin"}
            await client.put_schedule({**entry, "target": {"url": "https://example.com/x"}})
        first = await client.list_schedules(limit=2)
        assert [s.id for s in first] == ["a", "b"]
        rest = await client.list_schedules(after=first[-1].id, limit=2)
        assert [s.id for s in rest] == ["c"]
        got = await client.get_schedule("b")
        assert got.spec.cron == "0 9 * * MON-FRI"
        assert got.spec.timezone == "Europe/Berlin"
        paused = await client.pause("b")
        assert paused.status == "paused"
        with pytest.raises(NotFoundError):
            await client.run("b@nothing")


async def test_the_client_takes_frequencies_in_plain_words(backend: Backend) -> None:
    target = {"url": "https://example.com/x"}
    async with AsyncClient(backend.url, namespace=backend.namespace) as client:
        monthly = await client.put_schedule(
            {
                "id": "month-end",
                "monthly": {"day": "last", "at": "06:00"},
                "timezone": "Europe/Berlin",
                "target": target,
            }
        )
        weekly = await client.put_schedule(
            ScheduleSpec.model_validate(
                {
                    "id": "standup",
                    "weekly": {"days": ["mon", "fri"], "at": "09:00"},
                    "target": target,
                }
            )
        )
        with pytest.raises(InvalidInputError) as caught:
            await client.put_schedule(
                {"id": "bad", "weekly": {"days": ["fry"], "at": "25:00"}, "target": target}
            )
        assert await client.get_schedule("month-end") == monthly
    # The next occurrence is the month's last day, 06:00 in Berlin, as a calendar says.
    berlin = ZoneInfo("Europe/Berlin")
    nxt = monthly.state.next_occurrence
    assert nxt is not None
    local = nxt.astimezone(berlin)
    assert (local.hour, local.minute) == (6, 0)
    assert local.day == calendar.monthrange(local.year, local.month)[1]
    assert weekly.state.next_occurrence is not None
    assert weekly.state.next_occurrence.astimezone(UTC).strftime("%a %H:%M") in (
        "Mon 09:00",
        "Fri 09:00",
    )
    text = str(caught.value)
    assert "weekly.days" in text, text
    assert "weekly.at" in text, text


@pytest.mark.usefixtures("private_targets")
def test_the_client_validates_as_the_schedules_file_does(backend: Backend, tmp_path: Path) -> None:
    entry = {
        "id": "nightly",
        "cron": "30 2 * * *",
        "timezone": "America/New_York",
        "target": {"url": "https://example.com/nightly"},
        "retry": {"max_attempts": 5, "backoff": "30s"},
        "labels": {"team": "data"},
    }
    now = datetime.now(UTC)
    [from_file] = parse_schedule_file(
        json.dumps({"schedules": [entry]}), "f.yaml", now=now
    ).schedules
    with client_of(backend) as client:
        put = client.put_schedule(ScheduleSpec.model_validate(entry))
    assert put.spec == from_file.model_copy(update={"managed_by": "api"})


@pytest.mark.usefixtures("private_targets")
def test_invalid_schedules_are_refused_one_line_per_field(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = {
        "id": "bad",
        "cron": "61 * * * *",
        "target": {"url": "https://example.com/x"},
        "retry": {"max_attempts": 0},
    }
    with client_of(backend) as client:
        with pytest.raises(service.InvalidSchedule) as caught:
            client.put_schedule(bad)
        fields = [field for field, _ in caught.value.errors]
        assert "cron" in fields
        assert "retry.max_attempts" in fields
        assert all("\n" not in line for _, line in caught.value.errors)
        assert isinstance(caught.value, InvalidInputError)
        with pytest.raises(service.InvalidSchedule) as missing:
            client.put_schedule({"cron": "* * * * *", "target": {"url": "https://example.com"}})
        assert missing.value.field == "id"
        assert client.list_schedules() == []
    # A model that pydantic accepts may still be refused by the file's rules: a private
    # target when FIRECRON_ALLOW_PRIVATE_TARGETS is off, as `firecron validate` refuses it.
    monkeypatch.delenv("FIRECRON_ALLOW_PRIVATE_TARGETS")
    with client_of(backend) as client:
        spec = ScheduleSpec(id="inside", every="1h", target={"url": "http://10.1.2.3/x"})
        with pytest.raises(service.InvalidSchedule) as refused:
            client.put_schedule(spec)
        assert refused.value.field is not None
        assert refused.value.field.startswith("target")
        assert client.list_schedules() == []


@pytest.mark.usefixtures("private_targets")
def test_the_client_raises_the_project_s_errors(backend: Backend) -> None:
    with client_of(backend) as client:
        for call in (
            lambda: client.get_schedule("nope"),
            lambda: client.pause("nope"),
            lambda: client.resume("nope"),
            lambda: client.delete("nope"),
            lambda: client.trigger("nope"),
            lambda: client.run("nope@20270101T000000Z"),
        ):
            with pytest.raises(NotFoundError):
                call()
        with pytest.raises(InvalidInputError, match="states"):
            client.runs(states=["exploded"])
        spec = ScheduleSpec(id="once", every="1d", target={"url": "https://example.com/x"})
        first = client.put_schedule(spec, create_only=True)
        with pytest.raises(ConflictError):
            client.put_schedule(spec, create_only=True)
        changed = spec.model_copy(update={"description": "changed"})
        second = client.put_schedule(changed, if_version=first.version)
        assert second.spec.description == "changed"
        with pytest.raises(ConflictError, match="version"):
            client.put_schedule(spec, if_version=first.version)  # stale
        with pytest.raises(ConflictError):
            client.delete("once", if_version=first.version)
        client.delete("once", if_version=second.version)
        assert client.list_schedules() == []


def test_the_client_reads_the_store_and_namespace_from_the_environment(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIRECRON_STORE", backend.url)
    monkeypatch.setenv("FIRECRON_NAMESPACE", backend.namespace)
    with firecron.Client() as client:
        assert client.settings.store_url == backend.url
        client.put_schedule(
            {"id": "from-env", "every": "5m", "target": {"url": "https://example.com/x"}}
        )
    # The CLI, on the same environment, sees it: one service, several faces.
    shown = subprocess.run(
        [str(BIN / "firecron"), "show", "from-env", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(shown.stdout)["id"] == "from-env"


def test_a_closed_client_refuses_calls_and_stops_its_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    client = Client(f"sqlite:///{tmp_path / 'c.db'}")
    assert client.list_schedules() == []
    client.close()
    client.close()  # idempotent
    assert set(threading.enumerate()) <= before
    with pytest.raises(FirecronError, match="closed"):
        client.list_schedules()


def test_the_sync_client_has_the_async_client_s_methods_and_arguments() -> None:
    """The twins cannot drift: every public method of one is the other's, same arguments."""
    import inspect

    def methods(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if inspect.isfunction(member) and not name.startswith("_")
        }

    sync, async_ = methods(Client), methods(AsyncClient)
    assert set(sync) - {"close"} == set(async_) - {"aclose"}
    for name, signature in async_.items():
        if name != "aclose":
            assert sync[name].parameters == signature.parameters, name


@pytest.mark.usefixtures("private_targets")
async def test_writes_are_stamped_with_the_store_s_clock(backend: Backend) -> None:
    """A local clock a day behind: the client corrects it to the store's, as the API does,
    so a new schedule's first fire time is planned from the store's now, not the past."""
    behind = timedelta(days=1)
    async with AsyncClient(
        backend.url, namespace=backend.namespace, clock=lambda: datetime.now(UTC) - behind
    ) as client:
        put = await client.put_schedule(
            {"id": "hourly", "every": "1h", "target": {"url": "https://example.com/x"}}
        )
    store_now = await backend.store.clock()
    assert put.state.next_fire_at is not None
    # Uncorrected, it would be within the hour after the skewed now: a day in the past.
    assert put.state.next_fire_at > store_now - behind / 2
