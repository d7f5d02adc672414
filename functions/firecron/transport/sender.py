"""Building dispatch POSTs and sending them one-way, with firecron's ack semantics.

A :class:`Dispatch` is one POST, ready to send (URL, body, headers, key). The
:class:`Sender` sends many of them concurrently and judges each one. It is firecron's
one outbound HTTP path: dispatches, and webhook notifications too
(:class:`firecron.notify.Notifier` builds its signed POSTs as :class:`Dispatch` values
and sends them with a :class:`Sender` of its own), so both pass the same SSRF guard,
the same address pinning and the same client. The verdicts:

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
verified for the URL's host name, also sent as SNI, against the sender's
:class:`ssl.SSLContext`), the request line, headers and body in one write, then the
status line and headers only (at most 64 KiB), then close. It replaced httpx over
httpcore because it costs less CPU per dispatch; ``bench/fanout.py`` ("Sender alone")
and ``bench/http_clients.py`` measure that, and the README's Performance section
reports the figures.

TLS session resumption: one connection per dispatch means one TLS handshake per
dispatch, and TLS costs more CPU than the rest of a fired run (``bench/scale_tls.py``).
The default context (:func:`tls_context`) is a :class:`ResumingTLSContext`: the sender
keeps a session of each (host, port) and offers it on the next connection there (a
TLS 1.3 ticket or a TLS 1.2 session), so that connection skips the certificate work
when the server accepts it; a server that does not simply does a full handshake. A
session only ever comes from a handshake that verified the certificate for that host
name with the same context, so verification is never skipped for a server that has not
proved it holds the session's secret. It saves less than the handshake work it skips:
CPython copies a session (serialized and parsed again, peer certificate included) each
time one is offered or read, so the sender reads one only when it must
(:meth:`TlsSessions.keep`).

The default context and its sessions belong to the process, not to one ``Sender``
(:func:`shared_tls`, one per ``ca_file``): deployed, dispatch makes a ``Sender`` per
tick, and a session kept by one tick is offered by the next. Loading the CA bundles
(~16 ms of file reads and parsing) happens once per process too.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import os
import re
import socket
import ssl
import string
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final
from urllib.parse import quote

import certifi

from firecron.core.lifecycle import SendOutcome
from firecron.core.models import Target
from firecron.core.render import one_line, rfc3339
from firecron.core.runs import Run, RunTrigger
from firecron.errors import InvalidInputError, TargetRefusedError
from firecron.transport import _http1
from firecron.transport.guard import ResolvedTarget, redact_url, resolve_target
from firecron.transport.signing import signature_headers

__all__ = [
    "Dispatch",
    "ResumingTLSContext",
    "SendResult",
    "Sender",
    "TlsSessions",
    "build_dispatch",
    "dispatch_body",
    "resolve_url",
    "shared_tls",
    "tls_context",
    "user_agent",
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
        "scheduled_for": rfc3339(run.scheduled_for),
        "attempt": run.attempt,
        "trigger": trigger.value,
        "params": run.params,
    }
    # Compact UTF-8 JSON: these exact bytes are what the signature covers.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@functools.cache
def user_agent() -> str:
    """The ``user-agent`` of every request firecron sends: ``firecron/<version>``."""
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
        "user-agent": user_agent(),
        "idempotency-key": key,
        **signature_headers(key, now, body, secrets),
    }
    if id_token is not None:
        headers["authorization"] = f"Bearer {id_token}"
    return Dispatch(url=url, body=body, headers=headers, key=key)


FUNCTION_PLACEHOLDER: Final = "{function}"
"""Where a ``FIRECRON_FUNCTIONS_BASE_URL`` template puts a ``function`` target's name."""


def resolve_url(target: Target, functions_base_url: str | None) -> str:
    """The URL to POST to: a ``url`` target's URL, or the function's URL.

    A base holding :data:`FUNCTION_PLACEHOLDER` is a template and the name replaces the
    placeholder (Cloud Run's ``https://{function}-PROJECT_NUMBER.REGION.run.app``, whose
    root is also the ID-token audience the service accepts); any other base gives
    ``{base}/{function}``. Raises :class:`TargetRefusedError` for a ``function`` target
    without a base URL.
    """
    if target.url is not None:
        return target.url
    if not functions_base_url:
        raise TargetRefusedError(
            f"target function {target.function!r} needs FIRECRON_FUNCTIONS_BASE_URL"
        )
    if FUNCTION_PLACEHOLDER in functions_base_url:
        return functions_base_url.replace(FUNCTION_PLACEHOLDER, str(target.function))
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


