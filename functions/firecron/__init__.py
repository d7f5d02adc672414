"""firecron: serverless cron dispatcher for Google Cloud."""

# The SDK is imported eagerly (it is light: flask and functions-framework load only
# when a worker is declared or called). Lazily, through a module __getattr__, it would
# break: `firecron.worker` is both the submodule and the decorator, and whoever
# imported the submodule first (`from firecron.worker import ...`) would leave the
# package attribute bound to the module. Imported here, the decorator always wins.
from firecron._state_api import State
from firecron._trigger import trigger
from firecron.errors import Fenced
from firecron.worker import FENCE_HEADER, RunContext, worker

__all__ = ["FENCE_HEADER", "Fenced", "RunContext", "State", "trigger", "worker"]
