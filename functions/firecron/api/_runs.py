"""``/api/v1/runs``: list (filtered, paged), get (with its tasks and logs), ``:cancel``,
``:rerun``.

A run's representation is the stored record (every field of :class:`~firecron.core.runs.Run`:
``attempts`` with their ``sends``, ``events``...) plus its ``version``. A get adds
``tasks`` (a pipeline run's task runs, in topological order; ``[]`` for another run) and
``logs`` (every attempt's captured lines).

The list is newest first (``created_at``, then id, descending). Filters: ``schedule``,
``state`` (comma-separated), ``pipeline`` (runs of that pipeline, not their task runs),
``since``/``until`` (``created_at`` in ``[since, until)``). A page is ``limit`` runs (50
by default); ``next_page_token`` continues it and is null on the last page. A page that
filters on ``pipeline`` reads at most :data:`_SCAN` runs to fill itself and may come
back short, with a token to go on.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import flask

from firecron import service as service_layer
from firecron.api._http import (
    dump,
    int_arg,
    json_body,
    page_token,
    read_page_token,
    reply,
    time_arg,
)
from firecron.api._problem import Problem
from firecron.api._service import Service
from firecron.core.pipeline_graph import topological_order
from firecron.core.runs import Run, RunState, task_run_id

__all__ = ["blueprint", "run_document"]

blueprint = flask.Blueprint("firecron_api_runs", __name__)

_SCAN = 2000
"""The most runs one page of a ``pipeline`` filter reads."""
_TICK = timedelta(microseconds=1)


def _service() -> Service:
    service: Service = flask.current_app.extensions["firecron.api"]
    return service


def run_document(run: Run) -> dict[str, Any]:
    """How the API represents a run: its record and its version."""
    document: dict[str, Any] = dump(run)
    document["version"] = run.version
    return document


def _states() -> list[RunState] | None:
    raw = flask.request.args.get("state")
    if not raw:
        return None
    states = []
    for name in raw.split(","):
        try:
            states.append(RunState(name.strip()))
        except ValueError:
            known = ", ".join(s.value for s in RunState)
            raise Problem(
                400, f"state={name.strip()!r}: expected one of {known}", field="state"
            ) from None
    return states


def _cursor() -> tuple[datetime, str] | None:
    token = read_page_token()
    if token is None:
        return None
    try:
        at, run_id = token
        return datetime.fromisoformat(at), str(run_id)
    except (TypeError, ValueError):
        raise Problem(400, "page_token: not a token this API gave", field="page_token") from None


def _after_cursor(run: Run, cursor: tuple[datetime, str] | None) -> bool:
    """Whether ``run`` comes after the cursor in the list's order."""
    if cursor is None:
        return True
    at, run_id = cursor
    return run.created_at < at or (run.created_at == at and run.id < run_id)


@blueprint.get("/runs")
def list_runs() -> flask.Response:
    """A page of runs, newest first (see the module docstring)."""
    service = _service()
    limit = int_arg("limit", 50)
    schedule = flask.request.args.get("schedule") or None
    pipeline = flask.request.args.get("pipeline") or None
    states = _states()
    since, until = time_arg("since"), time_arg("until")
    cursor = _cursor()
    # The store's cursor is exclusive on created_at alone; runs created in the same
    # microsecond (a pipeline's tasks) may straddle a page, so the page is read from the
    # cursor's instant inclusive and the ones already given are dropped.
    before = until
    if cursor is not None:
        before = cursor[0] + _TICK if until is None else min(until, cursor[0] + _TICK)
    found: list[Run] = []
    scanned = 0
    last: Run | None = None
    exhausted = False
    want = limit + 1
    while len(found) < want and scanned < _SCAN:
        batch = min(max(want - len(found), 50) * (4 if pipeline else 1), _SCAN)
        page = service.call(
            service_layer.list_runs(
                service.store, schedule_id=schedule, states=states, limit=batch, before=before
            )
        )
        fresh = [r for r in page if _after_cursor(r, cursor)]
        for run in fresh:
            scanned += 1
            if since is not None and run.created_at < since:
                exhausted = True
                break
            last = run
            if pipeline is None or (run.pipeline == pipeline and run.parent_run_id is None):
                found.append(run)
                if len(found) == want:
                    break
        if exhausted or len(page) < batch:
            exhausted = exhausted or len(found) < want
            break
        if last is not None:
            cursor = (last.created_at, last.id)
            before = last.created_at + _TICK
    more = len(found) > limit
    runs = found[:limit]
    token = None
    if more:
        token = page_token([runs[-1].created_at.isoformat(), runs[-1].id])
    elif not exhausted and len(found) < want and last is not None:
        token = page_token([last.created_at.isoformat(), last.id])  # the scan stopped short
    return reply({"runs": [run_document(r) for r in runs], "next_page_token": token})


def _get(service: Service, run_id: str) -> Run:
    return service.call(service_layer.get_run(service.store, run_id))


@blueprint.get("/runs/<run_id>")
def get_run(run_id: str) -> flask.Response:
    """One run with its tasks and logs; its ``ETag`` is its version."""
    service = _service()
    run = _get(service, run_id)
    document = run_document(run)
    tasks: list[Run] = []
    if run.pipeline_spec is not None:
        ids = [task_run_id(run.id, t) for t in topological_order(run.pipeline_spec)]
        tasks = service.call(service.store.get_runs(ids))
    document["tasks"] = [run_document(t) for t in tasks]
    document["logs"] = [dump(line) for line in service.call(service.store.get_logs(run.id))]
    return reply(document, version=run.version)


@blueprint.post("/runs/<run_id>:cancel")
def cancel(run_id: str) -> flask.Response:
    """Cancel a run (body: optional ``reason``): one not started yet ends ``cancelled`` at
    once; a running one is asked to stop. Answers the run as recorded after the change;
    422 when it had ended already."""
    from firecron import operations

    service = _service()
    body = json_body()
    for key in body:
        if key != "reason":
            raise Problem(422, f"unknown key {key!r}", field=key)
    reason = body.get("reason", "cancelled by an operator")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
        raise Problem(422, "reason: must be text of 1 to 500 characters", field="reason")
    run = service.call(
        operations.cancel_run(
            service.store, run_id, service.now(), reason=reason, dispatcher=service.dispatcher
        )
    )
    return reply(run_document(run), version=run.version)


@blueprint.post("/runs/<run_id>:rerun")
def rerun(run_id: str) -> flask.Response:
    """A new manual run of the same schedule (body: ``params`` over the run's, ``from_task``
    on a pipeline run); 201 with the new run."""
    from firecron import operations

    service = _service()
    body = json_body()
    for key in body:
        if key not in ("params", "from_task"):
            raise Problem(422, f"unknown key {key!r}", field=key)
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise Problem(422, "params: must be a JSON object", field="params")
    from_task = body.get("from_task")
    if from_task is not None and not isinstance(from_task, str):
        raise Problem(422, "from_task: must be a task id", field="from_task")
    run = service.call(
        operations.rerun(service.dispatcher, run_id, params=params, from_task=from_task)
    )
    return reply(run_document(run), 201, version=run.version)
