"""firecron's HTTP/1.1 client (``transport/_http1.py``) through the one path that uses it,
the :class:`Sender`: over TLS (dispatches and notification webhooks alike), and the
edge cases of the one-way send that a well-behaved sink never shows.

Servers are real sockets on 127.0.0.1: the ``_sinks`` sink, or a raw asyncio server in a
thread scripted per test. TLS uses a self-signed certificate made here and trusted
through a test ``SSLContext`` only.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from _certs import tls_files
from _factories import T0
from _poll import apoll
from _sinks import serve
from firecron.core.events import Route, WebhookSink, schedule_error_event
from firecron.core.lifecycle import SendOutcome
from firecron.notify import Notifier
from firecron.settings import Settings
from firecron.transport import guard
from firecron.transport.sender import Dispatch, Sender

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HOST = "worker.test"


@contextmanager
def raw_server(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> Iterator[int]:
    """Serve ``handler`` per connection on 127.0.0.1 in a thread; yields the port."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        holder["server"] = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield holder["server"].sockets[0].getsockname()[1]
    finally:

        async def stop() -> None:
            holder["server"].close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read one request with a content-length body: (head, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def reply(raw: bytes) -> Handler:
    """A handler that reads the request, writes ``raw`` and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        writer.close()

    return handle


@pytest.fixture
async def worker_test_resolves_to_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[None]:
    """``worker.test`` resolves to 127.0.0.1 (as the guard sees it)."""
    guard._dns_cache.clear()
    loop = asyncio.get_running_loop()

    async def resolve(host: str, port: int, **_: Any) -> Any:
        assert host == HOST
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    yield
    guard._dns_cache.clear()


def sender(**overrides: Any) -> Sender:
    fields: dict[str, Any] = {
        "concurrency": 4,
        "max_open": 4,
        "ack_timeout": 5.0,
        "allow_private_targets": True,
    }
    fields.update(overrides)
    return Sender(**fields)


def dispatch(url: str, **headers: str) -> Dispatch:
    return Dispatch(url=url, body=b'{"run_id":"r"}', headers=dict(headers), key="r/1")


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for a cert valid for ``worker.test``."""
    folder: Path = tmp_path_factory.mktemp("tls")
    cert_file, key_file = tls_files(folder, names=(HOST,), ips=("127.0.0.2",))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


def tls_ok(seen: list[bytes]) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        seen.append(head + body)
        writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    return handle


@pytest.mark.usefixtures("worker_test_resolves_to_loopback")
async def test_https_verifies_the_certificate_for_the_host_name(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    seen: list[bytes] = []
    with raw_server(tls_ok(seen), server_ctx) as port:
        trusted = sender(ssl_context=client_ctx)
        result = await trusted.send(dispatch(f"https://{HOST}:{port}/hook?k=SECRET"))
        assert result.outcome is SendOutcome.acknowledged, result
        assert result.status_code == 202
        [request] = seen
        assert request.startswith(b"POST /hook?k=SECRET HTTP/1.1\r\n")
        assert f"\r\nhost: {HOST}:{port}\r\n".encode() in request
        assert request.endswith(b'{"run_id":"r"}')

        # The default trust store does not know this certificate: never sent, retryable.
        untrusted = await sender().send(dispatch(f"https://{HOST}:{port}/hook?k=SECRET"))
        assert untrusted.outcome is SendOutcome.retryable
        assert "connection failed" in (untrusted.error or "")
        assert "certificate verify failed" in (untrusted.error or "")
        assert "SECRET" not in (untrusted.error or "")
        assert len(seen) == 1

        # The same server reached by an address the certificate does not name.
        mismatch = await sender(ssl_context=client_ctx).send(
            dispatch(f"https://127.0.0.1:{port}/hook")
        )
        assert mismatch.outcome is SendOutcome.retryable
        assert len(seen) == 1


@pytest.mark.usefixtures("worker_test_resolves_to_loopback")
async def test_a_notification_webhook_goes_through_the_same_verified_tls(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    seen: list[bytes] = []
    event = schedule_error_event("nightly", {}, "boom", T0, None)
    settings = Settings(allow_private_targets=True)
    with raw_server(tls_ok(seen), server_ctx) as port:
        url = f"https://{HOST}:{port}/e"
        route = Route(sink_name="hook", types=(), sink=WebhookSink(type="webhook", url=url))
        trusted = Notifier(settings, sender=sender(ssl_context=client_ctx))
        assert await trusted.deliver(event, route) is None
        [request] = seen
        # Pinned to the approved address, verified and named for the host.
        assert request.startswith(b"POST /e HTTP/1.1\r\n")
        assert f"\r\nhost: {HOST}:{port}\r\n".encode() in request

        # The default trust store does not know this certificate: never sent.
        error = await Notifier(settings).deliver(event, route)
        assert error is not None
        assert error.startswith(f"webhook {url}: connection failed")
        assert "certificate verify failed" in error
        assert len(seen) == 1


# --- edge cases of the one-way send ----------------------------------------------------


async def test_a_drop_after_the_body_before_the_status_line_is_retryable() -> None:
    with raw_server(reply(b"")) as port:
        result = await sender().send(dispatch(f"http://127.0.0.1:{port}/h?token=SECRET"))
    assert result.outcome is SendOutcome.retryable
    assert result.status_code is None
    assert "connection dropped before a response" in (result.error or "")
    assert "SECRET" not in (result.error or "")


async def test_a_malformed_status_line_is_retryable() -> None:
    with raw_server(reply(b"HTTX/9 nope\r\n\r\n")) as port:
        result = await sender().send(dispatch(f"http://127.0.0.1:{port}/"))
    assert result.outcome is SendOutcome.retryable
    assert "invalid status line" in (result.error or "")


async def test_an_oversized_response_head_is_retryable() -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 70_000 + b"\r\n\r\n"
    with raw_server(reply(huge)) as port:
        result = await sender().send(dispatch(f"http://127.0.0.1:{port}/"))
    assert result.outcome is SendOutcome.retryable
    assert "larger than" in (result.error or "")


async def test_interim_1xx_responses_are_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    with raw_server(reply(raw + b"HTTP/1.1 204 No Content\r\n\r\n")) as port:
        result = await sender().send(dispatch(f"http://127.0.0.1:{port}/"))
    assert result.outcome is SendOutcome.acknowledged
    assert result.status_code == 204


async def test_a_status_line_split_across_reads_is_parsed() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for part in (b"HTTP/1.1 2", b"00 OK\r", b"\n\r", b"\n"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.close()

    with raw_server(handle) as port:
        result = await sender().send(dispatch(f"http://127.0.0.1:{port}/"))
    assert result.outcome is SendOutcome.acknowledged


async def test_header_injection_is_refused_before_connecting() -> None:
    with serve() as sink:
        s = sender()
        results = [
            await s.send(dispatch(sink.url, **{"x-evil": "a\r\nx-injected: 1"})),
            await s.send(dispatch(sink.url, **{"bad name": "v"})),
            await s.send(dispatch(sink.url, **{"x-text": "caf\u00e9"})),
        ]
        assert sink.requests == []
    assert [r.outcome for r in results] == [SendOutcome.permanent] * 3
    assert "line break" in (results[0].error or "")
    assert "invalid header name" in (results[1].error or "")
    assert "not ASCII" in (results[2].error or "")


async def test_framing_headers_are_the_senders_and_odd_paths_are_percent_encoded() -> None:
    with serve() as sink:
        result = await sender().send(
            dispatch(f"{sink.url}/a b/\u00e9?q=1", **{"content-length": "999", "host": "evil"})
        )
        [got] = sink.requests
    assert result.outcome is SendOutcome.acknowledged
    assert got.path == "/a%20b/%C3%A9?q=1"
    assert got.headers["host"] == f"127.0.0.1:{sink.port}"
    assert got.headers["content-length"] == str(len(b'{"run_id":"r"}'))


async def test_the_socket_is_closed_when_send_returns() -> None:
    # Even if the caller then blocks the loop, the target sees the connection end.
    with serve(status=202, stream=True) as sink:
        for _ in range(3):
            result = await sender().send(dispatch(sink.url))
            assert result.outcome is SendOutcome.acknowledged
            sink.wait_idle()


async def test_a_cancelled_send_frees_its_slots() -> None:
    s = sender(concurrency=1, max_open=1, ack_timeout=30)
    with serve(hold=True) as sink:
        task = asyncio.ensure_future(s.send(dispatch(sink.url)))
        waiting = asyncio.ensure_future(s.send(dispatch(sink.url)))
        await apoll(lambda: sink.received, lambda n: n >= 1, what="the first request at the sink")
        waiting.cancel()
        task.cancel()
        for t in (task, waiting):
            with pytest.raises(asyncio.CancelledError):
                await t
        sink.hold = False
        # The same sender must have both its slots back.
        result = await asyncio.wait_for(s.send(dispatch(sink.url)), 10)
    assert result.outcome is SendOutcome.acknowledged
