"""The OpenAPI 3.1 document of ``/api/v1``, generated from the pydantic models.

The schemas of schedules, runs, state entries and log lines are the models' own
(``model_json_schema``, in validation mode for what a client sends, serialization mode
for what it reads), so the document cannot drift from the code; the paths are listed
here beside the routes they describe.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from firecron.core.logs import LogLine
from firecron.core.models import PipelineSpec, ScheduleSpec, ScheduleState
from firecron.core.runs import Run
from firecron.core.state import StateEntry

__all__ = ["document"]

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_PROBLEM = {
    "description": "An error (RFC 9457)",
    "content": {"application/problem+json": {"schema": _ref("Problem")}},
}


def _op(
    summary: str,
    *,
    ok: dict[str, Any] | None = None,
    status: str = "200",
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"default": _PROBLEM}}
    op["responses"][status] = ok if ok is not None else {"description": "Done"}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_PAGE = [
    _query("limit", "page size (1-1000)", {"type": "integer", "minimum": 1, "maximum": 1000}),
    _query("page_token", "the next_page_token of the previous page"),
]


def _paths() -> dict[str, Any]:
    schedule = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "spec": _ref("ScheduleSpec"),
            "state": _ref("ScheduleState"),
            "version": {"type": "string"},
        },
    }
    run = _ref("Run")
    entry = _ref("StateEntry")
    sid = _path("schedule_id", "schedule id")
    rid = _path("run_id", "run id")
    key = _path("key", "state key (may hold /)")

    def page_of(name: str, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                name: {"type": "array", "items": item},
                "next_page_token": {"type": ["string", "null"]},
            },
        }

    return {
        "/api/v1/schedules": {
            "get": _op(
                "List schedules by id", ok=_json(page_of("schedules", schedule)), params=_PAGE
            )
        },
        "/api/v1/schedules/{schedule_id}": {
            "parameters": [sid],
            "get": _op("Get a schedule (ETag: its version)", ok=_json(schedule)),
            "put": _op(
                "Create (201) or replace a schedule from a schedules-file entry; If-Match, If-None-Match: *",
                ok=_json(schedule),
                body=_ref("ScheduleSpecInput"),
            ),
            "delete": _op("Delete a schedule (its runs are kept); If-Match", status="204"),
        },
        "/api/v1/schedules/{schedule_id}:pause": {
            "parameters": [sid],
            "post": _op("Pause", ok=_json(schedule)),
        },
        "/api/v1/schedules/{schedule_id}:resume": {
            "parameters": [sid],
            "post": _op("Resume", ok=_json(schedule)),
        },
        "/api/v1/schedules/{schedule_id}:trigger": {
            "parameters": [sid],
            "post": _op(
                "Start a manual run now",
                status="201",
                ok=_json(run),
                body={
                    "type": "object",
                    "properties": {"params": {"type": "object"}},
                    "additionalProperties": False,
                },
            ),
        },
        "/api/v1/schedules/{schedule_id}:backfill": {
            "parameters": [sid],
            "post": _op(
                "One run per occurrence in [start, end]",
                ok=_json({"type": "object"}),
                body={
                    "type": "object",
                    "required": ["start", "end"],
                    "properties": {
                        "start": {"type": "string", "format": "date-time"},
                        "end": {"type": "string", "format": "date-time"},
                        "dry_run": {"type": "boolean"},
                        "max_parallel": {"type": "integer", "minimum": 1},
                    },
                    "additionalProperties": False,
                },
            ),
        },
        "/api/v1/runs": {
            "get": _op(
                "List runs, newest first",
                ok=_json(page_of("runs", run)),
                params=[
                    _query("schedule", "only this schedule's runs"),
                    _query("state", "comma-separated states"),
                    _query("pipeline", "only runs of this pipeline (not their task runs)"),
                    _query(
                        "since",
                        "created at or after (ISO 8601)",
                        {"type": "string", "format": "date-time"},
                    ),
                    _query(
                        "until",
                        "created before (ISO 8601)",
                        {"type": "string", "format": "date-time"},
                    ),
                    *_PAGE,
                ],
            )
        },
        "/api/v1/runs/{run_id}": {
            "parameters": [rid],
            "get": _op("Get a run with its attempts, sends, events, tasks and logs", ok=_json(run)),
        },
        "/api/v1/runs/{run_id}:cancel": {
            "parameters": [rid],
            "post": _op(
                "Cancel a run",
                ok=_json(run),
                body={
                    "type": "object",
                    "properties": {"reason": {"type": "string"}},
                    "additionalProperties": False,
                },
            ),
        },
        "/api/v1/runs/{run_id}:rerun": {
            "parameters": [rid],
            "post": _op(
                "Re-run: a new manual run with the same params",
                status="201",
                ok=_json(run),
                body={
                    "type": "object",
                    "properties": {"params": {"type": "object"}, "from_task": {"type": "string"}},
                    "additionalProperties": False,
                },
            ),
        },
        "/api/v1/pipelines": {
            "get": _op("List the stored pipelines", ok=_json({"type": "object"}))
        },
        "/api/v1/pipelines/{pipeline_id}": {
            "parameters": [_path("pipeline_id", "pipeline id")],
            "get": _op("Get a pipeline with its DAG (nodes, edges)", ok=_json({"type": "object"})),
        },
        "/api/v1/state": {
            "get": _op(
                "List state entries by key",
                ok=_json(page_of("entries", entry)),
                params=[_query("prefix", "keys starting with this"), *_PAGE],
            )
        },
        "/api/v1/state/{key}": {
            "parameters": [key],
            "get": _op(
                "Get an entry (ETag: its version) and the runs waiting on it", ok=_json(entry)
            ),
            "put": _op(
                "Write an entry (201 when created); If-Match, If-None-Match: *",
                ok=_json(entry),
                body={"type": "object", "required": ["value"], "properties": {"value": {}}},
            ),
            "delete": _op("Delete an entry; If-Match", status="204"),
        },
        "/api/v1/openapi.json": {"get": _op("This document", ok=_json({"type": "object"}))},
    }


@cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once per process)."""
    _, defs = models_json_schema(
        [
            (ScheduleSpec, "serialization"),
            (ScheduleState, "serialization"),
            (PipelineSpec, "serialization"),
            (Run, "serialization"),
            (StateEntry, "serialization"),
            (LogLine, "serialization"),
        ],
        ref_template=_REF,
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    _, inputs = models_json_schema(
        [(ScheduleSpec, "validation")], ref_template="#/components/schemas/Input{model}"
    )
    for name, schema in inputs.get("$defs", {}).items():
        schemas[f"Input{name}"] = schema
    schemas["ScheduleSpecInput"] = {"$ref": "#/components/schemas/InputScheduleSpec"}
    schemas["Problem"] = {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "the input field at fault"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "detail": {"type": "string"}},
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "firecron admin API",
            "version": "1",
            "description": (
                "Schedules, runs, pipelines and state of one firecron deployment. "
                "State-changing requests need the header X-Requested-By: firecron."
            ),
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "googleIdToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"googleIdToken": []}],
    }
