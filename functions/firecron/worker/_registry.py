"""``@firecron.worker`` and the registry of the workers each module declares.

The registry is what ``firecron dev`` reads to find the workers of a source file. It
is kept per module and per execution of that module: ``firecron dev`` (and
functions-framework) execute the same source again into a fresh namespace under the
same module name, and the workers declared by an earlier execution must not be
served from the new one.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, cast, overload

from firecron.core.lifecycle import RunTimeouts
from firecron.worker._execution import WorkerFunction

if TYPE_CHECKING:
    import flask

    Handler = Callable[[flask.Request], flask.Response]

_TIMEOUTS: Final = RunTimeouts()
"""The defaults, to check a heartbeat interval when a worker is declared (before the
settings are read). Only ``heartbeat_timeout`` is used, which settings do not change."""


@dataclass(frozen=True)
class DeclaredWorker:
    """One ``@firecron.worker`` declaration."""

    name: str
    """The function's name: the functions-framework ``--target``."""
    handler: Handler
    """The HTTP function the decorator returned (what the module binds to ``name``)."""
    heartbeat_interval: timedelta | None
    """The decorator's check-in interval; None: a fifth of each run's lease."""


@dataclass
class _ModuleWorkers:
    namespace: dict[str, Any] | None
    """The globals of the module execution that declared them (None: not known)."""
    workers: list[DeclaredWorker] = field(default_factory=list)


_declared: dict[str, _ModuleWorkers] = {}
_declared_lock = threading.Lock()


def _register(fn: WorkerFunction, declared: DeclaredWorker) -> None:
    """Record ``declared`` under the module that defines ``fn``.

    A declaration from a new execution of that module (another globals dict) replaces
    everything the earlier execution declared.
    """
    module = getattr(fn, "__module__", None) or "__main__"
    namespace = getattr(inspect.unwrap(fn), "__globals__", None)
    with _declared_lock:
        current = _declared.get(module)
        if current is None or (namespace is not None and current.namespace is not namespace):
            current = _declared[module] = _ModuleWorkers(namespace)
        current.workers.append(declared)


def declared_in(module: ModuleType) -> list[DeclaredWorker]:
    """The workers declared by this execution of ``module``, in declaration order.

    Empty for a module that declared none, and for an earlier execution of a module
    that has been executed again since (only the latest execution's are kept).
    """
    with _declared_lock:
        current = _declared.get(module.__name__)
        if current is None:
            return []
        if current.namespace is not None and current.namespace is not vars(module):
            return []
        return list(current.workers)


@overload
def worker(fn: WorkerFunction, /) -> Handler: ...


@overload
def worker(
    *, heartbeat_interval: timedelta | None = None
) -> Callable[[WorkerFunction], Handler]: ...


def worker(
    fn: WorkerFunction | None = None, /, *, heartbeat_interval: timedelta | None = None
) -> Handler | Callable[[WorkerFunction], Handler]:
    """Make ``fn(ctx: RunContext) -> JSON`` a functions-framework HTTP function.

    Use it bare (``@firecron.worker``) or with options
    (``@firecron.worker(heartbeat_interval=timedelta(seconds=5))``). The result keeps
    ``fn``'s name, which is the ``--target`` (the schedule's ``target.function``), is
    registered with ``functions_framework.http``, and is recorded in the registry of
    the module that defines ``fn`` (:func:`declared_in`). See the package docstring for
    what each request does.

    ``heartbeat_interval`` is how often a running attempt checks in: it reads its run
    (a cancel request is seen within one interval) and renews its lease only when at
    most two intervals of it are left. By default a fifth of the run's lease
    (``heartbeat_timeout``: 60 s at the default 5 minutes). When given, it must be
    positive and at most a third of the default lease (100 s); a schedule with a
    shorter ``heartbeat_timeout`` is checked in on at least three times per lease
    whatever it says. A shorter interval sees cancellations sooner at one read per
    check-in; it never renews more often. Raises ``ValueError`` otherwise, and
    :class:`~firecron.errors.InvalidInputError` (one line naming the variable, never the
    secret) when ``FIRECRON_SIGNING_SECRET`` holds anything but ``whsec_`` secrets.
    """
    # A bad FIRECRON_SIGNING_SECRET fails here, when the source is loaded, so a deploy
    # or `firecron dev` refuses to start with one line instead of answering every
    # delivery with an error. Reading the environment is not I/O; the rest of the
    # settings are still read on the first request.
    from firecron.transport.signing import parse_signing_secrets

    parse_signing_secrets(os.environ.get("FIRECRON_SIGNING_SECRET", ""))
    interval = heartbeat_interval
    # At most a third of the lease, so a renewal due at two intervals from its end
    # still has a second try before the watchdog may declare a healthy run lost.
    longest = _TIMEOUTS.heartbeat_timeout / 3
    if interval is not None and not timedelta(0) < interval <= longest:
        raise ValueError(
            f"heartbeat_interval must be positive and at most {longest}, got {interval}"
        )

    def decorate(func: WorkerFunction) -> Handler:
        import functions_framework

        from firecron.worker._http import _handle

        @functools.wraps(func)
        def handler(request: flask.Request) -> flask.Response:
            return _handle(func, interval, request)

        # http() registers the name as an HTTP function and returns a transparent wrapper.
        served = cast("Handler", functions_framework.http(handler))
        _register(func, DeclaredWorker(served.__name__, served, interval))
        return served

    return decorate if fn is None else decorate(fn)
