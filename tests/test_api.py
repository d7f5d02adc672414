"""The admin HTTP API (``firecron.api``) on both stores, through Flask's test client.

- Every endpoint: schedules (list paged, get, put, delete, pause, resume, trigger,
  backfill), runs (list filtered and paged, get, cancel, rerun), pipelines (list, get
  with the DAG), state (list, get, put, delete), openapi.json.
- Errors are problem documents (RFC 9457) naming the field at fault; the same
  validation as a schedules file.
- ``ETag``/``If-Match``: a stale version is 412 and writes nothing.
- A state-changing request without ``X-Requested-By: firecron`` is 403 and writes
  nothing; locally only loopback callers are answered.
- With an audience, callers need a real RS256 Google ID token (verified against a
  local certs endpoint) whose email is a member: none is 401, a stranger's is 403.
- ``managed_by: api`` schedules survive ``apply --prune``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import flask
import pytest
from flask.testing import FlaskClient
from google.auth import crypt as _crypt
from google.auth import jwt as _jwt
from werkzeug.test import TestResponse

from _backend import SECRET, Backend
from _certs import CertsServer, rsa_key_and_cert
from _factories import T0, make_run, make_spec
from _poll import apoll
from firecron import admin
from firecron.api import PREFIX, close, make_app, service_of
from firecron.core.logs import LogLine
from firecron.core.models import ScheduleSpec
from firecron.core.runs import RunState
from firecron.core.schedule_file import ScheduleFileError, parse_schedule_file
from firecron.settings import Settings
from firecron.store.base import Store

crypt: Any = _crypt
jwt: Any = _jwt

WRITE = {"X-Requested-By": "firecron"}
"""What every state-changing request carries."""
CLOSED_PORT_URL = "http://127.0.0.1:9/hook"
"""A target nothing listens on: a trigger's send fails at once, the run is recorded."""