class _Limiter:
    """A FIFO counting semaphore whose acquire and release cost O(1).

    Not ``asyncio.Semaphore``: in Python 3.11 its ``acquire`` scans and removes from
    its waiter queue (O(waiters)), which with a thousand dispatches queued for 64 send
    slots made slot hand-over quadratic. A release hands its slot straight to the
    oldest waiter, so none can barge ahead of the queue.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

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

    def release(self) -> None:
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


def _error_line(exc: BaseException) -> str:
    return one_line(str(exc), 200) or type(exc).__name__


def _label(d: Dispatch) -> str:
    # Built only for an error line, so parsing the URL stays off the 2xx hot path.
    return f"POST {redact_url(d.url)}"


def _judge(status: int, label: str) -> SendResult:
    """The verdict on a final status that is not 2xx."""
    if status in (408, 429) or 500 <= status < 600:
        return SendResult(SendOutcome.retryable, status, f"{label}: HTTP {status}")
    if 300 <= status < 400:
        return SendResult(
            SendOutcome.permanent, status, f"{label}: HTTP {status} (redirects are not followed)"
        )
    return SendResult(SendOutcome.permanent, status, f"{label}: HTTP {status}")


# The session the next TLS connection made in this context offers (see
# ResumingTLSContext): set by Sender._attempt around its connect only. A context
# variable because asyncio creates the SSLObject in a callback (the transport's
# connection_made) that runs in a copy of the connecting task's context.
_OFFERED_SESSION: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar(
    "firecron_offered_tls_session", default=None
)

MAX_TLS_SESSIONS: Final = 1024
"""Most (host, port) sessions a :class:`TlsSessions` keeps; the oldest stored goes first."""


class ResumingTLSContext(ssl.SSLContext):
    """A client :class:`ssl.SSLContext` whose connections offer a cached TLS session.

    asyncio's ``create_connection`` has no ``session`` argument; it builds each
    connection's :class:`ssl.SSLObject` with :meth:`wrap_bio`, which here passes the
    session that :class:`Sender` put in a context variable for that one connect. With
    nothing offered it is a plain :class:`ssl.SSLContext`. Verification settings are
    the caller's (:func:`tls_context` makes the default, verifying one).
    """

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and not server_side:
            session = _OFFERED_SESSION.get()
        return super().wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The default client context: certificates and host names verified, TLS resumable.

    Trusts what httpx's default context trusts (certifi's CA bundle, or the bundle or
    directory named by ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), plus the PEM bundle
    ``ca_file`` when given (``FIRECRON_CA_FILE``: targets behind a private CA). Reads
    the files, so call it off the hot path. Raises :class:`OSError` (``ssl.SSLError``
    included) for a bundle that cannot be read or parsed.
    """
    context = ResumingTLSContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and name
    if os.environ.get("SSL_CERT_FILE"):
        context.load_verify_locations(cafile=os.environ["SSL_CERT_FILE"])
    elif os.environ.get("SSL_CERT_DIR"):
        context.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
    else:
        context.load_verify_locations(cafile=certifi.where())
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class TlsSessions:
    """The TLS session to offer on the next connection to each (host name, port), for
    one context. Thread-safe: the process's default one is shared by every sender."""

    def __init__(self) -> None:
        # Each entry: the session and when to renew it (epoch seconds: half its
        # lifetime). Insertion-ordered: the oldest stored is evicted first.
        self._entries: dict[tuple[str, int], tuple[ssl.SSLSession, float]] = {}
        self._lock = threading.Lock()

    def offer(self, key: tuple[str, int]) -> ssl.SSLSession | None:
        """The session kept for ``key``, if any."""
        with self._lock:
            stored = self._entries.get(key)
        return stored[0] if stored is not None else None

    def keep(self, key: tuple[str, int], connection: _http1.Connection) -> None:
        """Store the connection's TLS session for ``key``, once the response has come.

        Not right after the handshake: a TLS 1.3 server sends its session tickets after
        it, and they are read with the response. Only when the connection did not
        resume the stored session, or that one is past half its lifetime: reading a
        session copies it (CPython serializes and parses it, peer certificate
        included), which costs about as much CPU as resuming saves. A server that
        refuses a reused ticket thus gets a full handshake, whose session is stored.
        """
        tls = connection.ssl_object
        if tls is None:
            return
        with self._lock:
            stored = self._entries.get(key)
        if stored is not None and tls.session_reused and time.time() < stored[1]:
            return
        session = tls.session
        if session is None:
            return
        with self._lock:
            entries = self._entries
            entries.pop(key, None)
            entries[key] = (session, session.time + session.timeout / 2)
            while len(entries) > MAX_TLS_SESSIONS:
                del entries[next(iter(entries))]


_SHARED_TLS: dict[tuple[str | None, ...], tuple[ssl.SSLContext, TlsSessions]] = {}
_SHARED_TLS_LOCK = threading.Lock()


