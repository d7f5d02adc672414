"""A minimal asyncio HTTP/1.1 client: one request per connection, then close.

This is what the dispatcher sends with. A general client (httpcore over anyio) spent
most of the dispatcher's CPU on its connection and state-machine layers for a job that
is always the same: open a connection, write one small POST, read a status line,
close. Here that is one :class:`asyncio.Protocol` and a few coroutines.

Two layers:

- :func:`connect` and :class:`Connection`: the low-level client the
  :class:`~firecron.transport.sender.Sender` calls directly. ``write`` returns once the
  request has left the process (see :meth:`Connection.write`), which is the moment the
  sender releases its send slot and starts the acknowledgement clock; ``read_head``
  reads the status line and headers only, bounded by :data:`MAX_HEAD_BYTES`.
- :class:`OneShotTransport`: the same client as an ``httpx.AsyncBaseTransport``, so
  ``httpx.AsyncClient(transport=OneShotTransport())`` works (the response body can be
  streamed or read; closing the response closes the connection).

Scope, on purpose: HTTP/1.1 only, no proxies, no connection reuse, no redirects.
Interim ``1xx`` responses (other than ``101``) are skipped. TLS verifies the server's
certificate against the given :class:`ssl.SSLContext` for ``server_hostname``, which
is also the SNI name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Final

import httpx

__all__ = [
    "MAX_HEAD_BYTES",
    "Connection",
    "ConnectionDropped",
    "Head",
    "OneShotTransport",
    "ProtocolError",
    "connect",
    "default_ssl_context",
]

MAX_HEAD_BYTES: Final = 64 * 1024
"""Largest response head (status line plus headers) accepted; a bigger one is an error."""

_BODYLESS_STATUSES: Final = frozenset({204, 304})


class ProtocolError(Exception):
    """The server's response is not valid HTTP/1.1 (or its head is too large)."""


class ConnectionDropped(ConnectionError):
    """The connection ended before the expected part of the response arrived."""


