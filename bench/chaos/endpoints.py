"""Endpoint fuzzing (being written): mutated requests to a served worker and to dispatch."""

from __future__ import annotations

from dataclasses import dataclass

from bench.chaos._count import Row
from bench.chaos._env import Lab


@dataclass(frozen=True)
class EndpointsConfig:
    requests: int = 500


def run(lab: Lab, backend: str, cfg: EndpointsConfig) -> list[Row]:
    return []
