"""Building dispatch POSTs and sending them one-way, with firecron's ack semantics.

A :class:`Dispatch` is one POST, ready to send (URL, body, headers, key). The
:class:`Sender` sends many of them concurrently and judges each one:

- ``acknowledged``: any 2xx within ``ack_timeout``.
- ``unacknowledged``: the request was fully written and no response came within
  ``ack_timeout`` (delivered, not acknowledged).
- ``retryable``: DNS or connect failure, connect/TLS/write timeout, write error, the
  connection dropped before a status line, 408, 429, any 5xx.
- ``permanent``: any other 4xx, any 3xx (redirects are never followed), a target the
  SSRF guard refused, a request that cannot be encoded.

A connection dropped after the request was written but before any status line is
``retryable``, not ``unacknowledged``: nothing says the target got it, and a resend is
safe because receivers deduplicate on ``webhook-id`` / ``idempotency-key``.

Each request gets its own connection, closed as soon as the status line and headers
arrive; the body is never read. Workers stream ``202`` and then keep the response
open for the whole run, so such a connection could never be reused anyway, and not
reading means the dispatcher never waits for the work.

Two limits (DESIGN "Firing: one-way POST"):

- ``concurrency`` bounds *sending*: DNS, connect, TLS and writing the request. The
  send slot is released the moment the body is written (httpcore's
  ``http11.send_request_body.complete`` trace event), so waiting for an
  acknowledgement holds no send slot.
- ``max_open`` bounds requests open at once, sending or waiting. A batch of N
  dispatches to targets that never answer thus takes about
  ``ceil(N / max_open) * ack_timeout`` plus the send time.

Timeouts: ``connect_timeout`` bounds DNS, connect, TLS and the write together; the
``ack_timeout`` clock starts when the request is fully written.

Client: httpx request/response types and transport interface, over
:class:`OneShotTransport`, which has no connection pool (one httpcore connection per
request, connected to the address the SSRF guard approved). ``bench/http_clients.py``
measured the choices; see its results.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpcore
import httpx

from firecron.core.lifecycle import SendOutcome
from firecron.core.models import Target
from firecron.core.runs import Run, RunTrigger
from firecron.errors import InvalidInputError, TargetRefusedError
from firecron.transport.guard import ResolvedTarget, redact_url, resolve_target
from firecron.transport.signing import signature_headers

__all__ = [
    "Dispatch",
    "OneShotTransport",
    "SendResult",
    "Sender",
    "SenderStats",
    "build_dispatch",
    "dispatch_body",
    "resolve_url",
]


@dataclass(frozen=True)
class Dispatch:
    """One POST, ready to send."""

    url: str
    """The target URL as configured (the SSRF guard checks it when sending)."""
    body: bytes
    """The JSON body (:func:`dispatch_body`)."""
    headers: dict[str, str]
    """Request headers with lowercase names (:func:`build_dispatch`); may hold a bearer token."""
    key: str
    """``{run_id}/{attempt}``: the idempotency key, also the ``webhook-id``."""

    def __repr__(self) -> str:
        # Headers may carry an ID token and the URL a query token: keep them out of logs.
        return f"Dispatch(url={redact_url(self.url)!r}, key={self.key!r})"


@dataclass(frozen=True)
class SendResult:
    """How one dispatch ended."""

    outcome: SendOutcome
    """The verdict (see the module docstring)."""
    status_code: int | None
    """The HTTP status, when a status line arrived."""
    error: str | None
    """None when acknowledged; else one line naming the URL (without query or userinfo)
    and what happened. Never contains a header value or a secret."""


@dataclass(frozen=True)
class SenderStats:
    """Counters of a :class:`Sender` since it was created (a snapshot)."""

    sent: int = 0
    """Dispatches finished, whatever the outcome."""
    acknowledged: int = 0
    unacknowledged: int = 0
    retryable: int = 0
    permanent: int = 0
    peak_open: int = 0
    """Most requests open at once (sending or waiting); never above ``max_open``."""
    peak_sending: int = 0
    """Most requests holding a send slot at once; never above ``concurrency``."""


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def dispatch_body(run: Run) -> bytes:
    """The compact JSON body of ``run``'s current attempt.

    Keys: ``run_id``, ``schedule_id``, ``scheduled_for`` (RFC 3339 UTC with ``Z``),
    ``attempt``, ``trigger`` (``retry`` for any attempt after the first, else the run's
    trigger) and ``params``.
    """
    trigger = RunTrigger.retry if run.attempt > 1 else run.trigger
    payload: dict[str, Any] = {
        "run_id": run.id,
        "schedule_id": run.schedule_id,
        "scheduled_for": _rfc3339(run.scheduled_for),
        "attempt": run.attempt,
        "trigger": trigger.value,
        "params": run.params,
    }
    # Compact UTF-8 JSON: these exact bytes are what the signature covers.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@functools.cache
def _user_agent() -> str:
    # Read lazily: package metadata is file I/O, and nothing does I/O at import time.
    try:
        return f"firecron/{version('firecron')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "firecron/0"


def build_dispatch(
    run: Run,
    url: str,
    *,
    secrets: Sequence[str],
    now: datetime,
    id_token: str | None = None,
) -> Dispatch:
    """The POST for ``run``'s current attempt to ``url``.

    Headers: ``content-type: application/json``, ``user-agent: firecron/<version>``,
    ``idempotency-key`` and ``webhook-id`` (both ``{run.id}/{run.attempt}``),
    ``webhook-timestamp`` (``now``), ``webhook-signature`` when ``secrets`` is not empty
    (one ``v1`` entry per secret, for rotations) and ``authorization: Bearer <id_token>``
    when a token is given. Enforcing that an ``hmac`` target has a secret is the
    caller's job.
    """
    key = f"{run.id}/{run.attempt}"
    body = dispatch_body(run)
    headers = {
        "content-type": "application/json",
        "user-agent": _user_agent(),
        "idempotency-key": key,
        **signature_headers(key, now, body, secrets),
    }
    if id_token is not None:
        headers["authorization"] = f"Bearer {id_token}"
    return Dispatch(url=url, body=body, headers=headers, key=key)


def resolve_url(target: Target, functions_base_url: str | None) -> str:
    """The URL to POST to: a ``url`` target's URL, or ``{base}/{function}``.

    Raises :class:`TargetRefusedError` for a ``function`` target without a base URL.
    """
    if target.url is not None:
        return target.url
    if not functions_base_url:
        raise TargetRefusedError(
            f"target function {target.function!r} needs FIRECRON_FUNCTIONS_BASE_URL"
        )
    return f"{functions_base_url.rstrip('/')}/{target.function}"


# httpcore's exceptions mapped to httpx's, as httpx's own transport does.
_HTTPCORE_TO_HTTPX: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_type, httpx_type in _HTTPCORE_TO_HTTPX:
            if isinstance(exc, core_type):
                raise httpx_type(str(exc)) from exc
        raise


class _ClosingStream(httpx.AsyncByteStream):
    """The response body; closing it closes the connection (there is no pool)."""

    def __init__(self, response: httpcore.Response, connection: httpcore.AsyncHTTPConnection):
        self._response = response
        self._connection = connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for chunk in self._response.aiter_stream():
                yield chunk

    async def aclose(self) -> None:
        with _httpx_errors():
            try:
                await self._response.aclose()
            finally:
                await self._connection.aclose()


class OneShotTransport(httpx.AsyncBaseTransport):
    """An httpx transport that opens a new connection per request and has no pool.

    Closing the response closes its connection. No proxies, no environment, HTTP/1.1.
    ``ssl_context`` verifies TLS; the ``sni_hostname`` request extension names the host
    to verify when the URL holds an address (how :class:`Sender` pins the address the
    SSRF guard approved).
    """

    def __init__(self, ssl_context: Any = None) -> None:
        self._ssl_context = ssl_context

    def _ssl(self) -> Any:
        if self._ssl_context is None:
            # Created on first use: loading the CA bundle is file I/O and takes milliseconds.
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a new connection; the response streams from it."""
        url = request.url
        scheme = url.raw_scheme
        port = url.port or (443 if scheme == b"https" else 80)
        connection = httpcore.AsyncHTTPConnection(
            httpcore.Origin(scheme, url.raw_host, port),
            ssl_context=self._ssl() if scheme == b"https" else None,
        )
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=scheme, host=url.raw_host, port=port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,  # an httpx AsyncByteStream is an async iterable of bytes
            extensions=request.extensions,
        )
        try:
            with _httpx_errors():
                response = await connection.handle_async_request(core_request)
        except BaseException:
            # httpcore already closed the socket on failure; this only drops the object.
            await connection.aclose()
            raise
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_ClosingStream(response, connection),
            extensions=response.extensions,
        )


