"""A minimal asyncio HTTP/1.1 client: one request per connection, then close.

This is what every outbound request of firecron goes through, dispatches and webhook
notifications alike, always via :class:`~firecron.transport.sender.Sender` (which adds
the SSRF guard, address pinning, limits and timeouts). A general client (httpcore over
anyio) spent most of the dispatcher's CPU on its connection and state-machine layers
for a job that is always the same: open a connection, write one small POST, read a
status line, close. Here that is one :class:`asyncio.Protocol` and a few coroutines:
:func:`connect` opens a :class:`Connection`; ``write`` returns once the request has
left the process (see :meth:`Connection.write`), which is the moment the sender
releases its send slot and starts the acknowledgement clock; ``read_head`` reads the
status line and headers only, bounded by :data:`MAX_HEAD_BYTES`. A response body is
never read: the connection is closed after the head.

Scope, on purpose: HTTP/1.1 only, no proxies, no connection reuse, no redirects, no
response bodies.
Interim ``1xx`` responses (other than ``101``) are skipped. TLS verifies the server's
certificate against the given :class:`ssl.SSLContext` for ``server_hostname``, which
is also the SNI name.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_HEAD_BYTES",
    "Connection",
    "ConnectionDropped",
    "Head",
    "ProtocolError",
    "connect",
]

MAX_HEAD_BYTES: Final = 64 * 1024
"""Largest response head (status line plus headers) accepted; a bigger one is an error."""


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

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS connection's :class:`ssl.SSLObject` (its ``session``,
        ``session_reused``); None over plain TCP."""
        tls = self._transport.get_extra_info("ssl_object")
        return tls if isinstance(tls, ssl.SSLObject) else None

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
