"""Real servers on 127.0.0.1 for the PagerDuty and email sinks' tests.

- :func:`serve_pagerduty`: an HTTP server that checks each POST against PagerDuty's
  Events API v2 schema (:func:`pagerduty_errors`) and answers as PagerDuty does:
  ``202`` with ``{"status": "success", ...}`` for a valid event, ``400`` with
  ``{"status": "invalid event", "errors": [...]}`` otherwise. ``fail_next`` makes the
  next requests answer ``503`` (an outage), to exercise retries.
- :func:`serve_smtp`: ``aiosmtpd`` with STARTTLS (a throwaway certificate for
  ``127.0.0.1``, whose PEM is written for the client to trust explicitly), requiring
  TLS before ``AUTH`` and before ``MAIL``, and one user and password.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from _certs import tls_files
from _sinks import closed_port

__all__ = [
    "PINNED_NAME",
    "PagerDuty",
    "Smtp",
    "pagerduty_errors",
    "self_signed",
    "serve_pagerduty",
    "serve_smtp",
]

_ACTIONS = {"trigger", "acknowledge", "resolve"}
_SEVERITIES = {"critical", "error", "warning", "info"}
_TOP_KEYS = {
    "routing_key",
    "event_action",
    "dedup_key",
    "payload",
    "links",
    "images",
    "client",
    "client_url",
}
_PAYLOAD_KEYS = {
    "summary",
    "source",
    "severity",
    "timestamp",
    "component",
    "group",
    "class",
    "custom_details",
}


def pagerduty_errors(body: Any, routing_key: str) -> list[str]:
    """What is wrong with ``body`` as an Events API v2 event for ``routing_key`` (empty: valid).

    Checked as PagerDuty documents it: ``routing_key`` and ``event_action`` are required;
    ``dedup_key`` (at most 255 characters) is required here for every action, since
    firecron always sets it; a trigger needs ``payload`` with ``summary`` (1 to 1024
    characters), ``source`` and ``severity`` (critical, error, warning or info), and its
    optional fields typed; ``links`` are objects with an ``href``. Unknown keys are
    refused, so a misspelt field fails the test instead of being ignored.
    """
    if not isinstance(body, dict):
        return ["the event is not a JSON object"]
    errors = [f"unknown field {key!r}" for key in sorted(set(body) - _TOP_KEYS)]
    if body.get("routing_key") != routing_key:
        errors.append("routing_key: missing or not this integration's")
    action = body.get("event_action")
    if action not in _ACTIONS:
        errors.append(f"event_action: {action!r} is not one of {sorted(_ACTIONS)}")
    dedup_key = body.get("dedup_key")
    if not isinstance(dedup_key, str) or not 0 < len(dedup_key) <= 255:
        errors.append("dedup_key: missing, or longer than 255 characters")
    for link in body.get("links", []):
        if not isinstance(link, dict) or not isinstance(link.get("href"), str):
            errors.append("links: each needs an href")
    if action != "trigger":
        return errors
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return [*errors, "payload: required for a trigger"]
    errors += [f"payload: unknown field {key!r}" for key in sorted(set(payload) - _PAYLOAD_KEYS)]
    summary = payload.get("summary")
    if not isinstance(summary, str) or not 0 < len(summary) <= 1024:
        errors.append("payload.summary: required, 1 to 1024 characters")
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        errors.append("payload.source: required")
    if payload.get("severity") not in _SEVERITIES:
        errors.append(f"payload.severity: one of {sorted(_SEVERITIES)}")
    if "timestamp" in payload:
        try:
            dt.datetime.fromisoformat(str(payload["timestamp"]))
        except ValueError:
            errors.append("payload.timestamp: not ISO 8601")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        errors.append("payload.custom_details: an object")
    return errors


@dataclass
class PagerDuty:
    """A running Events API endpoint: its ``url``, the valid events it accepted, the rest."""

    routing_key: str
    url: str = ""
    accepted: list[dict[str, Any]] = field(default_factory=list)
    """Valid events answered ``202``, in arrival order."""
    rejected: list[list[str]] = field(default_factory=list)
    """The schema errors of each event answered ``400``."""
    fail_next: int = 0
    """Answer this many next requests ``503`` without looking at them."""
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self, action: str) -> list[dict[str, Any]]:
        """The accepted events of ``action`` (``trigger`` or ``resolve``)."""
        with self.lock:
            return [e for e in self.accepted if e["event_action"] == action]


@contextlib.contextmanager
def serve_pagerduty(routing_key: str) -> Iterator[PagerDuty]:
    """Serve a checking Events API v2 endpoint at ``{url}`` (POST ``/v2/enqueue``)."""
    pd = PagerDuty(routing_key=routing_key)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            with pd.lock:
                pd.requests += 1
                outage = pd.fail_next > 0
                if outage:
                    pd.fail_next -= 1
            if outage:
                self._answer(503, {"status": "unavailable"})
                return
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            errors = pagerduty_errors(body, routing_key)
            if self.path != "/v2/enqueue":
                errors.append(f"path {self.path!r} is not /v2/enqueue")
            if self.headers.get("content-type") != "application/json":
                errors.append("content-type: application/json required")
            with pd.lock:
                if errors:
                    pd.rejected.append(errors)
                else:
                    pd.accepted.append(body)
            if errors:
                self._answer(400, {"status": "invalid event", "errors": errors})
            else:
                dedup = body["dedup_key"]
                self._answer(202, {"status": "success", "dedup_key": dedup})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    pd.url = f"http://127.0.0.1:{server.server_address[1]}/v2/enqueue"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield pd
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


PINNED_NAME = "mail.firecron.test"
"""A name no resolver knows (``.test`` is reserved), also in the certificate: a test
that gives the guard its address proves the connection goes where the guard approved."""


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway key and certificate for ``127.0.0.1``, ``localhost`` and
    :data:`PINNED_NAME` in ``directory``: (certificate PEM, key PEM). The certificate is
    its own CA: trust it explicitly."""
    return tls_files(directory, names=("localhost", PINNED_NAME), ips=("127.0.0.1",))


