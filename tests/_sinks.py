"""Real HTTP/1.1 sink servers on 127.0.0.1 for transport tests and benchmarks.

A sink records every request it receives (method, path, lowercased headers, body)
and answers according to its current settings:

- ``status`` / ``delay``: reply ``status`` after ``delay`` seconds (``delay=0``: at once);
- ``hold=True``: never reply; the request stays open until the client goes away;
- ``stream=True``: send the status line and headers at once with a chunked body that
  never ends, like a firecron worker that streams ``202`` and then does the work;
- ``headers``: extra response headers (e.g. ``{"location": ...}`` for redirects).

Settings are plain attributes and may be changed between requests. ``open_now`` and
``peak_open`` count requests that were fully received and whose connection is still
open without a completed response, which is what "open requests" means for
``FIRECRON_MAX_OPEN`` as seen from the target's side.

Use :func:`serve` (a thread with its own event loop, so the client under test never
shares a loop with the server) or, for benchmarks, :func:`serve_process` / run this
file as a script (``python tests/_sinks.py --delay 0.05`` prints the port, then serves
until stdin closes). :func:`closed_port` gives a port with nothing listening.

The parser is deliberately small: HTTP/1.1 with ``content-length`` bodies (what httpx
and aiohttp send for ``bytes``), keep-alive unless the client says ``connection: close``.
It and the open-request counting (:class:`SinkConnection`) are shared with the
benchmarks' path-routed sink, ``bench/_sink.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Protocol

from _poll import TIMEOUT, poll

__all__ = [
    "OpenCounts",
    "Sink",
    "SinkConnection",
    "SinkRequest",
    "closed_port",
    "serve",
    "serve_process",
    "take_request",
]


@dataclass(frozen=True)
class SinkRequest:
    """One request as the sink received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Lowercased names; a repeated header keeps its last value."""
    body: bytes
    received_at: float = field(default_factory=time.time)
    """When the sink had read the whole request (``time.time()``, the sink's clock)."""


@dataclass
class Sink:
    """A running sink: its settings (mutable), its base ``url`` and what it recorded."""

    status: int = 200
    delay: float = 0.0
    hold: bool = False
    stream: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    record: bool = True
    """Keep every request in :attr:`requests` (benchmarks turn this off)."""
    port: int = 0
    requests: list[SinkRequest] = field(default_factory=list)
    received: int = 0
    open_now: int = 0
    peak_open: int = 0

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash: ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def wait_for(self, n: int, timeout: float = TIMEOUT) -> None:
        """Block until at least ``n`` requests were received (AssertionError on timeout).

        Blocking is fine from an async test: the sink serves from its own thread.
        """
        poll(lambda: self.received, lambda got: got >= n, timeout=timeout, what=self._what(n))

    def wait_idle(self, timeout: float = TIMEOUT) -> None:
        """Block until no request is open any more (AssertionError on timeout)."""
        poll(
            lambda: self.open_now,
            lambda open_now: open_now == 0,
            timeout=timeout,
            what=f"no open request at the sink {self.url}",
        )

    def _what(self, n: int) -> str:
        return f"{n} request(s) at the sink {self.url} (value: requests received)"


def take_request(buf: bytearray) -> SinkRequest | None:
    """The first complete request in ``buf``, removed from it; None while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(buf) < end + 4 + length:
        return None
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    return SinkRequest(method, path, headers, body)


class OpenCounts(Protocol):
    """Where a sink counts its open requests (see the module docstring)."""

    open_now: int
    peak_open: int


class SinkConnection(asyncio.Protocol):
    """One client connection: reads requests one at a time and counts the open ones.

    :meth:`handle` gets each complete request; the next is read only once
    :meth:`request_done` says the answer is complete (keep-alive), so a connection has
    at most one request open. A subclass that answers one request per connection never
    calls it.
    """

    def __init__(self, counts: OpenCounts) -> None:
        self.counts = counts
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.is_open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.close_request()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def handle(self, request: SinkRequest) -> None:
        """Record and answer ``request``, calling :meth:`open_request` once it is recorded."""
        raise NotImplementedError

    def open_request(self) -> None:
        """Count the request being handled as open until :meth:`close_request`."""
        self.is_open = True
        self.counts.open_now += 1
        self.counts.peak_open = max(self.counts.peak_open, self.counts.open_now)

    def request_done(self) -> None:
        """The answer is complete: read the next request on this connection."""
        self.busy = False
        self._next()

    def close_request(self) -> None:
        """The open request has its answer, or its client left; idempotent."""
        if self.is_open:
            self.is_open = False
            self.counts.open_now -= 1

    def _next(self) -> None:
        if self.busy:
            return
        request = take_request(self.buf)
        if request is None:
            return
        self.busy = True
        self.handle(request)


class _Connection(SinkConnection):
    def __init__(self, sink: Sink, live: set[asyncio.Transport]) -> None:
        super().__init__(sink)
        self.sink = sink
        self.live = live
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.live.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.live.discard(self.transport)
        if self.timer is not None:
            self.timer.cancel()
        super().connection_lost(exc)

    def handle(self, request: SinkRequest) -> None:
        sink = self.sink
        # Recorded before it is counted: a test thread that saw ``received`` reach n
        # must find n requests in ``requests``.
        if sink.record:
            sink.requests.append(request)
        sink.received += 1
        self.open_request()
        keep_alive = request.headers.get("connection", "").lower() != "close"
        if sink.stream:
            self._write_head(sink.status, {"transfer-encoding": "chunked"})
            assert self.transport is not None
            self.transport.write(b"5\r\nstart\r\n")
        elif sink.hold:
            pass
        elif sink.delay > 0:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(sink.delay, self._reply, sink.status, keep_alive)
        else:
            self._reply(sink.status, keep_alive)

    def _write_head(self, status: int, extra: dict[str, str]) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
        head = [f"HTTP/1.1 {status} {reason}"]
        head += [f"{k}: {v}" for k, v in {**extra, **self.sink.headers}.items()]
        assert self.transport is not None
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))

    def _reply(self, status: int, keep_alive: bool) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        body = b'{"ok":true}'
        extra = {"content-type": "application/json", "content-length": str(len(body))}
        if not keep_alive:
            extra["connection"] = "close"
        self._write_head(status, extra)
        self.transport.write(body)
        self.close_request()
        if keep_alive:
            self.request_done()
        else:
            self.transport.close()


async def _start(sink: Sink, live: set[asyncio.Transport]) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(sink, live), "127.0.0.1", sink.port, backlog=4096
    )
    sink.port = server.sockets[0].getsockname()[1]
    return server


@contextlib.contextmanager
def serve(
    *,
    status: int = 200,
    delay: float = 0.0,
    hold: bool = False,
    stream: bool = False,
    headers: dict[str, str] | None = None,
) -> Iterator[Sink]:
    """Run a sink in a background thread with its own event loop; stop it on exit.

    On exit every connection still open (held requests) is closed first, so the
    server stops at once.
    """
    sink = Sink(status=status, delay=delay, hold=hold, stream=stream, headers=headers or {})
    live: set[asyncio.Transport] = set()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, asyncio.Server] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        holder["server"] = loop.run_until_complete(_start(sink, live))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name=f"sink-{id(sink)}", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("sink did not start")
    try:
        yield sink
    finally:

        async def stop() -> None:
            server = holder["server"]
            server.close()
            for transport in list(live):
                transport.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def serve_process(*, status: int = 200, delay: float = 0.0) -> Iterator[str]:
    """Run a sink in a separate Python process; yields its base URL.

    For benchmarks: the client's event loop and CPU time are not shared with the server.
    The process exits when its stdin closes (and is killed if it does not).
    """
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--status",
            str(status),
            "--delay",
            str(delay),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _main() -> None:
    parser = argparse.ArgumentParser(description="HTTP sink on 127.0.0.1 (prints its port)")
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    async def main() -> None:
        sink = Sink(status=args.status, delay=args.delay, port=args.port, record=False)
        server = await _start(sink, set())
        print(sink.port, flush=True)
        loop = asyncio.get_running_loop()
        # Serve until the parent closes our stdin (or dies).
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(main())


if __name__ == "__main__":
    _main()
