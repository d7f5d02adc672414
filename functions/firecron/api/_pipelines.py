"""``/api/v1/pipelines``: the pipelines the stored schedules target, and one with its DAG.

Pipelines are stored as snapshots in the schedules that target them (a file's pipeline
is copied into each), so both read the schedules: a list reads every schedule once.
A pipeline's ``dag`` is ``nodes`` (each task: id, kind, rule, depth, in topological
order) and ``edges`` (``{from, to}``, upstream to downstream).
"""

from __future__ import annotations

from typing import Any

import flask

from firecron.admin import stored_pipelines
from firecron.api._http import dump, reply
from firecron.api._problem import Problem
from firecron.api._service import Service
from firecron.core.models import PipelineSpec
from firecron.core.pipeline_graph import depths, task_kind, topological_order

__all__ = ["blueprint", "dag"]

blueprint = flask.Blueprint("firecron_api_pipelines", __name__)


def _service() -> Service:
    service: Service = flask.current_app.extensions["firecron.api"]
    return service


def dag(spec: PipelineSpec) -> dict[str, Any]:
    """The pipeline's graph: ``nodes`` in topological order and ``edges``."""
    level = depths(spec)
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, str]] = []
    for task_id in topological_order(spec):
        task = spec.task(task_id)
        nodes.append(
            {
                "id": task.id,
                "kind": task_kind(task),
                "when": task.when.value,
                "depth": level[task.id],
            }
        )
        edges.extend({"from": upstream, "to": task.id} for upstream in task.after)
    return {"nodes": nodes, "edges": edges}


@blueprint.get("/pipelines")
def list_pipelines() -> flask.Response:
    """Every pipeline a stored schedule targets, by id, with its schedules."""
    service = _service()
    found = service.call(stored_pipelines(service.store))
    return reply(
        {
            "pipelines": [
                {"id": pid, "spec": dump(spec), "schedules": schedules}
                for pid, (spec, schedules) in sorted(found.items())
            ]
        }
    )


@blueprint.get("/pipelines/<pipeline_id>")
def get_pipeline(pipeline_id: str) -> flask.Response:
    """One pipeline: its definition, its schedules and its DAG."""
    service = _service()
    found = service.call(stored_pipelines(service.store)).get(pipeline_id)
    if found is None:
        raise Problem(404, f"unknown pipeline {pipeline_id!r} (no stored schedule targets it)")
    spec, schedules = found
    return reply({"id": pipeline_id, "spec": dump(spec), "schedules": schedules, "dag": dag(spec)})
