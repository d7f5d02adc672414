"""firecron: serverless cron dispatcher for Google Cloud."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The SDK is imported eagerly (it is light: flask and functions-framework load only
# when a worker is declared or called). Lazily, through a module __getattr__, it would
# break: `firecron.worker` is both the submodule and the decorator, and whoever
# imported the submodule first (`from firecron.worker import ...`) would leave the
# package attribute bound to the module. Imported here, the decorator always wins.
from firecron._state_api import State
from firecron._trigger import trigger
from firecron.errors import Fenced
from firecron.worker import FENCE_HEADER, RunContext, worker

if TYPE_CHECKING:
    from firecron.client import AsyncClient, Client

__all__ = [
    "FENCE_HEADER",
    "AsyncClient",
    "Client",
    "Fenced",
    "RunContext",
    "State",
    "trigger",
    "worker",
]


def __getattr__(name: str) -> Any:
    # The client is loaded on first use: it brings the schedules-file parser and the
    # dispatcher (YAML, croniter: ~0.1 s), which a worker process never needs. Its
    # names differ from its module's (`firecron.client`), so the trap above cannot bite.
    if name in ("AsyncClient", "Client"):
        from firecron import client

        return getattr(client, name)
    raise AttributeError(f"module 'firecron' has no attribute {name!r}")
