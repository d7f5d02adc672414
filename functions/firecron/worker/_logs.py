"""Capture of each run attempt's log records, stored beside the run.

While an attempt's function runs, the ``logging`` records emitted in its thread (the
request thread that calls it), and every record logged through ``ctx.log`` from any
thread, become :class:`~firecron.core.logs.LogLine` s of that attempt. They are kept in
memory and written in batches, by :meth:`AttemptLogs.flush`, which the SDK calls after
each heartbeat and once when the function returns (before its end is recorded, so a
reader that sees the run ended has every line). A line costs no write of its own.
The cap (:class:`~firecron.core.logs.LogBudget`, 256 KiB per attempt, then one marker
line) is applied as records arrive, so memory stays bounded too.

Records reach the capture through one :class:`logging.Handler` on the root logger,
installed once per process on the first attempt. Records below a logger's level are
never created, so the level decides what is captured:

- when ``logging`` is unconfigured (the root at its default ``WARNING`` with no
  handler, as in a functions-framework worker), the root is set to ``INFO`` and given
  a stderr handler at ``WARNING``, so ``INFO`` records are captured while the
  process's own output stays what Python's last-resort handler printed (deployed, the
  records of an attempt go to stdout as JSON instead, once);
- when the program configured ``logging`` itself, its levels are left alone.

``ctx.log`` is the ``firecron.run`` logger, set to ``INFO`` (unless configured), so
``ctx.log.info`` is captured either way.

Deployed (``K_SERVICE`` set, as on Cloud Run), every captured record is also written to
stdout as one Cloud Logging structured JSON line, with ``severity`` and the labels
``firecron_run_id`` and ``firecron_attempt``, uncapped: Cloud Logging holds the full
logs, and ``firecron logs`` prints the Logs Explorer query that finds them.

Each write passes ``expire_at``, its time plus the run's retention: on Firestore the
lines then expire (TTL) when the run does, a long run's earliest a little before.

A failed flush is logged (not captured) and its lines are kept for the next flush; the
stores make a repeated line harmless (``Store.append_logs`` is idempotent per line).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from firecron.core.logs import MAX_ATTEMPT_LOG_BYTES, LogBudget, LogLine
from firecron.worker._text import describe

if TYPE_CHECKING:
    from firecron.worker._runtime import _Runtime

__all__ = ["RUN_LOGGER", "AttemptLogs", "cloud_logging_line"]

RUN_LOGGER: Final = "firecron.run"
"""The logger behind ``ctx.log``."""

_ATTR: Final = "firecron_attempt_logs"
"""The record attribute ``ctx.log`` sets: the capture a record belongs to, from any thread."""

_log = logging.getLogger("firecron.worker")

# Thread id -> the capture of the attempt that thread runs.
_by_thread: dict[int, AttemptLogs] = {}
_install_lock = threading.Lock()
_installed = False


def _capture_of(record: logging.LogRecord) -> AttemptLogs | None:
    """The capture ``record`` belongs to: ``ctx.log``'s tag, else its thread's, else None."""
    capture = getattr(record, _ATTR, None)
    if isinstance(capture, AttemptLogs):
        return capture
    return _by_thread.get(record.thread or 0)


def _not_structured(record: logging.LogRecord) -> bool:
    """False for a record a deployed capture writes as JSON: printed once, not twice."""
    capture = _capture_of(record)
    return capture is None or not capture.structured


class _Handler(logging.Handler):
    """The root handler that hands each record to its attempt's capture, if any."""

    def emit(self, record: logging.LogRecord) -> None:
        capture = _capture_of(record)
        if capture is not None:
            capture.record(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # A capture failure must never reach the function; it is the capture's loss only.
        pass


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        root = logging.getLogger()
        if root.level == logging.WARNING and not root.handlers:
            # Unconfigured: what Python's last resort printed (WARNING and up, the bare
            # message, on stderr) stays printed, and INFO records come into being.
            fallback = logging.StreamHandler()
            fallback.setLevel(logging.WARNING)
            fallback.addFilter(_not_structured)
            root.addHandler(fallback)
            root.setLevel(logging.INFO)
        root.addHandler(_Handler())
        run_logger = logging.getLogger(RUN_LOGGER)
        if run_logger.level == logging.NOTSET:
            run_logger.setLevel(logging.INFO)
        _installed = True


class _RunLog(logging.LoggerAdapter[logging.Logger]):
    """``ctx.log``: the ``firecron.run`` logger, its records tagged with their attempt."""

    def __init__(self, capture: AttemptLogs | None) -> None:
        super().__init__(logging.getLogger(RUN_LOGGER), {})
        self._capture = capture

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        if self._capture is not None:
            extra = dict(kwargs.get("extra") or {})
            extra[_ATTR] = self._capture
            kwargs["extra"] = extra
        return msg, kwargs


def run_logger(capture: AttemptLogs | None) -> logging.LoggerAdapter[logging.Logger]:
    """``ctx.log`` for ``capture`` (None: a plain ``firecron.run`` logger, captured nowhere)."""
    return _RunLog(capture)


def _message(record: logging.LogRecord) -> str:
    """The record's text: its message, then its traceback and stack when it has them."""
    try:
        text = record.getMessage()
    except Exception as exc:
        # A bad format/args pair is the caller's bug; keep what was logged.
        text = f"{record.msg!r} (unformattable with its args: {describe(exc)})"
    if record.exc_info and record.exc_info[0] is not None:
        text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    elif record.exc_text:
        text += "\n" + record.exc_text
    if record.stack_info:
        text += "\n" + record.stack_info
    return text


_SEVERITIES: Final[Mapping[str, str]] = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
    "CRITICAL": "CRITICAL",
}


