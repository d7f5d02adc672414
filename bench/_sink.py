"""The benchmarks' HTTP sink: a separate process on 127.0.0.1 that models targets by path.

Run as ``python -m bench._sink``: it raises its open-files soft limit, prints its port,
then serves until its stdin closes. :class:`bench._common.SinkProcess` drives it.

Targets (POST; ``N`` is a number):

- ``/ack/N``: answer ``200`` after ``N`` milliseconds (a plain endpoint);
- ``/hold/N``: hold the request ``N`` seconds, then answer ``200`` (a target that never
  answers within the dispatcher's ``ack_timeout``);
- ``/work/N``: a firecron worker: the job starts at once, ``202`` and its headers are
  streamed at once (chunked), and the body stays open for ``N`` seconds of work; the
  work goes on if the client leaves, as it does in a worker that keeps its CPU;
- ``/sync/N``: a job behind a blocking call: it starts at once and the answer
  (``200``) comes only when its ``N`` seconds of work are done.

Every request is recorded: its key (the ``webhook-id`` header, else ``-``), its path,
the wall-clock time (``time.time()``, comparable across processes) at which it was
fully received, and for ``/work`` and ``/sync`` when its work ended.

Control (GET or POST, answered at once, never recorded): ``/_stats`` returns JSON
``{"received", "open_now", "peak_open", "records": [[key, path, received_at,
ended_at|null], ...]}``; ``/_reset`` clears the records and counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from typing import Any

_HEAD_200 = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n"
    b"connection: close\r\n\r\n"
)
_BODY = b'{"ok":true}'
_HEAD_202 = (
    b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
)


class _State:
    def __init__(self) -> None:
        self.records: list[list[Any]] = []
        self.received = 0
        self.open_now = 0
        self.peak_open = 0

    def reset(self) -> None:
        self.records = []
        self.received = 0
        self.peak_open = self.open_now

    def stats(self) -> bytes:
        return json.dumps(
            {
                "received": self.received,
                "open_now": self.open_now,
                "peak_open": self.peak_open,
                "records": self.records,
            },
            separators=(",", ":"),
        ).encode()


class _Connection(asyncio.Protocol):
    """One connection, one request (the dispatcher and the baseline never reuse one)."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.done = False
        self.is_open = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        # A /work timer keeps running (the worker goes on); others have nobody to answer.
        self._close_request()

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if len(self.buf) < end + 4 + int(headers.get("content-length", "0")):
            return
        self.done = True
        self._handle(method, path, headers.get("webhook-id", "-"))

    def _handle(self, method: str, path: str, key: str) -> None:
        state = self.state
        if path.startswith("/_"):
            body = state.stats() if path == "/_stats" else b"{}"
            if path == "/_reset":
                state.reset()
            self._write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
            self._close()
            return
        kind, _, arg = path.strip("/").partition("/")
        try:
            value = float(arg or 0)
        except ValueError:
            value = 0.0
        record: list[Any] = [key, path, time.time(), None]
        state.received += 1
        state.records.append(record)
        self.is_open = True
        state.open_now += 1
        state.peak_open = max(state.peak_open, state.open_now)
        loop = asyncio.get_running_loop()
        if kind == "ack":
            if value > 0:
                self.timer = loop.call_later(value / 1000, self._answer)
            else:
                self._answer()
        elif kind == "hold":
            self.timer = loop.call_later(value, self._answer)
        elif kind == "work":
            self._write(_HEAD_202 + b"b\r\n" + _BODY + b"\r\n")
            self._close_request()  # acknowledged: the response has started
            loop.call_later(value, self._work_done, record)
        elif kind == "sync":
            self.timer = loop.call_later(value, self._sync_done, record)
        else:
            self._write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self._close_request()
            self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _close_request(self) -> None:
        if self.is_open:
            self.is_open = False
            self.state.open_now -= 1

    def _answer(self) -> None:
        self._write(_HEAD_200 + _BODY)
        self._close_request()
        self._close()

    def _work_done(self, record: list[Any]) -> None:
        record[3] = time.time()
        self._write(b"0\r\n\r\n")
        self._close()

    def _sync_done(self, record: list[Any]) -> None:
        record[3] = time.time()
        self._answer()


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _main() -> None:
    _raise_nofile()
    state = _State()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(state), "127.0.0.1", 0, backlog=4096, reuse_address=True
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    # Serve until the parent closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(_main())