@dataclass
class Api:
    """The app on one backend, its test client, and the backend's own store client."""

    app: flask.Flask
    client: FlaskClient
    backend: Backend

    @property
    def store(self) -> Store:
        return self.backend.store

    def get(self, path: str, **kw: Any) -> TestResponse:
        return self.client.get(PREFIX + path, **kw)

    def put(self, path: str, body: Any, headers: dict[str, str] | None = None) -> TestResponse:
        return self.client.put(PREFIX + path, json=body, headers={**WRITE, **(headers or {})})

    def post(
        self, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> TestResponse:
        return self.client.post(
            PREFIX + path,
            json=body if body is not None else {},
            headers={**WRITE, **(headers or {})},
        )

    def delete(self, path: str, headers: dict[str, str] | None = None) -> TestResponse:
        return self.client.delete(PREFIX + path, headers={**WRITE, **(headers or {})})


def _settings(backend: Backend, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "store_url": backend.url,
        "namespace": backend.namespace,
        "signing_secrets": (SECRET,),
        "allow_private_targets": True,
        "ack_timeout": timedelta(seconds=5),
        "event_log": False,
    }
    fields.update(overrides)
    return Settings(**fields)


@pytest.fixture
async def api(backend: Backend) -> AsyncIterator[Api]:
    app = make_app(_settings(backend), console=False)
    try:
        yield Api(app, app.test_client(), backend)
    finally:
        close(app)


def problem(response: TestResponse, status: int) -> dict[str, Any]:
    """The problem document of an error answer, checked to be one."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    doc: dict[str, Any] = response.get_json(force=True)
    assert doc["status"] == status
    assert doc["type"] == "about:blank"
    assert doc["title"]
    assert doc["detail"]
    assert "\n" not in doc["detail"]
    return doc


def entry(schedule_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A schedules-file entry as JSON: every hour, to a closed local port."""
    body: dict[str, Any] = {"every": "1h", "target": {"url": CLOSED_PORT_URL}}
    if schedule_id is not None:
        body["id"] = schedule_id
    body.update(fields)
    return body


# -- schedules -----------------------------------------------------------------------------


async def test_put_creates_then_replaces_and_get_lists_pages(api: Api) -> None:
    created = api.put("/schedules/a", entry(description="first"))
    assert created.status_code == 201, created.get_data(as_text=True)
    doc = created.get_json()
    assert doc["id"] == "a"
    assert doc["spec"]["managed_by"] == "api"
    assert doc["spec"]["every"] == "1h"
    assert doc["state"]["next_fire_at"] is not None
    assert created.headers["ETag"] == f'"{doc["version"]}"'

    got = api.get("/schedules/a")
    assert got.status_code == 200
    assert got.get_json() == doc
    assert got.headers["ETag"] == created.headers["ETag"]

    # A get's spec can be put back as it is (managed_by, notify, pipeline_spec included).
    replaced = api.put("/schedules/a", {**doc["spec"], "description": "second"})
    assert replaced.status_code == 200, replaced.get_data(as_text=True)
    assert replaced.get_json()["spec"]["description"] == "second"
    assert replaced.headers["ETag"] != created.headers["ETag"]
    stored = await api.store.get_schedule("a")
    assert stored is not None
    assert stored.spec.description == "second"
    assert stored.spec.managed_by == "api"

    for schedule_id in ("c", "b", "d"):
        assert api.put(f"/schedules/{schedule_id}", entry()).status_code == 201
    first = api.get("/schedules?limit=3").get_json()
    assert [s["id"] for s in first["schedules"]] == ["a", "b", "c"]
    second = api.get(f"/schedules?limit=3&page_token={first['next_page_token']}").get_json()
    assert [s["id"] for s in second["schedules"]] == ["d"]
    assert second["next_page_token"] is None
    problem(api.get("/schedules?page_token=%%%"), 400)
    assert problem(api.get("/schedules?limit=0"), 400)["field"] == "limit"


async def test_a_put_is_validated_as_a_file_entry_and_errors_name_their_fields(api: Api) -> None:
    bad = problem(api.put("/schedules/a", entry(retry={"max_attempts": 0})), 422)
    assert bad["field"] == "retry.max_attempts"
    assert "greater than or equal to 1" in bad["detail"]

    unknown = problem(api.put("/schedules/a", entry(colour="red")), 422)
    assert unknown["field"] == "colour"
    assert "unknown key" in unknown["detail"]

    many = problem(api.put("/schedules/a", entry(cron="61 * * * *", retry={"backoff": 5})), 422)
    fields = {e.get("field") for e in many["errors"]}
    assert len(many["errors"]) >= 2
    assert "retry.backoff" in fields

    # A refusal of the file's checks: the metadata server is never a target.
    refused = problem(
        api.put("/schedules/a", entry(target={"url": "http://169.254.169.254/x"})), 422
    )
    assert refused["field"] == "target.url"

    # Only the API sets managed_by: api; the id is the URL's.
    assert problem(api.put("/schedules/a", entry(managed_by="file", id="b")), 422)["field"] == "id"
    problem(api.put("/schedules/Not_An_Id", entry()), 404)
    problem(api.put("/schedules/a", [1, 2]), 400)
    assert (
        api.client.put(
            PREFIX + "/schedules/a",
            data="{not json",
            headers={**WRITE, "Content-Type": "application/json"},
        ).status_code
        == 400
    )
    assert await api.store.list_schedules() == []  # nothing of the above was written


async def test_then_steps_may_name_stored_schedules_and_pipelines_come_with_the_body(
    api: Api,
) -> None:
    problem(api.put("/schedules/first", entry(then=[{"schedule": "next"}])), 422)
    assert api.put("/schedules/next", entry()).status_code == 201
    chained = api.put("/schedules/first", entry(then=[{"schedule": "next"}]))
    assert chained.status_code == 201, chained.get_data(as_text=True)
    assert chained.get_json()["spec"]["then"][0]["schedule"] == "next"

    unknown = problem(api.put("/schedules/etl", entry(target={"pipeline": "p"})), 422)
    assert unknown["field"] == "target.pipeline"
    pipeline = {
        "id": "p",
        "tasks": [
            {"id": "extract", "target": {"function": "extract"}},
            {"id": "load", "target": {"function": "load"}, "after": ["extract"]},
        ],
    }
    made = api.put("/schedules/etl", entry(target={"pipeline": "p"}, pipeline_spec=pipeline))
    assert made.status_code == 201, made.get_data(as_text=True)
    # A second schedule may target the stored pipeline by name alone.
    assert api.put("/schedules/etl2", entry(target={"pipeline": "p"})).status_code == 201
    bad_task = {**pipeline, "tasks": [{"id": "x", "target": {"function": "x"}, "after": ["y"]}]}
    wrong = problem(
        api.put(
            "/schedules/etl3",
            entry(target={"pipeline": "q"}, pipeline_spec={**bad_task, "id": "q"}),
        ),
        422,
    )
    assert wrong["field"] is not None
    assert wrong["field"].startswith("pipeline_spec")

    listed = api.get("/pipelines").get_json()["pipelines"]
    assert [(p["id"], p["schedules"]) for p in listed] == [("p", ["etl", "etl2"])]
    got = api.get("/pipelines/p").get_json()
    assert [n["id"] for n in got["dag"]["nodes"]] == ["extract", "load"]
    assert got["dag"]["edges"] == [{"from": "extract", "to": "load"}]
    assert got["dag"]["nodes"][1]["depth"] == 1
    problem(api.get("/pipelines/nope"), 404)


async def test_a_put_keeps_its_text_and_json_values_exactly(api: Api) -> None:
    # The body travels through the schedules-file parser: nothing may be folded or lost.
    description = "tab\there \U0001f600 \u00e9 \u2028 x \x85 y \x7f \ufeff \\ \"q\" 'a'"
    params = {
        "f": 1e5,
        "big": 2**70,
        "n": None,
        "s": "yes",
        "b": True,
        "l": [1.5, "on"],
        "k:y": "#",
    }
    made = api.put("/schedules/a", entry(description=description, params=params))
    assert made.status_code == 201, made.get_data(as_text=True)
    stored = await api.store.get_schedule("a")
    assert stored is not None
    assert stored.spec.description == description
    assert stored.spec.params == params


async def test_notify_sinks_come_with_the_body_or_from_the_store_and_a_get_puts_back(
    api: Api,
) -> None:
    pipeline = {
        "id": "p",
        "tasks": [
            {"id": "extract", "target": {"function": "extract"}},
            {"id": "gate", "wait": {"key": "ready/{date}", "until": "value == true"}},
            {"id": "tell", "notify": {"sink": "ops", "text": "done"}, "after": ["extract", "gate"]},
        ],
    }
    body = entry(target={"pipeline": "p"}, pipeline_spec=pipeline, params={"date": "d"})
    unknown = problem(api.put("/schedules/etl", body), 422)
    assert unknown["field"] == "pipeline_spec.tasks[2].notify.sink"
    assert "unknown sink 'ops'" in unknown["detail"]

    pipeline["tasks"][2]["notify"]["sink_config"] = {"type": "log"}  # type: ignore[index]
    made = api.put("/schedules/etl", body)
    assert made.status_code == 201, made.get_data(as_text=True)
    spec = made.get_json()["spec"]
    assert spec["pipeline_spec"]["tasks"][2]["notify"]["sink_config"] == {"type": "log"}
    # What a get returns puts back unchanged, the pipeline and its sinks included.
    again = api.put("/schedules/etl", spec)
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.get_json()["spec"] == spec

    # Another schedule may name the sink a stored one configures.
    told = api.put("/schedules/tell", entry(target={"notify": {"sink": "ops", "text": "hi"}}))
    assert told.status_code == 201, told.get_data(as_text=True)
    assert told.get_json()["spec"]["target"]["notify"]["sink_config"] == {"type": "log"}
    missing = api.put("/schedules/tell2", entry(target={"notify": {"sink": "nope", "text": "x"}}))
    assert problem(missing, 422)["field"] == "target.notify.sink"


async def test_if_match_guards_puts_and_deletes(api: Api) -> None:
    created = api.put("/schedules/a", entry())
    old = created.headers["ETag"]
    current = api.put("/schedules/a", entry(description="v2"), {"If-Match": old})
    assert current.status_code == 200
    stale = problem(api.put("/schedules/a", entry(description="v3"), {"If-Match": old}), 412)
    assert stale["field"] == "If-Match"
    stored = await api.store.get_schedule("a")
    assert stored is not None
    assert stored.spec.description == "v2"

    problem(api.put("/schedules/a", entry(), {"If-None-Match": "*"}), 412)
    assert api.put("/schedules/b", entry(), {"If-None-Match": "*"}).status_code == 201
    problem(api.put("/schedules/zz", entry(), {"If-Match": old}), 404)
    problem(api.put("/schedules/a", entry(), {"If-Match": "no-quotes"}), 400)

    problem(api.delete("/schedules/a", {"If-Match": old}), 412)
    assert await api.store.get_schedule("a") is not None
    assert api.delete("/schedules/a", {"If-Match": current.headers["ETag"]}).status_code == 204
    assert api.delete("/schedules/b").status_code == 204
    problem(api.get("/schedules/a"), 404)
    problem(api.delete("/schedules/a"), 404)


async def test_pause_resume_and_trigger(api: Api) -> None:
    api.put("/schedules/a", entry(params={"x": 1, "y": 2}))
    paused = api.post("/schedules/a:pause")
    assert paused.status_code == 200
    assert paused.get_json()["state"]["paused"] is True
    assert api.post("/schedules/a:pause").get_json()["state"]["paused"] is True  # idempotent
    resumed = api.post("/schedules/a:resume")
    assert resumed.get_json()["state"]["paused"] is False
    problem(api.post("/schedules/nope:pause"), 404)

    fired = api.post("/schedules/a:trigger", {"params": {"y": 3}})
    assert fired.status_code == 201, fired.get_data(as_text=True)
    run = fired.get_json()
    assert run["trigger"] == "manual"
    assert run["schedule_id"] == "a"
    assert run["params"] == {"x": 1, "y": 3}
    stored = await api.store.get_run(run["id"])
    assert stored is not None
    assert stored.params == {"x": 1, "y": 3}
    assert problem(api.post("/schedules/a:trigger", {"params": [1]}), 422)["field"] == "params"
    assert problem(api.post("/schedules/a:trigger", {"parms": {}}), 422)["field"] == "parms"
    problem(api.post("/schedules/nope:trigger"), 404)


async def test_runs_list_filters_and_pages_across_equal_creation_times(api: Api) -> None:
    # 7 runs created in the same microsecond (as a pipeline's tasks are), 3 later ones.
    same = [
        make_run("a", T0, run_id=f"a@same{i}", created_at=T0, state=RunState.succeeded)
        for i in range(7)
    ]
    later = [make_run("b", T0 + timedelta(minutes=i + 1), state=RunState.failed) for i in range(3)]
    for run in [*same, *later]:
        assert await api.store.create_run(run) is not None

    seen: list[str] = []
    token = None
    for _ in range(10):
        path = "/runs?limit=3" + (f"&page_token={token}" if token else "")
        page = api.get(path).get_json()
        seen += [r["id"] for r in page["runs"]]
        token = page["next_page_token"]
        if token is None:
            break
    expected = [
        r.id for r in sorted([*same, *later], key=lambda r: (r.created_at, r.id), reverse=True)
    ]
    assert seen == expected

    only_a = api.get("/runs?schedule=a&limit=100").get_json()["runs"]
    assert {r["schedule_id"] for r in only_a} == {"a"}
    assert len(only_a) == 7
    failed = api.get("/runs?state=failed,lost").get_json()["runs"]
    assert [r["id"] for r in failed] == [r.id for r in reversed(later)]
    window = api.get(
        "/runs?since="
        + (T0 + timedelta(minutes=2)).isoformat().replace("+00:00", "Z")
        + "&until="
        + (T0 + timedelta(minutes=3)).isoformat().replace("+00:00", "Z")
    ).get_json()["runs"]
    assert [r["id"] for r in window] == [later[1].id]
    assert problem(api.get("/runs?state=nope"), 400)["field"] == "state"
    assert problem(api.get("/runs?since=yesterday"), 400)["field"] == "since"

    got = api.get(f"/runs/{later[0].id}")
    doc = got.get_json()
    assert doc["id"] == later[0].id
    assert doc["tasks"] == []
    assert doc["logs"] == []
    assert "attempts" in doc
    assert "events" in doc
    assert got.headers["ETag"] == f'"{doc["version"]}"'
    problem(api.get("/runs/nope@x"), 404)

    lines = [
        LogLine(attempt=1, seq=n, at=T0, level="INFO", logger="w", message=f"line {n}")
        for n in (1, 2)
    ]
    await api.store.append_logs(later[0].id, 1, lines)
    logged = api.get(f"/runs/{later[0].id}").get_json()["logs"]
    assert [(line["attempt"], line["seq"], line["message"]) for line in logged] == [
        (1, 1, "line 1"),
        (1, 2, "line 2"),
    ]


async def test_runs_list_by_pipeline_and_a_pipeline_runs_tasks(api: Api) -> None:
    pipeline = {
        "id": "p",
        "tasks": [
            {"id": "one", "target": {"function": "extract"}},
            {"id": "two", "target": {"function": "load"}, "after": ["one"]},
        ],
    }
    api.put("/schedules/etl", entry(target={"pipeline": "p"}, pipeline_spec=pipeline))
    stored = await api.store.get_schedule("etl")
    assert stored is not None
    assert stored.spec.pipeline_spec is not None
    parent = make_run("etl", T0, pipeline="p", pipeline_spec=stored.spec.pipeline_spec)
    tasks = [
        make_run(
            "etl", T0, run_id=f"{parent.id}.{t}", pipeline="p", parent_run_id=parent.id, task=t
        )
        for t in ("two", "one")
    ]
    other = make_run("x", T0 + timedelta(minutes=1))
    for run in (parent, *tasks, other):
        assert await api.store.create_run(run) is not None
    listed = api.get("/runs?pipeline=p").get_json()["runs"]
    assert [r["id"] for r in listed] == [parent.id]
    got = api.get(f"/runs/{parent.id}").get_json()
    assert [t["task"] for t in got["tasks"]] == ["one", "two"]  # topological order


async def test_cancel_and_rerun(api: Api) -> None:
    api.put("/schedules/a", entry(params={"x": 1, "y": 2}))
    now = service_of(api.app).now()
    pending = make_run("a", now, state=RunState.pending, params={"x": 1, "y": 2}, created_at=now)
    assert await api.store.create_run(pending) is not None

    cancelled = api.post(f"/runs/{pending.id}:cancel", {"reason": "not today"})
    assert cancelled.status_code == 200, cancelled.get_data(as_text=True)
    assert cancelled.get_json()["state"] == "cancelled"
    stored = await api.store.get_run(pending.id)
    assert stored is not None
    assert stored.state is RunState.cancelled
    again = problem(api.post(f"/runs/{pending.id}:cancel"), 422)
    assert "already ended (cancelled)" in again["detail"]
    problem(api.post("/runs/a@nope:cancel"), 404)
    assert problem(api.post(f"/runs/{pending.id}:cancel", {"why": "x"}), 422)["field"] == "why"

    rerun = api.post(f"/runs/{pending.id}:rerun", {"params": {"y": 5}})
    assert rerun.status_code == 201, rerun.get_data(as_text=True)
    new = rerun.get_json()
    assert new["id"] != pending.id
    assert new["cause_run_id"] == pending.id
    assert new["trigger"] == "manual"
    assert new["params"] == {"x": 1, "y": 5}
    assert await api.store.get_run(new["id"]) is not None
    problem(api.post("/runs/a@nope:rerun"), 404)
    assert problem(api.post(f"/runs/{pending.id}:rerun", {"params": 1}), 422)["field"] == "params"


async def test_backfill_creates_each_missing_occurrence_once(api: Api) -> None:
    api.put("/schedules/hourly", entry(every="1h"))
    now = service_of(api.app).now().replace(minute=0, second=0, microsecond=0)
    start, end = now - timedelta(hours=5), now - timedelta(hours=3)
    body = {"start": start.isoformat(), "end": end.isoformat()}

    dry = api.post("/schedules/hourly:backfill", {**body, "dry_run": True})
    assert dry.status_code == 200, dry.get_data(as_text=True)
    plan = dry.get_json()
    assert len(plan["planned"]) == 3
    assert plan["created"] == []
    assert len(plan["to_create"]) == 3
    assert await api.store.list_runs(schedule_id="hourly") == []

    done = api.post("/schedules/hourly:backfill", body).get_json()
    assert sorted(done["created"]) == sorted(plan["to_create"])
    runs = await api.store.list_runs(schedule_id="hourly")
    assert {r.id for r in runs} == set(done["created"])
    assert {r.trigger.value for r in runs} == {"backfill"}

    again = api.post("/schedules/hourly:backfill", body).get_json()
    assert again["created"] == []
    assert sorted(again["existing"]) == sorted(done["created"])

    assert (
        problem(api.post("/schedules/hourly:backfill", {"start": body["start"]}), 422)["field"]
        == "end"
    )
    assert (
        problem(api.post("/schedules/hourly:backfill", {**body, "end": "soon"}), 400)["field"]
        == "end"
    )
    assert (
        problem(api.post("/schedules/hourly:backfill", {**body, "max_parallel": 0}), 422)["field"]
        == "max_parallel"
    )
    problem(api.post("/schedules/nope:backfill", body), 404)


async def test_a_backfill_with_max_parallel_goes_on_in_the_background(api: Api) -> None:
    api.put("/schedules/hourly", entry(every="1h"))
    now = service_of(api.app).now().replace(minute=0, second=0, microsecond=0)
    body = {
        "start": (now - timedelta(hours=4)).isoformat(),
        "end": (now - timedelta(hours=3)).isoformat(),
        "max_parallel": 5,
    }
    accepted = api.post("/schedules/hourly:backfill", body)
    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    plan = accepted.get_json()
    assert len(plan["to_create"]) == 2
    assert plan["dry_run"] is True

    async def created() -> set[str]:
        ids = {r.id for r in await api.store.list_runs(schedule_id="hourly")}
        return ids if ids == set(plan["to_create"]) else set()

    await apoll(created, what="the background backfill created its runs")


# -- state ---------------------------------------------------------------------------------


async def test_state_put_get_list_delete_with_versions(api: Api) -> None:
    created = api.put("/state/orders/2027-01-04", {"value": {"rows": 1}})
    assert created.status_code == 201, created.get_data(as_text=True)
    assert created.headers["ETag"] == '"1"'
    updated = api.put("/state/orders/2027-01-04", {"value": {"rows": 2}}, {"If-Match": '"1"'})
    assert updated.status_code == 200
    assert updated.get_json()["version"] == 2
    problem(api.put("/state/orders/2027-01-04", {"value": 3}, {"If-Match": '"1"'}), 412)
    problem(api.put("/state/orders/2027-01-04", {"value": 3}, {"If-None-Match": "*"}), 412)
    entry_now = await api.store.get_state("orders/2027-01-04")
    assert entry_now is not None
    assert entry_now.value == {"rows": 2}

    got = api.get("/state/orders/2027-01-04")
    assert got.get_json()["value"] == {"rows": 2}
    assert got.get_json()["waiting"] == []
    assert got.headers["ETag"] == '"2"'
    for key in ("orders/2027-01-05", "orders/2027-01-06", "other"):
        assert api.put(f"/state/{key}", {"value": key}).status_code == 201
    first = api.get("/state?prefix=orders/&limit=2").get_json()
    assert [e["key"] for e in first["entries"]] == ["orders/2027-01-04", "orders/2027-01-05"]
    rest = api.get(f"/state?prefix=orders/&limit=2&page_token={first['next_page_token']}")
    assert [e["key"] for e in rest.get_json()["entries"]] == ["orders/2027-01-06"]
    assert rest.get_json()["next_page_token"] is None

    assert problem(api.put("/state/x", {"val": 1}), 422)["field"] == "val"
    assert problem(api.put("/state/x", {}), 422)["field"] == "value"
    problem(api.delete("/state/orders/2027-01-04", {"If-Match": '"1"'}), 412)
    assert api.delete("/state/orders/2027-01-04", {"If-Match": '"2"'}).status_code == 204
    problem(api.delete("/state/orders/2027-01-04"), 404)
    problem(api.get("/state/orders/2027-01-04"), 404)


async def test_state_get_lists_the_runs_waiting_on_the_key(api: Api) -> None:
    waiting = make_run(
        "w",
        T0,
        state=RunState.waiting,
        wait={"key": "ready/x", "until": "value == true"},
        wait_key="ready/x",
    )
    assert await api.store.create_run(waiting) is not None
    api.put("/state/ready/x", {"value": False})
    got = api.get("/state/ready/x").get_json()
    assert [w["run_id"] for w in got["waiting"]] == [waiting.id]
    assert got["waiting"][0]["until"] == "value == true"


# -- the rules: X-Requested-By, loopback, openapi ---------------------------------------------


async def test_state_changes_need_x_requested_by(api: Api) -> None:
    for method, path, body in (
        ("put", "/schedules/a", entry()),
        ("put", "/state/k", {"value": 1}),
        ("post", "/schedules/a:pause", {}),
        ("delete", "/state/k", None),
    ):
        response = getattr(api.client, method)(PREFIX + path, json=body)
        assert problem(response, 403)["field"] == "X-Requested-By"
        wrong = getattr(api.client, method)(
            PREFIX + path, json=body, headers={"X-Requested-By": "someone"}
        )
        problem(wrong, 403)
    assert await api.store.list_schedules() == []
    assert await api.store.get_state("k") is None
    assert api.get("/schedules").status_code == 200  # reading needs no header


async def test_locally_only_loopback_callers_are_answered(api: Api) -> None:
    far = api.client.get(PREFIX + "/schedules", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert "loopback" in problem(far, 403)["detail"]
    near = api.client.get(PREFIX + "/schedules", environ_base={"REMOTE_ADDR": "::1"})
    assert near.status_code == 200


async def test_unknown_paths_and_methods_are_problems(api: Api) -> None:
    problem(api.get("/nothing-here"), 404)
    problem(api.client.post(PREFIX + "/schedules", headers=WRITE), 405)


async def test_openapi_is_generated_from_the_models_and_covers_every_route(api: Api) -> None:
    doc = api.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for name in ("ScheduleSpec", "ScheduleState", "Run", "StateEntry", "LogLine", "Problem"):
        assert name in schemas, name
    assert set(ScheduleSpec.model_fields) <= set(schemas["ScheduleSpec"]["properties"])
    assert "InputScheduleSpec" in schemas
    documented = {path for path in doc["paths"]}
    for rule in api.app.url_map.iter_rules():
        if rule.rule.startswith(PREFIX):
            path = rule.rule.replace("<path:key>", "{key}")
            for arg in rule.arguments:
                path = path.replace(f"<{arg}>", "{" + arg + "}")
            assert path in documented, path
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    assert method.lower() in doc["paths"][path], (method, path)
    # Every reference resolves.
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in schemas, ref


# -- managed_by and prune ------------------------------------------------------------------


async def test_apply_prune_keeps_api_schedules_and_a_file_takes_an_id_over(api: Api) -> None:
    assert api.put("/schedules/from-api", entry()).status_code == 201
    store = api.store
    await admin.apply_schedules(
        store, [make_spec("f1"), make_spec("f2")], T0, prune=False, dry_run=False
    )

    lines = await admin.apply_schedules(store, [make_spec("f1")], T0, prune=True, dry_run=False)
    assert [(line.action.value, line.schedule_id) for line in lines] == [("=", "f1"), ("-", "f2")]
    kept = await store.get_schedule("from-api")
    assert kept is not None
    assert kept.spec.managed_by == "api"

    # An empty file prunes every file schedule (confirmed), never the API's.
    await admin.apply_schedules(store, [], T0, prune=True, dry_run=False, confirmed=True)
    assert [s.id for s in await store.list_schedules()] == ["from-api"]

    # A file defining the id takes it over; then a prune may delete it.
    await admin.apply_schedules(store, [make_spec("from-api")], T0, prune=True, dry_run=False)
    taken = await store.get_schedule("from-api")
    assert taken is not None
    assert taken.spec.managed_by == "file"
    await admin.apply_schedules(store, [], T0, prune=True, dry_run=False, confirmed=True)
    assert await store.list_schedules() == []


def test_a_file_cannot_mark_its_schedules_managed_by_api() -> None:
    text = "schedules:\n  - id: a\n    every: 1h\n    managed_by: api\n    target: {url: 'https://example.com/a'}\n"
    with pytest.raises(ScheduleFileError) as caught:
        parse_schedule_file(text)
    assert any("managed_by" in line for line in caught.value.errors)
    ok = text.replace("managed_by: api", "managed_by: file")
    assert parse_schedule_file(ok).schedules[0].managed_by == "file"


# -- authentication with Google ID tokens --------------------------------------------------

AUDIENCE = "https://admin-123.europe-west1.run.app"
KID = "admin-key-1"


@pytest.fixture(scope="module")
def signers() -> dict[str, Any]:
    good_key, good_cert = rsa_key_and_cert()
    other_key, _ = rsa_key_and_cert()
    return {
        "good": crypt.RSASigner.from_string(good_key, key_id=KID),
        "forged": crypt.RSASigner.from_string(other_key, key_id=KID),
        "cert": good_cert.decode(),
    }


@pytest.fixture(scope="module")
def admin_certs(signers: dict[str, Any]) -> Iterator[str]:
    with CertsServer({KID: signers["cert"]}).serve() as url:
        yield url


def _token(signers: dict[str, Any], email: str, signer: str = "good", **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
        "email": email,
        "email_verified": True,
        "sub": "42",
    }
    claims.update(overrides)
    encoded: bytes = jwt.encode(signers[signer], claims)
    return encoded.decode()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_callers_need_a_members_google_id_token(
    backend: Backend, signers: dict[str, Any], admin_certs: str
) -> None:
    settings = _settings(
        backend,
        admin_audience=AUDIENCE,
        admin_members=frozenset({"alice@example.com"}),
        oidc_certs_url=admin_certs,
    )
    app = make_app(settings, console=False)
    client = app.test_client()
    far = {"REMOTE_ADDR": "203.0.113.9"}  # deployed callers come from anywhere

    def call(token: str | None, **kw: Any) -> TestResponse:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return client.get(PREFIX + "/schedules", headers=headers, environ_base=far, **kw)

    try:
        assert "missing bearer token" in problem(call(None), 401)["detail"]
        problem(call("not-a-jwt"), 401)
        problem(call(_token(signers, "alice@example.com", signer="forged")), 401)
        assert (
            "audience"
            in problem(call(_token(signers, "alice@example.com", aud="https://x")), 401)["detail"]
        )
        stranger = problem(call(_token(signers, "mallory@example.com")), 403)
        assert "mallory@example.com is not in FIRECRON_ADMIN_MEMBERS" in stranger["detail"]
        problem(call(_token(signers, "alice@example.com", email_verified=False)), 403)
        assert call(_token(signers, "Alice@Example.com")).status_code == 200
        # A member's write still needs the header.
        write = client.put(
            PREFIX + "/state/k",
            json={"value": 1},
            headers={"Authorization": f"Bearer {_token(signers, 'alice@example.com')}"},
            environ_base=far,
        )
        problem(write, 403)
    finally:
        close(app)


def test_a_deployed_api_without_an_audience_refuses_everything(tmp_path: Path) -> None:
    settings = Settings(store_url=f"sqlite:///{tmp_path / 'x.db'}", deployed=True)
    app = make_app(settings, console=False)
    try:
        response = app.test_client().get(PREFIX + "/schedules")
        assert "FIRECRON_ADMIN_AUDIENCE" in problem(response, 500)["detail"]
        assert service_of(app)._runtime is None  # refused before the store was opened
    finally:
        close(app)


def test_admin_members_are_parsed_as_iam_members_or_emails() -> None:
    settings = Settings.from_env(
        {
            "FIRECRON_ADMIN_MEMBERS": "user:Alice@example.com, serviceAccount:ci@p.iam.gserviceaccount.com,bob@example.com"
        }
    )
    assert settings.admin_members == {
        "alice@example.com",
        "ci@p.iam.gserviceaccount.com",
        "bob@example.com",
    }
    from firecron.errors import InvalidInputError

    with pytest.raises(
        InvalidInputError, match=re.escape("FIRECRON_ADMIN_MEMBERS: 'group:ops@example.com'")
    ):
        Settings.from_env({"FIRECRON_ADMIN_MEMBERS": "group:ops@example.com"})
    with pytest.raises(InvalidInputError, match="is not an email"):
        Settings.from_env({"FIRECRON_ADMIN_MEMBERS": "alice"})


# -- served by firecron dev ------------------------------------------------------------------

_DEV_SOURCE = '''\
import firecron


@firecron.worker
def api(ctx: firecron.RunContext) -> dict[str, str]:
    """A worker named like the API's path: /api is its, /api/v1/... the API's."""
    return {"served_by": "the api worker"}
'''


def test_dev_serves_the_api_and_the_console_beside_the_workers(tmp_path: Path) -> None:
    import httpx

    from _devstack import dev_stack, poll

    (tmp_path / "main.py").write_text(_DEV_SOURCE)
    with dev_stack(tmp_path, "--source", "main.py") as dev, httpx.Client(base_url=dev.url) as http:
        assert http.get("/api/v1/openapi.json").json()["openapi"].startswith("3.1")
        page = http.get("/")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        made = http.put(
            "/api/v1/schedules/by-api",
            json={"target": {"function": "api"}},  # on demand: runs when triggered
            headers=WRITE,
        )
        assert made.status_code == 201, made.text
        fired = http.post("/api/v1/schedules/by-api:trigger", json={}, headers=WRITE)
        assert fired.status_code == 201, fired.text
        run_id = fired.json()["id"]

        def ended() -> dict[str, Any] | None:
            run: dict[str, Any] = http.get(f"/api/v1/runs/{run_id}").json()
            return run if run["state"] in ("succeeded", "failed") else None

        run = poll(ended, what="the triggered run ended", dev=dev)
        assert run is not None
        assert run["state"] == "succeeded", run
        assert run["output"] == {"served_by": "the api worker"}
        assert dev.stop() == 0
    assert "Traceback" not in dev.output()


def test_the_deployed_admin_function_serves_the_api_and_console_to_members(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    signers: dict[str, Any],
    admin_certs: str,
) -> None:
    import functions_framework

    import firecron.api

    root = Path(__file__).resolve().parents[1]
    for name, value in {
        "FIRECRON_STORE": f"sqlite:///{tmp_path / 'admin.db'}",
        "FIRECRON_SIGNING_SECRET": SECRET,
        "FIRECRON_ADMIN_AUDIENCE": AUDIENCE,
        "FIRECRON_ADMIN_MEMBERS": "user:alice@example.com",
        "FIRECRON_OIDC_CERTS_URL": admin_certs,
        "K_SERVICE": "admin",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(firecron.api, "_served", None)  # made again from this environment
    create_app: Any = functions_framework.create_app  # functions-framework has no type hints
    app = create_app(
        target="admin", source=str(root / "functions" / "main.py"), signature_type="http"
    )
    client = app.test_client()
    far = {"REMOTE_ADDR": "198.51.100.7"}
    alice = {"Authorization": f"Bearer {_token(signers, 'alice@example.com')}"}
    try:
        problem(client.get(PREFIX + "/schedules", environ_base=far), 401)
        problem(client.get("/", environ_base=far), 401)  # the console is guarded too
        listed = client.get(PREFIX + "/schedules", headers=alice, environ_base=far)
        assert listed.status_code == 200, listed.get_data(as_text=True)
        assert listed.get_json() == {"schedules": [], "next_page_token": None}
        made = client.put(
            PREFIX + "/schedules/x",
            json=entry(target={"url": "https://example.com/x"}),  # deployed: https only
            headers={**alice, **WRITE},
            environ_base=far,
        )
        assert made.status_code == 201, made.get_data(as_text=True)
        page = client.get("/", headers=alice, environ_base=far)
        assert page.status_code == 200
        assert "x" in page.get_data(as_text=True)
    finally:
        served = firecron.api._served
        if served is not None:
            close(served)
            console = served.extensions.get("firecron_console")
            if console is not None:
                console.close()