class _Gauge:
    """How many are in use now, and the most ever."""

    __slots__ = ("now", "peak")

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def up(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def down(self) -> None:
        self.now -= 1


class _Slot:
    """A semaphore slot that is released at most once (early, or at the end)."""

    __slots__ = ("_gauge", "_held", "_sem")

    def __init__(self, sem: asyncio.Semaphore, gauge: _Gauge) -> None:
        self._sem = sem
        self._gauge = gauge
        self._held = False

    async def acquire(self) -> None:
        await self._sem.acquire()
        self._held = True
        self._gauge.up()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._gauge.down()
            self._sem.release()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _judge(status: int, shown: str) -> SendResult:
    if 200 <= status < 300:
        return SendResult(SendOutcome.acknowledged, status, None)
    if status in (408, 429) or 500 <= status < 600:
        return SendResult(SendOutcome.retryable, status, f"POST {shown}: HTTP {status}")
    if 300 <= status < 400:
        return SendResult(
            SendOutcome.permanent,
            status,
            f"POST {shown}: HTTP {status} (redirects are not followed)",
        )
    return SendResult(SendOutcome.permanent, status, f"POST {shown}: HTTP {status}")


class Sender:
    """Sends dispatches concurrently with the send-slot / open-slot split (module docstring).

    One ``Sender`` serves one event loop. :meth:`send` and :meth:`send_all` never raise
    for network, HTTP or target problems; they return a :class:`SendResult`.
    Cancellation propagates.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        max_open: int,
        ack_timeout: float,
        allow_private_targets: bool,
        connect_timeout: float = 5.0,
    ) -> None:
        if concurrency < 1 or max_open < 1:
            raise InvalidInputError("concurrency and max_open must be at least 1")
        if ack_timeout <= 0 or connect_timeout <= 0:
            raise InvalidInputError("ack_timeout and connect_timeout must be positive")
        self._ack_timeout = ack_timeout
        self._connect_timeout = connect_timeout
        self._allow_private = allow_private_targets
        self._send_slots = asyncio.Semaphore(concurrency)
        self._open_slots = asyncio.Semaphore(max_open)
        self._transport = OneShotTransport()
        self._open = _Gauge()
        self._sending = _Gauge()
        self._counts = dict.fromkeys(SendOutcome, 0)
        # httpcore timeouts are a backstop; the deadline in _attempt is the authority.
        self._timeouts = {
            "connect": connect_timeout,
            "write": connect_timeout,
            "read": None,
            "pool": None,
        }

    @property
    def stats(self) -> SenderStats:
        """Counters so far (a snapshot)."""
        c = self._counts
        return SenderStats(
            sent=sum(c.values()),
            acknowledged=c[SendOutcome.acknowledged],
            unacknowledged=c[SendOutcome.unacknowledged],
            retryable=c[SendOutcome.retryable],
            permanent=c[SendOutcome.permanent],
            peak_open=self._open.peak,
            peak_sending=self._sending.peak,
        )

    async def send(self, d: Dispatch) -> SendResult:
        """POST ``d`` and judge the outcome (never raises for network or HTTP problems)."""
        async with self._open_slots:
            self._open.up()
            try:
                result = await self._attempt(d)
            finally:
                self._open.down()
        self._counts[result.outcome] += 1
        return result

    async def send_all(self, ds: Sequence[Dispatch]) -> list[SendResult]:
        """Send every dispatch concurrently (within the limits); results in input order."""
        return list(await asyncio.gather(*(self.send(d) for d in ds)))

    async def aclose(self) -> None:
        """Release resources. Connections never outlive their request, so little is left."""
        await self._transport.aclose()

    def _request(self, d: Dispatch, target: ResolvedTarget, trace: Any) -> httpx.Request:
        # Connect to the approved address, not the name: a second lookup could be rebound.
        address = target.addresses[0]
        host = f"[{address}]" if ":" in address else address
        url = f"{target.scheme}://{host}:{target.port}{target.target}"
        headers = {**d.headers, "host": target.host_header}
        return httpx.Request(
            "POST",
            url,
            content=d.body,
            headers=headers,
            extensions={
                "timeout": self._timeouts,
                "sni_hostname": target.host,
                "trace": trace,
            },
        )

    async def _attempt(self, d: Dispatch) -> SendResult:
        shown = redact_url(d.url)
        loop = asyncio.get_running_loop()
        slot = _Slot(self._send_slots, self._sending)
        written = False
        await slot.acquire()
        try:
            async with asyncio.timeout(self._connect_timeout) as deadline:

                async def trace(event: str, info: dict[str, Any]) -> None:
                    nonlocal written
                    if event == "http11.send_request_body.complete":
                        # Sent: free the send slot and start the ack clock.
                        written = True
                        slot.release()
                        deadline.reschedule(loop.time() + self._ack_timeout)

                target = await resolve_target(d.url, allow_private=self._allow_private)
                response = await self._transport.handle_async_request(
                    self._request(d, target, trace)
                )
                # Status line and headers are in: close without reading the body.
                await response.aclose()
            return _judge(response.status_code, shown)
        except TimeoutError:
            if written:
                return SendResult(
                    SendOutcome.unacknowledged,
                    None,
                    f"POST {shown}: no response within {self._ack_timeout:g}s after sending",
                )
            return SendResult(
                SendOutcome.retryable,
                None,
                f"POST {shown}: not sent within {self._connect_timeout:g}s (DNS, connect or write)",
            )
        except TargetRefusedError as exc:
            return SendResult(SendOutcome.permanent, None, str(exc))
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:
            return SendResult(SendOutcome.permanent, None, f"POST {shown}: {_one_line(exc)}")
        except socket.gaierror as exc:
            return SendResult(
                SendOutcome.retryable, None, f"POST {shown}: DNS lookup failed: {_one_line(exc)}"
            )
        except (httpx.TransportError, OSError) as exc:
            what = "connection dropped before a response" if written else "connection failed"
            return SendResult(
                SendOutcome.retryable, None, f"POST {shown}: {what}: {_one_line(exc)}"
            )
        finally:
            slot.release()
