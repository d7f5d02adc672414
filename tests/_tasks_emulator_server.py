"""``gcloud-tasks-emulator`` as firecron's tests start it: with Cloud Tasks' task-name rule.

Run with the emulator virtualenv's interpreter, with the emulator's own arguments::

    .venv-tasks-emulator/bin/python tests/_tasks_emulator_server.py start --port=9022 ...

The emulator (PyPI ``gcloud-tasks-emulator``: 0.6.2, the latest, and 0.5.2, 0.4.0 and
0.3.1 alike) accepts a second task with the name of one it already holds, and delivers
both. Cloud Tasks refuses it: "If a task's ID is identical to that of an existing task
or a task that was deleted or executed recently then the call will fail with
ALREADY_EXISTS", and a queue created through Cloud Tasks keeps the name for 1 hour after
the task was deleted or executed (Cloud Tasks reference, ``CreateTaskRequest``).
firecron's once-only hand-over rests on that rule (the task name is the dispatch key,
see ``firecron/transport/cloud_tasks.py``), so the tests need an emulator that keeps it.
This module patches the emulator in its own process before starting it, and otherwise
leaves it as it is:

- ``CreateTask`` with an explicit name refuses, with gRPC ``ALREADY_EXISTS``
  ("Requested entity already exists", as Cloud Tasks answers), a name that is queued,
  being delivered, or left the queue (delivered, given up, purged) less than
  :data:`NAME_RESERVED_S` ago. A task the emulator names itself is never refused.
- Each delivery's answer is written to stdout as one line, ``firecron-tasks {json}``,
  with the task id, the HTTP status, the wall-clock times the request was sent and its
  answer's headers arrived (``time.time()``), and the answer's body when it announced
  a length of at most 64 KiB (a streamed answer's body is not read: the emulator does
  not read it either). Each refusal is one such line too (``"refused": true``).
  Tests read them from the emulator's log (``_tasks_emulator.TasksEmulator.deliveries``).

The emulator's other limits stay (see ``_tasks_emulator``): one thread per queue sends
its tasks one after the other, and ``oidc_token`` and ``dispatch_deadline`` are ignored.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from typing import Any, Final

NAME_RESERVED_S: Final = 3600.0
"""How long a task name stays refused after its task left the queue (Cloud Tasks: up to
an hour)."""
LOG_PREFIX: Final = "firecron-tasks "
"""The start of each line this module writes about a delivery or a refusal."""
_MAX_BODY: Final = 64 * 1024


def _log(record: dict[str, Any]) -> None:
    sys.stdout.write(LOG_PREFIX + json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _task_id(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def patch(server: Any, exceptions: Any) -> None:
    """Patch the emulator's ``server`` module (``gcloud_tasks_emulator.server``) in place:
    the name rule and the delivery log of the module docstring."""
    state_cls = server.QueueState
    create_task = state_cls.create_task
    submit_task = state_cls.submit_task
    purge_queue = state_cls.purge_queue
    make_request = server._make_task_request
    lock = threading.Lock()
    # name -> None while the task is queued or being delivered, else when it left (monotonic).
    names: dict[str, float | None] = {}

    def reserved(name: str) -> bool:
        left = names.get(name, 0.0)
        return name in names and (left is None or time.monotonic() - left < NAME_RESERVED_S)

    def create(self: Any, queue: str, task: Any) -> Any:
        name = task.name
        if not name:
            return create_task(self, queue, task)
        with lock:
            if reserved(name):
                _log({"task": _task_id(name), "refused": True, "at": time.time()})
                raise exceptions.AlreadyExists("Requested entity already exists")
            created = create_task(self, queue, task)
            names[name] = None
        return created

    def submit(self: Any, task_name: str, force_run: bool = False) -> Any:
        task = submit_task(self, task_name, force_run)
        name = task.name
        queue = name.rsplit("/", 2)[0]
        with lock:
            queued = any(t.name == name for t in self._queue_tasks.get(queue, ()))
            if name in names and not queued:
                names[name] = time.monotonic()
        return task

    def purge(self: Any, queue_name: str) -> Any:
        with lock:
            for task in self._queue_tasks.get(queue_name, ()):
                if task.name in names:
                    names[task.name] = time.monotonic()
            return purge_queue(self, queue_name)

    def request(queue_name: str, task: Any, host: str, port: int) -> Any:
        record: dict[str, Any] = {"task": _task_id(task.name), "sent_at": time.time()}
        try:
            response = make_request(queue_name, task, host, port)
        except server.error.HTTPError as exc:
            record.update(status=exc.code, answered_at=time.time(), body=None)
            _log(record)
            raise
        except Exception as exc:
            record.update(status=None, answered_at=time.time(), error=repr(exc))
            _log(record)
            raise
        record.update(status=response.status, answered_at=time.time(), body=None)
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= _MAX_BODY:
            record["body"] = response.read().decode("utf-8", "replace")
        _log(record)
        return response

    state_cls.create_task = create
    state_cls.submit_task = submit
    state_cls.purge_queue = purge
    server._make_task_request = request


def main() -> None:
    """Patch the emulator, then run its own command line (``start ...``)."""
    # Imported by name: these modules exist only in the emulator's virtualenv.
    server = importlib.import_module("gcloud_tasks_emulator.server")
    patch(server, importlib.import_module("google.api_core.exceptions"))
    importlib.import_module("gcloud_tasks_emulator.__main__").main()


if __name__ == "__main__":
    main()