@dataclass(frozen=True)
class Received:
    """One message the SMTP server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    """The session was upgraded with STARTTLS before ``MAIL``."""
    login: str | None
    """The user the session authenticated as, if any."""


@dataclass
class Smtp:
    """A running SMTP server: ``host``, ``port`` and the messages it accepted."""

    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)
    """Every AUTH attempt: (user, accepted)."""


@contextlib.contextmanager
def serve_smtp(
    *,
    certificate: tuple[Path, Path] | None,
    user: str = "alerts@example.com",
    password: str = "smtp-password",
    port: int | None = None,
) -> Iterator[Smtp]:
    """Run aiosmtpd on 127.0.0.1 (``port``, else a free one) in its own thread.

    With ``certificate`` it offers STARTTLS and requires it before AUTH and MAIL, and
    requires AUTH as ``user`` with ``password`` before MAIL; without, it offers neither
    (a server that would take a password in clear).
    """
    smtp = Smtp(host="127.0.0.1", port=port or closed_port())

    class Handler:
        async def handle_MAIL(
            self,
            server: SMTP,
            session: Session,
            envelope: Envelope,
            address: str,
            mail_options: list[str],
        ) -> str:
            if certificate is not None and not session.authenticated:
                return "530 5.7.0 Authentication required"
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            return "250 OK"

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            data: Any = session.auth_data  # what authenticate() returned as auth_data
            login = data.login.decode() if isinstance(data, LoginPassword) else None
            content = envelope.original_content or b""
            smtp.received.append(
                Received(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=list(envelope.rcpt_tos),
                    content=content,
                    tls=session.ssl is not None,
                    login=login,
                )
            )
            return "250 Message accepted for delivery"

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == user
            and data.password.decode() == password
        )
        smtp.logins.append((data.login.decode() if isinstance(data, LoginPassword) else "", ok))
        # auth_data is kept on the session (who sent what is asserted in handle_DATA).
        return AuthResult(success=ok, handled=False, auth_data=data)

    kwargs: dict[str, Any] = {}
    if certificate is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(certificate[0]), str(certificate[1]))
        kwargs = {
            "tls_context": context,
            "require_starttls": True,
            "authenticator": authenticate,
            "auth_require_tls": True,
        }
    controller = Controller(Handler(), hostname=smtp.host, port=smtp.port, **kwargs)
    controller.start()
    try:
        yield smtp
    finally:
        controller.stop()