def shared_tls(ca_file: str | None = None) -> tuple[ssl.SSLContext, TlsSessions]:
    """This process's default client context for ``ca_file`` (:func:`tls_context`) and
    its sessions, made on first use and kept: every sender (and the email sink) of the
    process shares them. Keyed by ``ca_file`` and the ``SSL_CERT_*`` variables the
    context was loaded from. Raises as :func:`tls_context` does."""
    key = (ca_file, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _SHARED_TLS_LOCK:
        shared = _SHARED_TLS.get(key)
        if shared is None:
            shared = (tls_context(ca_file), TlsSessions())
            _SHARED_TLS[key] = shared
        return shared


class Sender:
    """Sends dispatches concurrently with the send-slot / open-slot split (module docstring).

    One ``Sender`` serves one event loop. :meth:`send` never raises for network, HTTP
    or target problems; it returns a :class:`SendResult`. Cancellation propagates (and
    closes the connection). ``ssl_context`` replaces the default TLS context
    (:func:`tls_context` with ``ca_file``, which is ignored when ``ssl_context`` is
    given), created on the first https send: loading the CA bundles is file I/O, so
    constructing does none. The default context and its sessions are the process's
    (:func:`shared_tls`); a given context gets sessions of this sender's own. TLS
    sessions are resumed (module docstring) when the context is a
    :class:`ResumingTLSContext`, as the default one is.
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
        ca_file: str | None = None,
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
        self._ssl_context = ssl_context
        self._ca_file = ca_file
        self._sessions = TlsSessions()

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context, self._sessions = shared_tls(self._ca_file)
        return self._ssl_context

    async def send(self, d: Dispatch, *, label: str | None = None) -> SendResult:
        """POST ``d`` and judge the outcome (never raises for network or HTTP problems).

        ``label`` starts every error line (default ``POST <url>``, the URL without
        query or userinfo); a caller whose URL path is itself a secret (a Slack
        webhook) passes one that hides it.
        """
        await self._open_slots.acquire()
        try:
            return await self._attempt(d, label)
        finally:
            self._open_slots.release()

    async def aclose(self) -> None:
        """Release resources: nothing is held, as no connection outlives its request.

        Kept so that owners close a ``Sender`` like any client.
        """

    async def _attempt(self, d: Dispatch, label: str | None) -> SendResult:
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
                context = self._tls() if https else None
                resumes = isinstance(context, ResumingTLSContext)
                session_key = (target.host, target.port)
                offered = None
                if resumes:
                    offered = _OFFERED_SESSION.set(self._sessions.offer(session_key))
                try:
                    # Connect to the approved address, not the name: a second lookup
                    # could be rebound. TLS verifies the certificate for the name (also
                    # the SNI), unless the server resumes a session of this name.
                    connection = await _http1.connect(
                        target.addresses[0],
                        target.port,
                        ssl_context=context,
                        server_hostname=target.host if https else None,
                    )
                finally:
                    if offered is not None:
                        _OFFERED_SESSION.reset(offered)
                await connection.write(request)
                # Sent: free the send slot and start the ack clock.
                written = True
                slot.release()
                deadline.reschedule(loop.time() + self._ack_timeout)
                # Status line and headers only; the body is never read.
                head = await connection.read_head()
            if resumes:
                self._sessions.keep(session_key, connection)
            if 200 <= head.status < 300:
                return SendResult(SendOutcome.acknowledged, head.status, None)
            return _judge(head.status, label or _label(d))
        except TimeoutError:
            label = label or _label(d)
            if written:
                return SendResult(
                    SendOutcome.unacknowledged,
                    None,
                    f"{label}: no response within {self._ack_timeout:g}s after sending",
                )
            return SendResult(
                SendOutcome.retryable,
                None,
                f"{label}: not sent within {self._connect_timeout:g}s (DNS, connect or write)",
            )
        except TargetRefusedError as exc:
            return SendResult(SendOutcome.permanent, None, str(exc))
        except _UnencodableError as exc:
            return SendResult(SendOutcome.permanent, None, f"{label or _label(d)}: {exc}")
        except socket.gaierror as exc:
            label = label or _label(d)
            return SendResult(
                SendOutcome.retryable, None, f"{label}: DNS lookup failed: {_error_line(exc)}"
            )
        except (_http1.ProtocolError, OSError) as exc:
            # OSError covers refused/reset connections, TLS failures (ssl.SSLError) and
            # a drop before the status line (_http1.ConnectionDropped).
            label = label or _label(d)
            what = "connection dropped before a response" if written else "connection failed"
            return SendResult(SendOutcome.retryable, None, f"{label}: {what}: {_error_line(exc)}")
        finally:
            slot.release()
            if connection is not None:
                await connection.aclose()