def cloud_logging_line(
    run_id: str, attempt: int, at: datetime, level: str, logger: str, message: str
) -> str:
    """One Cloud Logging structured JSON line (no newline) of a captured record.

    Cloud Run turns ``severity``, ``message``, ``time`` and
    ``logging.googleapis.com/labels`` into the entry's own fields, so
    ``labels.firecron_run_id="RUN"`` finds a run's records in the Logs Explorer.
    """
    return json.dumps(
        {
            "severity": _SEVERITIES.get(level, "DEFAULT"),
            "message": message,
            "time": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "logger": logger,
            "logging.googleapis.com/labels": {
                "firecron_run_id": run_id,
                "firecron_attempt": str(attempt),
            },
        },
        ensure_ascii=False,
    )


class AttemptLogs:
    """The captured lines of one attempt, buffered until :meth:`flush` writes them.

    ``open()`` starts capturing the calling thread's records; ``close()`` stops. All
    methods are thread-safe and none raises. ``limit`` is for tests.
    """

    def __init__(
        self,
        runtime: _Runtime,
        run_id: str,
        attempt: int,
        *,
        limit: int = MAX_ATTEMPT_LOG_BYTES,
        structured: bool | None = None,
        retention: timedelta | None = None,
    ) -> None:
        self.runtime = runtime
        self.run_id = run_id
        self.attempt = attempt
        self.structured = bool(os.environ.get("K_SERVICE")) if structured is None else structured
        """Also write each record to stdout as Cloud Logging JSON (deployed workers)."""
        self.retention = retention
        """How long stored lines are kept after each write (the run's retention), or None."""
        self._budget = LogBudget(attempt, limit)
        self._pending: list[LogLine] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._threads: set[int] = set()
        self.logger = run_logger(self)
        """``ctx.log``: logs into this attempt from any thread."""

    def open(self) -> None:
        """Capture the records the calling thread emits, until :meth:`close`."""
        _install()
        ident = threading.get_ident()
        with self._lock:
            self._threads.add(ident)
        _by_thread[ident] = self

    def close(self) -> None:
        """Stop capturing the threads :meth:`open` registered (``ctx.log`` still captures)."""
        with self._lock:
            threads, self._threads = self._threads, set()
        for ident in threads:
            if _by_thread.get(ident) is self:
                del _by_thread[ident]

    def record(self, record: logging.LogRecord) -> None:
        """Take one record: capped into the buffer, and to stdout when deployed."""
        try:
            at = datetime.fromtimestamp(record.created, UTC)
            message = _message(record)
            with self._lock:
                self._pending.extend(self._budget.admit(at, record.levelname, record.name, message))
            if self.structured:
                line = cloud_logging_line(
                    self.run_id, self.attempt, at, record.levelname, record.name, message
                )
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        except Exception:
            # Never into the function: a record that cannot be taken is dropped.
            return

    def flush(self) -> bool:
        """Write the buffered lines in one store call; True when nothing is left unwritten.

        On failure the lines are kept (ahead of newer ones) for the next flush, and one
        warning is logged, uncaptured. Flushes are serialised, so lines are written in order.
        """
        with self._flush_lock:
            with self._lock:
                lines, self._pending = self._pending, []
            if not lines:
                return True
            try:
                expire_at = None if self.retention is None else self.runtime.now() + self.retention
                self.runtime.call(
                    self.runtime.store.append_logs(
                        self.run_id, self.attempt, lines, expire_at=expire_at
                    )
                )
            except Exception as exc:
                with self._lock:
                    self._pending[:0] = lines
                # Logged from a thread the capture does not hold: it is not captured.
                _log.warning(
                    "firecron worker: storing %d log lines of run %s attempt %d failed: %s",
                    len(lines),
                    self.run_id,
                    self.attempt,
                    describe(exc),
                )
                return False
            return True
