"""The benchmarks' HTTP sink: a separate process on 127.0.0.1 that models targets by path.

Run as ``python -m bench._sink``: it raises its open-files soft limit, prints its port,
then serves until its stdin closes. :class:`bench._common.SinkProcess` drives it.

With ``--tls-cert CERT --tls-key KEY`` (PEM files) it also serves the same targets over
TLS on a second port, printed on a second line (``bench/scale_tls.py``). The server
issues TLS 1.3 session tickets, so a client may resume its sessions.

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
``{"received", "open_now", "peak_open", "tls_received", "tls_resumed", "records":
[[key, path, received_at, ended_at|null], ...]}`` (``tls_received``: requests that came
over TLS; ``tls_resumed``: those whose connection resumed a TLS session);
``/_reset`` clears the records and counters.

Requests are read and their open ones counted by ``tests/_sinks.py``'s
:class:`SinkConnection`, the tests' sink: only the routing by path is this module's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import ssl
import sys
import time
from pathlib import Path
from typing import Any

# tests/ is not a package: its modules are imported from its folder, as pytest does.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _sinks import SinkConnection, SinkRequest

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
        self.tls_received = 0
        self.tls_resumed = 0

    def reset(self) -> None:
        self.records = []
        self.received = 0
        self.peak_open = self.open_now
        self.tls_received = 0
        self.tls_resumed = 0

    def stats(self) -> bytes:
        return json.dumps(
            {
                "received": self.received,
                "open_now": self.open_now,
                "peak_open": self.peak_open,
                "tls_received": self.tls_received,
                "tls_resumed": self.tls_resumed,
                "records": self.records,
            },
            separators=(",", ":"),
        ).encode()


class _Connection(SinkConnection):
    """One connection, one request (the dispatcher and the baseline never reuse one).

    A timer keeps running when its client leaves: a /work or /sync job goes on (and
    records its end); the others then have nobody to answer.
    """

    def __init__(self, state: _State) -> None:
        super().__init__(state)
        self.state = state

    def handle(self, request: SinkRequest) -> None:
        state = self.state
        path = request.path
        key = request.headers.get("webhook-id", "-")
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
        tls = self.transport.get_extra_info("ssl_object") if self.transport else None
        if tls is not None:
            state.tls_received += 1
            state.tls_resumed += bool(tls.session_reused)
        state.records.append(record)
        self.open_request()
        loop = asyncio.get_running_loop()
        if kind == "ack":
            if value > 0:
                loop.call_later(value / 1000, self._answer)
            else:
                self._answer()
        elif kind == "hold":
            loop.call_later(value, self._answer)
        elif kind == "work":
            self._write(_HEAD_202 + b"b\r\n" + _BODY + b"\r\n")
            self.close_request()  # acknowledged: the response has started
            loop.call_later(value, self._work_done, record)
        elif kind == "sync":
            loop.call_later(value, self._sync_done, record)
        else:
            self._write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.close_request()
            self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _answer(self) -> None:
        self._write(_HEAD_200 + _BODY)
        self.close_request()
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


async def _main(tls_cert: str | None, tls_key: str | None) -> None:
    _raise_nofile()
    state = _State()
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(
            lambda: _Connection(state), "127.0.0.1", 0, backlog=4096, reuse_address=True
        )
    ]
    if tls_cert and tls_key:
        # The defaults of a server context: TLS 1.2+, session tickets on (2 per handshake).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert, tls_key)
        servers.append(
            await loop.create_server(
                lambda: _Connection(state),
                "127.0.0.1",
                0,
                backlog=4096,
                reuse_address=True,
                ssl=context,
            )
        )
    for server in servers:
        print(server.sockets[0].getsockname()[1], flush=True)
    # Serve until the parent closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    for server in servers:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench._sink")
    parser.add_argument("--tls-cert", help="PEM certificate (chain): also serve over TLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    asyncio.run(_main(args.tls_cert, args.tls_key))
