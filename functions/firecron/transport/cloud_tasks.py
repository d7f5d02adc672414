"""Delivery through Cloud Tasks: one HTTP task per send, instead of a direct POST.

A target with ``delivery: cloud_tasks`` (default ``FIRECRON_DELIVERY``) is not POSTed
by the dispatcher: :meth:`TaskQueue.enqueue` creates one task in the configured queue
and returns. Cloud Tasks then makes the POST, holds it open as long as the worker works
(up to the task's ``dispatch_deadline``), and never retries it (the queue's
``max_attempts`` is 1: firecron's own retry policy decides, as for direct sends).

The task:

- name ``{queue}/tasks/{hash}-{task_id(key)}`` where ``key`` is the dispatch's
  ``{run_id}/{attempt}``, prefixed ``{namespace}/`` when the queue is given one, and
  ``hash`` 8 hex digits of its SHA-256 (:meth:`TaskQueue.task_id`):
  enqueuing the same attempt twice is refused by Cloud Tasks (``ALREADY_EXISTS``),
  which this module treats as already sent. Cloud Tasks keeps a name reserved for up to
  an hour after the task ran or was deleted, so a late duplicate is refused too. Run ids
  repeat across namespaces (``{schedule_id}@{time}``), so two namespaces that share a
  queue must give it their namespace, or one's run would be refused as the other's;
- the same body and the same headers as the direct POST (signature, idempotency key),
  except those Cloud Tasks sets or replaces itself (``user-agent``, ``host``,
  ``content-length``) and ``authorization``: an ``auth: oidc`` target gets an
  ``oidc_token`` instead (the task's service account, audience the target URL), so
  Cloud Tasks mints the ID token when it sends;
- ``dispatch_deadline``: the run's timeout, clamped to what Cloud Tasks allows for
  HTTP targets (15 s to 30 min);
- ``schedule_time``: when given (second precision: the exact second the occurrence is
  due), Cloud Tasks holds the task until then.

Several queues: ``FIRECRON_TASKS_QUEUE`` may name more than one, comma-separated,
because one queue dispatches at most 500 tasks a second (Cloud Tasks' limit on
``max_dispatches_per_second``). A task goes to the queue picked by a stable hash of its
id, so the same attempt always lands in the same queue and a duplicate is still
refused by name. Changing the list moves ids to other queues: a duplicate of an
attempt enqueued before the change may then be accepted (its delivery is still one run
attempt, which the worker's compare-and-set start admits once).

Verdicts (:class:`~firecron.transport.sender.SendResult`): a created or already-existing
task is ``unacknowledged`` ("handed over, nobody acknowledged the work": the tick waits
for no acknowledgement); a refusal of the request itself (invalid argument, permission
denied, unknown queue, a target the SSRF guard refuses) is ``permanent``; anything else
(unavailable, deadline exceeded, quota) is ``retryable``.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from typing import Any, Final

from firecron.core.lifecycle import SendOutcome
from firecron.core.render import one_line
from firecron.errors import TargetRefusedError
from firecron.transport.guard import redact_url, resolve_target
from firecron.transport.sender import Dispatch, SendResult

__all__ = [
    "MAX_DISPATCH_DEADLINE",
    "MIN_DISPATCH_DEADLINE",
    "TaskQueue",
    "dispatch_deadline",
    "task_headers",
    "task_id",
]

MIN_DISPATCH_DEADLINE: Final = timedelta(seconds=15)
"""The shortest ``dispatch_deadline`` Cloud Tasks accepts for an HTTP task."""
MAX_DISPATCH_DEADLINE: Final = timedelta(minutes=30)
"""The longest ``dispatch_deadline`` Cloud Tasks accepts for an HTTP task."""

# Headers Cloud Tasks sets or replaces itself, and the bearer token an oidc_token replaces.
_DROPPED: Final = frozenset({"user-agent", "host", "content-length", "authorization"})
# A task id may hold letters, digits, hyphens and underscores only (at most 500).
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9-]")


def task_id(key: str) -> str:
    """The task id of dispatch ``key`` (``{run_id}/{attempt}``).

    Injective: letters, digits and ``-`` stay; every other character (``_`` too)
    becomes ``_`` and its code point in hex, ``_`` again (``/`` is ``_2f_``), so two keys
    never share a name and the same key always gives the same one.
    """
    return _UNSAFE.sub(lambda m: f"_{ord(m.group()):x}_", key)


def dispatch_deadline(timeout: timedelta | None) -> timedelta:
    """How long Cloud Tasks waits for the target: the run's ``timeout`` clamped to
    15 s .. 30 min; 30 min when the run has none (the work's own timeout governs)."""
    if timeout is None:
        return MAX_DISPATCH_DEADLINE
    return min(max(timeout, MIN_DISPATCH_DEADLINE), MAX_DISPATCH_DEADLINE)


def task_headers(d: Dispatch) -> dict[str, str]:
    """The task's request headers: the dispatch's, less those Cloud Tasks owns or an
    ``oidc_token`` replaces (module docstring)."""
    return {name: value for name, value in d.headers.items() if name not in _DROPPED}


def _grpc_error_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return one_line(str(message), 200) or type(exc).__name__


class TaskQueue:
    """Enqueues dispatches as HTTP tasks of one Cloud Tasks queue.

    ``queue`` is the queue's path (``projects/P/locations/L/queues/Q``);
    ``service_account`` the email Cloud Tasks mints ``auth: oidc`` targets' ID tokens
    as (it needs ``roles/run.invoker`` on them, and the dispatcher
    ``iam.serviceAccounts.actAs`` on it); ``emulator_host`` (``host:port``) talks
    plaintext gRPC to an emulator instead of Google with default credentials;
    ``namespace`` (the store's) prefixes every task name (module docstring). The
    client is created on first use, in the running event loop (its gRPC channel belongs
    to that loop), so constructing does no I/O. :meth:`enqueue` never raises for
    network, API or target problems; it returns a verdict.
    """

    def __init__(
        self,
        queue: str,
        *,
        service_account: str | None,
        allow_private_targets: bool,
        emulator_host: str | None = None,
        namespace: str | None = None,
    ) -> None:
        self.queues = tuple(q.strip() for q in queue.split(",") if q.strip())
        """Every queue path given (``queue`` may list several, comma-separated)."""
        self.queue = self.queues[0]
        """The first queue: the only one, unless several were given."""
        self.namespace = namespace
        self.service_account = service_account
        self._allow_private = allow_private_targets
        self._emulator_host = emulator_host
        self._client: Any = None
        self._channel: Any = None

    def _tasks_client(self) -> Any:
        if self._client is None:
            # Imported here: the Cloud Tasks client is heavy and only this path needs it.
            from google.cloud import tasks_v2

            if self._emulator_host:
                import grpc
                from google.cloud.tasks_v2.services.cloud_tasks.transports import (
                    CloudTasksGrpcAsyncIOTransport,
                )

                self._channel = grpc.aio.insecure_channel(self._emulator_host)
                transport = CloudTasksGrpcAsyncIOTransport(channel=self._channel)
                self._client = tasks_v2.CloudTasksAsyncClient(transport=transport)
            else:
                self._client = tasks_v2.CloudTasksAsyncClient()
        return self._client

    def queue_for(self, key: str) -> str:
        """The queue that dispatch ``key``'s task goes to: always the same one for a key
        (module docstring, "Several queues")."""
        return self._queue_of(self.task_id(key))

    def _queue_of(self, task_id: str) -> str:
        if len(self.queues) == 1:
            return self.queue
        digest = hashlib.sha256(task_id.encode()).digest()
        return self.queues[int.from_bytes(digest[:8], "big") % len(self.queues)]

    def task_id(self, key: str) -> str:
        """The id of dispatch ``key``'s task in this queue: :func:`task_id` of the key,
        under the queue's namespace when it has one, after 8 hex digits of its SHA-256.

        Why the prefix: run ids of one schedule are sequential (``{id}@{time}``), and
        Cloud Tasks documents that sequential task names raise latency and errors at high
        rates; a hash prefix spreads them. It is a function of the key, so a duplicate
        still has the same name."""
        scoped = task_id(f"{self.namespace}/{key}" if self.namespace else key)
        return f"{hashlib.sha256(scoped.encode()).hexdigest()[:8]}-{scoped}"

    def task(
        self,
        d: Dispatch,
        *,
        oidc_audience: str | None,
        deadline: timedelta,
        schedule_time: datetime | None = None,
    ) -> Any:
        """The ``tasks_v2.Task`` for ``d`` (module docstring); ``oidc_audience`` set
        asks for an ``oidc_token`` (the caller checked there is a service account)."""
        from google.cloud import tasks_v2

        http = tasks_v2.HttpRequest(
            url=d.url,
            http_method=tasks_v2.HttpMethod.POST,
            headers=task_headers(d),
            body=d.body,
        )
        if oidc_audience is not None:
            http.oidc_token = tasks_v2.OidcToken(
                service_account_email=self.service_account or "", audience=oidc_audience
            )
        # The id names the task and picks its queue: computed once (it hashes the key).
        task_id = self.task_id(d.key)
        task = tasks_v2.Task(
            name=f"{self._queue_of(task_id)}/tasks/{task_id}",
            http_request=http,
            # proto-plus converts: timedelta to Duration, an aware datetime to Timestamp.
            dispatch_deadline=timedelta(seconds=int(deadline.total_seconds())),
        )
        if schedule_time is not None:
            task.schedule_time = schedule_time
        return task

    async def enqueue(
        self,
        d: Dispatch,
        *,
        oidc_audience: str | None,
        deadline: timedelta,
        schedule_time: datetime | None = None,
    ) -> SendResult:
        """Create the task for ``d``; ``ALREADY_EXISTS`` counts as sent (module docstring)."""
        from google.api_core import exceptions as gexc
        from google.auth.exceptions import GoogleAuthError

        label = f"enqueue POST {redact_url(d.url)}"
        if oidc_audience is not None and not self.service_account:
            return SendResult(
                SendOutcome.permanent,
                None,
                "auth: oidc through Cloud Tasks needs FIRECRON_TASKS_SERVICE_ACCOUNT",
            )
        try:
            # The same SSRF guard as a direct send: the URL must be one firecron would call.
            await resolve_target(d.url, allow_private=self._allow_private)
        except TargetRefusedError as exc:
            return SendResult(SendOutcome.permanent, None, str(exc))
        except OSError as exc:
            return SendResult(SendOutcome.retryable, None, f"{label}: {_grpc_error_line(exc)}")
        task = self.task(
            d, oidc_audience=oidc_audience, deadline=deadline, schedule_time=schedule_time
        )
        try:
            parent = task.name.rpartition("/tasks/")[0]
            await self._tasks_client().create_task(parent=parent, task=task)
        except gexc.AlreadyExists:
            # This attempt was enqueued before (a re-sent pending run): it is sent.
            return SendResult(SendOutcome.unacknowledged, None, None)
        except (
            gexc.InvalidArgument,
            gexc.PermissionDenied,
            gexc.NotFound,
            gexc.FailedPrecondition,
            gexc.Unauthenticated,
        ) as exc:
            return SendResult(SendOutcome.permanent, None, f"{label}: {_grpc_error_line(exc)}")
        except (gexc.GoogleAPICallError, gexc.RetryError, GoogleAuthError, OSError) as exc:
            # GoogleAuthError: no credentials yet, or a token refresh that failed.
            return SendResult(SendOutcome.retryable, None, f"{label}: {_grpc_error_line(exc)}")
        return SendResult(SendOutcome.unacknowledged, None, None)

    async def aclose(self) -> None:
        """Close the gRPC channel, when one was opened."""
        if self._channel is not None:
            await self._channel.close()
        elif self._client is not None:
            await self._client.transport.close()
        self._client = None
        self._channel = None
