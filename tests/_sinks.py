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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from _poll import TIMEOUT, poll

__all__ = ["Sink", "SinkRequest", "closed_port", "serve", "serve_process"]


@dataclass(frozen=True)
class SinkRequest:
    """One request as the sink received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Lowercased names; a repeated header keeps its last value."""
    body: bytes


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


class _Connection(asyncio.Protocol):
    def __init__(self, sink: Sink, live: set[asyncio.Transport]) -> None:
        self.sink = sink
        self.live = live
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.is_open = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.live.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.live.discard(self.transport)
        if self.timer is not None:
            self.timer.cancel()
        self._close_request()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def _open_request(self) -> None:
        self.is_open = True
        self.sink.open_now += 1
        self.sink.peak_open = max(self.sink.peak_open, self.sink.open_now)

    def _close_request(self) -> None:
        if self.is_open:
            self.is_open = False
            self.sink.open_now -= 1

    def _next(self) -> None:
        if self.busy:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        sink = self.sink
        # Recorded before it is counted: a test thread that saw ``received`` reach n
        # must find n requests in ``requests``.
        if sink.record:
            sink.requests.append(SinkRequest(method, path, headers, body))
        sink.received += 1
        self.busy = True
        self._open_request()
        keep_alive = headers.get("connection", "").lower() != "close"
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
        self._close_request()
        self.busy = False
        if keep_alive:
            self._next()
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