@dataclass(frozen=True, slots=True)
class Head:
    """A response's status line and headers."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    """In arrival order, names as sent (HTTP names are case-insensitive)."""

    def header(self, name: bytes) -> bytes | None:
        """The last value of header ``name`` (lowercase), or None."""
        found = None
        for key, value in self.headers:
            if key.lower() == name:
                found = value
        return found


def default_ssl_context() -> ssl.SSLContext:
    """Certificate-verifying TLS client context with httpx's trust store (certifi).

    Creating one loads the CA bundle (file I/O, milliseconds): create it once and share it.
    """
    return httpx.create_ssl_context()


class _Protocol(asyncio.Protocol):
    """Buffers what arrives and wakes the one coroutine that waits on the connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # Pause (and so make write() wait) whenever anything is still buffered in the
        # process: a request counts as written only once it has all been handed on
        # (the kernel for TCP; the TCP transport for TLS, see Connection.write). The TLS
        # transport pauses at ``size >= high`` (so 0 would pause with nothing buffered),
        # the TCP transport at ``size > high``: both forms mean "anything left".
        if transport.get_extra_info("sslcontext") is not None:
            transport.set_write_buffer_limits(high=1, low=0)
        else:
            transport.set_write_buffer_limits(high=0)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake_reader()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionDropped("connection closed while writing"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- helpers for Connection -------------------------------------------------------

    def _wake_reader(self) -> None:
        waiter, self._data_waiter = self._data_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_for_data(self) -> None:
        """Wait until more data, EOF or a connection error arrives."""
        waiter = self._loop.create_future()
        self._data_waiter = waiter
        try:
            await waiter
        finally:
            self._data_waiter = None

    async def drain(self) -> None:
        """Wait until the transport's write buffer is empty (see connection_made)."""
        if not self._write_paused:
            return
        if self.transport is None or self.transport.is_closing():
            raise ConnectionDropped("connection closed while writing")
        waiter = self._loop.create_future()
        self._drain_waiter = waiter
        await waiter


class Connection:
    """One open client connection (see :func:`connect`). Not safe for concurrent use."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def write(self, data: bytes) -> None:
        """Write ``data`` and return once it has left this process's buffers.

        Plain TCP: every byte was handed to the kernel. TLS: every byte was encrypted
        and passed to the TCP transport, which may still hold up to its own high-water
        mark (64 KiB) while the peer is not reading. A small request is sent by the
        first ``send()`` in both cases. Raises :class:`OSError` (e.g.
        ``ConnectionResetError``) when the connection fails while writing.
        """
        protocol = self._protocol
        if protocol.error is not None:
            raise ConnectionDropped(f"connection failed before writing: {protocol.error}")
        if self._transport.is_closing():
            raise ConnectionDropped("connection closed before writing")
        self._transport.write(data)
        await protocol.drain()
        if protocol.error is not None:
            raise ConnectionDropped(f"connection failed while writing: {protocol.error}")

    async def read_head(self, max_bytes: int = MAX_HEAD_BYTES) -> Head:
        """Read the final response's status line and headers (interim 1xx are skipped).

        Raises :class:`ConnectionDropped` when the connection ends first and
        :class:`ProtocolError` for a malformed or oversized head.
        """
        while True:
            head = await self._read_one_head(max_bytes)
            if head.status >= 200 or head.status == 101:
                return head

    async def _read_one_head(self, max_bytes: int) -> Head:
        protocol = self._protocol
        buffer = protocol.buffer
        start = 0
        while True:
            end = buffer.find(b"\r\n\r\n", start)
            if end >= 0:
                break
            if len(buffer) > max_bytes:
                raise ProtocolError(f"response head larger than {max_bytes} bytes")
            if protocol.eof:
                raise ConnectionDropped(_dropped_message(protocol, "before a status line"))
            # The terminator may straddle two reads: resume the search 3 bytes back.
            start = max(0, len(buffer) - 3)
            await protocol.wait_for_data()
        if end > max_bytes:
            raise ProtocolError(f"response head larger than {max_bytes} bytes")
        raw = bytes(buffer[:end])
        del buffer[: end + 4]
        return _parse_head(raw)

    async def read_some(self) -> bytes:
        """What has arrived since the last read (waiting for at least one byte); ``b""`` at EOF."""
        protocol = self._protocol
        while not protocol.buffer:
            if protocol.eof:
                if protocol.error is not None:
                    raise ConnectionDropped(_dropped_message(protocol, "while reading"))
                return b""
            await protocol.wait_for_data()
        data = bytes(protocol.buffer)
        protocol.buffer.clear()
        return data

    def close(self) -> None:
        """Start closing at once, discarding anything unsent or unread. Idempotent.

        ``abort``, not a graceful close: after the head nothing more is wanted, a
        graceful TLS shutdown would wait on a peer that may never answer, and bytes
        already handed to the kernel are still delivered before its FIN. The socket
        itself is closed by the event loop's next iteration (see :meth:`aclose`).
        """
        self._transport.abort()

    async def aclose(self) -> None:
        """:meth:`close`, returning once the socket is closed (the peer sees the end).

        ``abort`` schedules the socket's close with ``call_soon``; one bare yield lets
        the loop run it first (its ready queue is FIFO), so no file descriptor outlives
        the request even when the caller then blocks or counts open connections.
        """
        self._transport.abort()
        await asyncio.sleep(0)


def _dropped_message(protocol: _Protocol, when: str) -> str:
    if protocol.error is not None:
        reason = " ".join(str(protocol.error).split()) or type(protocol.error).__name__
        return f"connection dropped {when}: {reason}"
    return f"connection closed by the server {when}"


def _parse_head(raw: bytes) -> Head:
    """Parse ``HTTP/1.x SSS reason`` and the header lines that follow (no terminator)."""
    lines = raw.split(b"\r\n")
    status_line = lines[0]
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        shown = status_line[:80].decode("latin-1")
        raise ProtocolError(f"invalid status line {shown!r}")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ProtocolError("invalid header line in the response")
        headers.append((name, value.strip(b" \t")))
    return Head(int(code), reason, headers)


async def connect(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Connection:
    """Open a TCP connection (TLS when ``ssl_context`` is given) to ``host:port``.

    ``host`` should be an IP address (the caller resolved and vetted it); a name is
    resolved by the event loop. With TLS, the certificate is verified for
    ``server_hostname`` (default: ``host``), which is also the SNI name. Raises
    :class:`OSError` (``ssl.SSLError`` included) when the connection or handshake fails.
    """
    loop = asyncio.get_running_loop()
    protocol = _Protocol(loop)
    transport, _ = await loop.create_connection(
        lambda: protocol,
        host,
        port,
        ssl=ssl_context,
        server_hostname=(server_hostname or host) if ssl_context is not None else None,
    )
    assert isinstance(transport, asyncio.Transport)
    return Connection(transport, protocol)


# -- the httpx transport ----------------------------------------------------------------


@contextlib.contextmanager
def _phase(
    timeout: float | None, timeout_error: type[httpx.TimeoutException], error: type[Exception]
) -> Iterator[None]:
    """Map a phase's timeout and network errors to httpx's exception types."""
    try:
        yield
    except TimeoutError as exc:
        raise timeout_error(f"timed out after {timeout}s") from exc
    except (ProtocolError, ConnectionDropped) as exc:
        raise (httpx.RemoteProtocolError if error is httpx.ReadError else error)(str(exc)) from exc
    except OSError as exc:
        raise error(str(exc) or type(exc).__name__) from exc


class _BodyStream(httpx.AsyncByteStream):
    """A response body read from the connection; closing it closes the connection."""

    def __init__(
        self, connection: Connection, length: int | None, chunked: bool, read_timeout: float | None
    ) -> None:
        self._connection = connection
        self._left = length
        self._chunked = chunked
        self._read_timeout = read_timeout
        self._closed = False

    async def _read(self) -> bytes:
        with _phase(self._read_timeout, httpx.ReadTimeout, httpx.ReadError):
            async with asyncio.timeout(self._read_timeout):
                return await self._connection.read_some()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._chunked:
            async for chunk in self._dechunk():
                yield chunk
            return
        left = self._left
        if left == 0:
            return
        while True:
            data = await self._read()
            if not data:
                if left is not None:
                    raise httpx.RemoteProtocolError("connection closed before the body ended")
                return
            if left is not None:
                if len(data) > left:
                    data = data[:left]  # anything after the body is not ours to read
                left -= len(data)
            yield data
            if left == 0:
                return

    async def _dechunk(self) -> AsyncIterator[bytes]:
        buffer = bytearray()

        async def more() -> None:
            data = await self._read()
            if not data:
                raise httpx.RemoteProtocolError("connection closed inside a chunked body")
            buffer.extend(data)

        while True:
            while (end := buffer.find(b"\r\n")) < 0:
                await more()
            size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise httpx.RemoteProtocolError("invalid chunk size in the response") from None
            del buffer[: end + 2]
            if size == 0:
                return  # trailers are not read: the connection closes anyway
            while len(buffer) < size + 2:
                await more()
            yield bytes(buffer[:size])
            del buffer[: size + 2]

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._connection.aclose()


class OneShotTransport(httpx.AsyncBaseTransport):
    """An httpx transport that opens a new connection per request and has no pool.

    HTTP/1.1 only, no proxies, nothing from the environment. Sends
    ``connection: close``; closing the response closes its connection (reading the
    body is optional). ``ssl_context`` verifies TLS (default:
    :func:`default_ssl_context`, created on first https use); the ``sni_hostname``
    request extension names the host to verify when the URL holds an address. The
    ``timeout`` extension's ``connect``, ``write`` and ``read`` entries are honoured.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context (created on first use: loading the CA bundle is file I/O)."""
        if self._ssl_context is None:
            self._ssl_context = default_ssl_context()
        return self._ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a new connection; the response body streams from it."""
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        if not url.host:
            raise httpx.UnsupportedProtocol("the URL has no host")
        port = url.port or (443 if scheme == "https" else 80)
        timeouts = request.extensions.get("timeout", {})
        connect_timeout = timeouts.get("connect")
        write_timeout = timeouts.get("write")
        read_timeout = timeouts.get("read")
        sni = request.extensions.get("sni_hostname")
        if isinstance(sni, bytes):
            sni = sni.decode("ascii")

        body = await request.aread()
        data = _request_bytes(request, body)

        with _phase(connect_timeout, httpx.ConnectTimeout, httpx.ConnectError):
            async with asyncio.timeout(connect_timeout):
                connection = await connect(
                    url.host,
                    port,
                    ssl_context=self.ssl_context if scheme == "https" else None,
                    server_hostname=sni or url.host,
                )
        try:
            with _phase(write_timeout, httpx.WriteTimeout, httpx.WriteError):
                async with asyncio.timeout(write_timeout):
                    await connection.write(data)
            with _phase(read_timeout, httpx.ReadTimeout, httpx.ReadError):
                async with asyncio.timeout(read_timeout):
                    head = await connection.read_head()
        except BaseException:
            connection.close()
            raise
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=_response_stream(connection, request.method, head, read_timeout),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    """The request line, headers and body of ``request``, framed for one connection."""
    target = request.url.raw_path or b"/"
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    chunked = False
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower == b"connection":
            continue  # replaced: this connection is closed after one request
        if lower == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        if b"\r" in name or b"\n" in name or b"\r" in value or b"\n" in value:
            raise httpx.LocalProtocolError("line break in a request header")
        lines.append(name + b": " + value)
    lines.append(b"connection: close")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if chunked:
        # The whole body is already in hand: one chunk, then the last-chunk marker.
        framed = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        return head + framed
    return head + body


def _response_stream(
    connection: Connection, method: str, head: Head, read_timeout: float | None
) -> _BodyStream:
    if method == "HEAD" or head.status in _BODYLESS_STATUSES or head.status < 200:
        return _BodyStream(connection, 0, False, read_timeout)
    encoding = head.header(b"transfer-encoding")
    if encoding is not None and b"chunked" in encoding.lower():
        return _BodyStream(connection, None, True, read_timeout)
    length = head.header(b"content-length")
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size < 0:
            connection.close()
            raise httpx.RemoteProtocolError("invalid content-length in the response")
        return _BodyStream(connection, size, False, read_timeout)
    return _BodyStream(connection, None, False, read_timeout)  # until the server closes
