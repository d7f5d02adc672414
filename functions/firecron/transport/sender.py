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

Two limits (docs/design.md, "Firing: one-way POST"):

- ``concurrency`` bounds *sending*: DNS, connect, TLS and writing the request. The
  send slot is released the moment the whole request is written (it has left the
  process: :meth:`firecron.transport._http1.Connection.write`), so waiting for an
  acknowledgement holds no send slot.
- ``max_open`` bounds requests open at once, sending or waiting. A batch of N
  dispatches to targets that never answer thus takes about
  ``ceil(N / max_open) * ack_timeout`` plus the send time.

Timeouts: ``connect_timeout`` bounds DNS, connect, TLS and the write together; the
``ack_timeout`` clock starts when the request is fully written.

Client: firecron's own minimal HTTP/1.1 client (:mod:`firecron.transport._http1`):
one asyncio connection per request to the address the SSRF guard approved (TLS
verified for the URL's host name, also sent as SNI), the request line, headers and
body in one write, then the status line and headers only (at most 64 KiB), then close.
httpx stays the API: the same client is :class:`OneShotTransport`, an httpx transport
(``httpx.AsyncClient(transport=OneShotTransport())``); the sender calls its lower
layer directly, skipping httpx's Request/Response objects on the hot path. It
replaced httpx over httpcore because it costs less CPU per dispatch;
``bench/fanout.py`` ("Sender alone") and ``bench/http_clients.py`` measure that, and
the README's Performance section reports the figures.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import socket
import ssl
import string
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final
from urllib.parse import quote

from firecron.core.lifecycle import SendOutcome
from firecron.core.models import Target
from firecron.core.runs import Run, RunTrigger
from firecron.errors import InvalidInputError, TargetRefusedError
from firecron.transport import _http1
from firecron.transport._http1 import OneShotTransport
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


# Characters a request-target may hold as they are (RFC 9112 "visible ASCII"); anything
# else (space, controls, non-ASCII) is percent-encoded, as httpx's URL type would do.
_TARGET_SAFE: Final = string.punctuation
# RFC 9110 token characters: what a header name may consist of.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Framing headers the sender writes itself; a dispatch's own copies are dropped.
_FRAMING: Final = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_checked_names: set[str] = set()


class _UnencodableError(ValueError):
    """The dispatch cannot be written as an HTTP/1.1 request (a caller bug: permanent)."""


def _request_target(target: str) -> str:
    if target.isascii() and target.isprintable() and " " not in target:
        return target
    return quote(target, safe=_TARGET_SAFE)


def _encode_request(d: Dispatch, target: ResolvedTarget) -> bytes:
    """The whole POST (request line, headers, body) as the bytes of one write.

    Raises :class:`_UnencodableError` for a header name that is not a token or a value
    that is not ASCII or holds a line break (which would inject headers).
    """
    lines = [f"POST {_request_target(target.target)} HTTP/1.1", f"host: {target.host_header}"]
    for name, value in d.headers.items():
        if name in _FRAMING:
            continue
        if name not in _checked_names:
            if not _TOKEN.fullmatch(name):
                raise _UnencodableError(f"invalid header name {name[:40]!r}")
            if len(_checked_names) < 256:  # the names are a small fixed set
                _checked_names.add(name)
        lines.append(f"{name}: {value}")
    lines.append(f"content-length: {len(d.body)}")
    lines.append("connection: close")
    head = "\r\n".join(lines) + "\r\n\r\n"
    # One count over the whole head instead of a check per value: a CR, LF or NUL in a
    # value (or the target) would split or end the head early.
    if head.count("\n") != len(lines) + 1 or head.count("\r") != len(lines) + 1 or "\0" in head:
        raise _UnencodableError("a header value holds a line break or NUL")
    try:
        return head.encode("ascii") + d.body
    except UnicodeEncodeError:
        raise _UnencodableError("a header value is not ASCII") from None


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


class _Limiter:
    """A FIFO counting semaphore whose acquire and release cost O(1).

    Not ``asyncio.Semaphore``: in Python 3.11 its ``acquire`` scans and removes from
    its waiter queue (O(waiters)), which with a thousand dispatches queued for 64 send
    slots made slot hand-over quadratic. A release hands its slot straight to the
    oldest waiter, so none can barge ahead of the queue.
    """

    __slots__ = ("_free", "_waiters", "gauge")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.gauge = _Gauge()

    async def acquire(self) -> None:
        if self._free > 0:
            self._free -= 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # Handed a slot just as we were cancelled: pass it on. (A cancelled
                # waiter stays queued; release() skips it.)
                if waiter.done() and not waiter.cancelled():
                    self._hand_over()
                raise
        self.gauge.up()

    def release(self) -> None:
        self.gauge.down()
        self._hand_over()

    def _hand_over(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class _Slot:
    """A slot of a :class:`_Limiter` that is released at most once (early, or at the end)."""

    __slots__ = ("_held", "_limiter")

    def __init__(self, limiter: _Limiter) -> None:
        self._limiter = limiter
        self._held = False

    async def acquire(self) -> None:
        await self._limiter.acquire()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter.release()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _judge(status: int, url: str) -> SendResult:
    if 200 <= status < 300:
        return SendResult(SendOutcome.acknowledged, status, None)
    shown = redact_url(url)
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
    Cancellation propagates. ``ssl_context`` replaces the default certificate-verifying
    TLS context (certifi's CA bundle, created on the first https send).
    """

    def __init__(
        self,
        *,
        concurrency: int,
        max_open: int,
        ack_timeout: float,
        allow_private_targets: bool,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if concurrency < 1 or max_open < 1:
            raise InvalidInputError("concurrency and max_open must be at least 1")
        if ack_timeout <= 0 or connect_timeout <= 0:
            raise InvalidInputError("ack_timeout and connect_timeout must be positive")
        self._ack_timeout = ack_timeout
        self._connect_timeout = connect_timeout
        self._allow_private = allow_private_targets
        self._send_slots = _Limiter(concurrency)
        self._open_slots = _Limiter(max_open)
        # Sends go through the transport's low-level client directly (no httpx
        # Request/Response objects on the hot path); the transport owns the TLS context.
        self._transport = OneShotTransport(ssl_context)
        self._counts = dict.fromkeys(SendOutcome, 0)

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
            peak_open=self._open_slots.gauge.peak,
            peak_sending=self._send_slots.gauge.peak,
        )

    async def send(self, d: Dispatch) -> SendResult:
        """POST ``d`` and judge the outcome (never raises for network or HTTP problems)."""
        await self._open_slots.acquire()
        try:
            result = await self._attempt(d)
        finally:
            self._open_slots.release()
        self._counts[result.outcome] += 1
        return result

    async def send_all(self, ds: Sequence[Dispatch]) -> list[SendResult]:
        """Send every dispatch concurrently (within the limits); results in input order."""
        return list(await asyncio.gather(*(self.send(d) for d in ds)))

    async def aclose(self) -> None:
        """Release resources. Connections never outlive their request, so little is left."""
        await self._transport.aclose()

    async def _attempt(self, d: Dispatch) -> SendResult:
        loop = asyncio.get_running_loop()
        slot = _Slot(self._send_slots)
        written = False
        connection: _http1.Connection | None = None
        await slot.acquire()
        try:
            async with asyncio.timeout(self._connect_timeout) as deadline:
                target = await resolve_target(d.url, allow_private=self._allow_private)
                request = _encode_request(d, target)
                https = target.scheme == "https"
                # Connect to the approved address, not the name: a second lookup could
                # be rebound. TLS verifies the certificate for the name (also the SNI).
                connection = await _http1.connect(
                    target.addresses[0],
                    target.port,
                    ssl_context=self._transport.ssl_context if https else None,
                    server_hostname=target.host if https else None,
                )
                await connection.write(request)
                # Sent: free the send slot and start the ack clock.
                written = True
                slot.release()
                deadline.reschedule(loop.time() + self._ack_timeout)
                # Status line and headers only; the body is never read.
                head = await connection.read_head()
            return _judge(head.status, d.url)
        except TimeoutError:
            shown = redact_url(d.url)
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
        except _UnencodableError as exc:
            return SendResult(SendOutcome.permanent, None, f"POST {redact_url(d.url)}: {exc}")
        except socket.gaierror as exc:
            return SendResult(
                SendOutcome.retryable,
                None,
                f"POST {redact_url(d.url)}: DNS lookup failed: {_one_line(exc)}",
            )
        except (_http1.ProtocolError, OSError) as exc:
            # OSError covers refused/reset connections, TLS failures (ssl.SSLError) and
            # a drop before the status line (_http1.ConnectionDropped).
            what = "connection dropped before a response" if written else "connection failed"
            return SendResult(
                SendOutcome.retryable, None, f"POST {redact_url(d.url)}: {what}: {_one_line(exc)}"
            )
        finally:
            slot.release()
            if connection is not None:
                await connection.aclose()
