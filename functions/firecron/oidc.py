"""Verification of the Google OIDC token that Cloud Scheduler sends to ``dispatch``.

Contract of :func:`check_dispatch_caller`:
- With ``FIRECRON_DISPATCH_AUDIENCE`` set, the ``authorization`` header must hold
  ``Bearer <JWT>`` signed (RS256) by one of Google's current keys (fetched from
  ``FIRECRON_OIDC_CERTS_URL`` and cached), with issuer ``https://accounts.google.com``,
  ``aud`` equal to the configured audience, and ``exp``/``iat`` valid within 60 s of
  clock skew. With ``FIRECRON_DISPATCH_CALLER`` set, the token's ``email`` must equal it
  and be verified. Anything else raises :class:`SignatureError` with one line that
  names what is wrong (never the token itself), e.g. "token has no exp claim".
- Malformed tokens are refused the same way, before any certificate fetch or
  signature check: over 16 KiB, not three base64url segments, a header or payload
  that is not a UTF-8 JSON object, an ``alg`` other than ``"RS256"``, a ``kid`` that
  is not a string, ``exp``/``iat`` missing or not numbers of seconds, ``iss``/``aud``/
  ``email`` not strings, ``email_verified`` not a boolean. Whatever the token holds,
  nothing else is raised (never a ``TypeError`` from comparing a list with a string).
- The certificates are cached for an hour. A token whose key id is not among them
  (Google rotated its keys) refetches them, but at most once per 30 s per URL
  (:class:`CertsCache`), so a stream of forged key ids cannot turn every request into
  a certificates fetch.
- Cloud Run checks the token itself when the function requires IAM (as deployed) and
  then replaces its signature with ``SIGNATURE_REMOVED_BY_GOOGLE`` before the code sees
  it. On a deployed function such a token is accepted without a signature check (an
  unauthenticated request could not have reached the code), but its issuer, audience,
  expiry and caller are still checked. Anywhere else that marker is refused.
- Without an audience, a deployed function (``K_SERVICE`` set by Cloud Run and Cloud
  Functions) refuses to run, raising :class:`FirecronError`, because an unauthenticated
  dispatcher would let anyone fire every schedule. Locally it accepts the call.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from firecron.errors import FirecronError, SignatureError
from firecron.settings import Settings

__all__ = ["GOOGLE_ISSUERS", "CertsCache", "check_dispatch_caller", "verify_google_id_token"]

GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
_CLOCK_SKEW_S = 60


def _download_certs(url: str) -> dict[str, str]:
    import httpx

    try:
        response = httpx.get(url, timeout=10, follow_redirects=False)
        response.raise_for_status()
        certs = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise FirecronError(f"cannot fetch OIDC certificates from {url}: {exc}") from None
    if not isinstance(certs, dict) or not all(isinstance(v, str) for v in certs.values()):
        raise FirecronError(f"unexpected OIDC certificate document at {url}")
    return certs


class CertsCache:
    """``{key id: PEM certificate}`` documents by URL, fetched on demand and cached.

    A document is kept ``ttl`` seconds. :meth:`for_key` refetches it early when a key
    id is missing, at most once per ``refetch_interval`` seconds since the last fetch
    of that URL (one that failed included), whatever the number of threads asking.
    ``clock`` is a monotonic time in seconds (tests pass their own).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = 3600.0,
        refetch_interval: float = 30.0,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._refetch_interval = refetch_interval
        self._lock = threading.Lock()
        self._certs: dict[str, tuple[float, dict[str, str]]] = {}
        """URL -> (expiry, document)."""
        self._fetched_at: dict[str, float] = {}
        """URL -> when its last fetch started."""

    def _fetch(self, url: str) -> dict[str, str]:
        certs = _download_certs(url)
        with self._lock:
            self._certs[url] = (self._clock() + self._ttl, certs)
        return certs

    def for_key(self, url: str, kid: str | None) -> dict[str, str]:
        """The document of ``url``, fetched unless the cached one is fresh and holds
        ``kid`` (any fresh one when ``kid`` is None).

        On a key miss the fresh cached document is returned as it is when a fetch
        started less than ``refetch_interval`` ago, or when the refetch fails. Raises
        :class:`FirecronError` when there is no fresh document and the fetch fails.
        """
        with self._lock:
            now = self._clock()
            hit = self._certs.get(url)
            cached = hit[1] if hit is not None and hit[0] > now else None
            if cached is not None:
                last = self._fetched_at.get(url)
                recent = last is not None and now - last < self._refetch_interval
                if kid is None or kid in cached or recent:
                    return cached
            # Claimed under the lock, so concurrent misses make one fetch between them.
            self._fetched_at[url] = now
        if cached is None:
            return self._fetch(url)
        try:
            return self._fetch(url)
        except FirecronError:
            return cached  # still valid; the key is unknown either way


_CERTS = CertsCache()
"""The process's cache of Google's certificates."""


_PLATFORM_MARK = "SIGNATURE_REMOVED_BY_GOOGLE"


_MAX_TOKEN_CHARS = 16 * 1024
"""A Google ID token is about 1 KB; anything much larger is refused unread."""
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


def _segment(text: str, what: str) -> dict[str, Any]:
    """One base64url JSON-object segment of a JWT, or :class:`SignatureError` naming it."""
    if not _SEGMENT.fullmatch(text):
        raise SignatureError(f"malformed bearer token: its {what} is not base64url")
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode())
    except (ValueError, RecursionError):  # bad base64, UTF-8 or JSON; too deep; too long
        raise SignatureError(f"malformed bearer token: its {what} is not JSON") from None
    if not isinstance(value, dict):
        raise SignatureError(f"malformed bearer token: its {what} is not a JSON object")
    return value


_MAX_SECONDS = 1e15
"""Bound of ``exp``/``iat`` (Unix seconds): larger ints overflow float arithmetic."""


def _seconds(value: object) -> bool:
    """True for a finite number of Unix seconds within :data:`_MAX_SECONDS`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # Compared before any conversion: a 400-digit int does not fit a float.
    return (isinstance(value, int) or math.isfinite(value)) and abs(value) <= _MAX_SECONDS


def _decoded(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(header, claims, signature)`` of ``token``, every field used checked for its type.

    Nothing here is trusted (the signature is not checked yet): it only guarantees that
    the checks that follow, ours and google-auth's, compare values of the right types.
    """
    if len(token) > _MAX_TOKEN_CHARS:
        raise SignatureError(f"bearer token larger than {_MAX_TOKEN_CHARS:,} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise SignatureError("malformed bearer token: expected three dot-separated parts")
    header, claims = _segment(parts[0], "header"), _segment(parts[1], "payload")
    if header.get("alg") != "RS256":
        raise SignatureError("token is not RS256-signed")
    if "kid" in header and not isinstance(header["kid"], str):
        raise SignatureError("malformed bearer token: its kid is not a string")
    for name in ("exp", "iat"):
        if name not in claims:
            raise SignatureError(f"token has no {name} claim")
        if not _seconds(claims[name]):
            raise SignatureError(f"token {name} claim is not a number")
    for name in ("iss", "aud", "email"):
        if name in claims and not isinstance(claims[name], str):
            raise SignatureError(f"token {name} claim is not a string")
    if "email_verified" in claims and not isinstance(claims["email_verified"], bool):
        raise SignatureError("token email_verified claim is not a boolean")
    return header, claims, parts[2]


def _claims_checked(claims: dict[str, Any], audience: str, caller: str | None) -> dict[str, Any]:
    """Check the values of the claims whose types :func:`_decoded` checked."""
    now = time.time()
    if claims.get("aud") != audience:
        raise SignatureError("token audience does not match FIRECRON_DISPATCH_AUDIENCE")
    if claims["exp"] + _CLOCK_SKEW_S < now or claims["iat"] - _CLOCK_SKEW_S > now:
        raise SignatureError("token expired or not yet valid")
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise SignatureError("token issuer is not Google")
    verified = claims.get("email_verified") is True
    # FIRECRON_DISPATCH_CALLER may name several accounts (the scheduler's and dispatch's own).
    callers = None if caller is None else {c.strip() for c in caller.split(",") if c.strip()}
    if callers is not None and (claims.get("email") not in callers or not verified):
        raise SignatureError("token is not from the configured caller")
    return claims


def verify_google_id_token(
    token: str,
    *,
    audience: str,
    certs_url: str,
    caller: str | None = None,
    platform_verified: bool = False,
    certs: CertsCache | None = None,
) -> dict[str, Any]:
    """Verify ``token`` as described in the module contract; returns its claims.

    ``platform_verified`` (a deployed function behind IAM) allows the platform's
    signature-removed marker; the claims are checked either way. ``certs`` is the
    certificate cache (default: the process's).
    """
    header, claims, signature = _decoded(token)
    if signature == _PLATFORM_MARK:
        if not platform_verified:
            raise SignatureError("token signature could not be verified")
        return _claims_checked(claims, audience, caller)
    from google.auth import exceptions as auth_exceptions
    from google.auth import jwt as _jwt

    jwt: Any = _jwt  # google-auth ships no type hints for this module

    # Checked before any fetch: a token that cannot be valid costs no certificate fetch.
    kid: str | None = header.get("kid")
    documents = (certs or _CERTS).for_key(certs_url, kid)
    if kid is not None and kid not in documents:
        raise SignatureError("token is signed by a key that is not one of Google's current keys")
    try:
        # google-auth decodes the token again; _decoded() made sure that every field it
        # reads has the type it expects.
        jwt.decode(token, certs=documents, audience=audience, clock_skew_in_seconds=_CLOCK_SKEW_S)
    except (ValueError, auth_exceptions.GoogleAuthError) as exc:
        message = str(exc).split("\n", 1)[0].lower()
        # google-auth checks the claims only after the signature, so this token is genuine.
        if "expired" in message or "too early" in message:
            raise SignatureError("token expired or not yet valid") from None
        if "audience" in message:
            raise SignatureError(
                "token audience does not match FIRECRON_DISPATCH_AUDIENCE"
            ) from None
        raise SignatureError("token signature could not be verified") from None
    return _claims_checked(claims, audience, caller)


def check_dispatch_caller(authorization: str | None, settings: Settings) -> None:
    """Authenticate a ``dispatch`` call (see the module contract)."""
    if settings.dispatch_audience is None:
        if settings.deployed:
            raise FirecronError(
                "refusing to dispatch: FIRECRON_DISPATCH_AUDIENCE is not set, so callers "
                "cannot be verified; set it to this function's URL"
            )
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SignatureError("missing bearer token")
    verify_google_id_token(
        token.strip(),
        audience=settings.dispatch_audience,
        certs_url=settings.oidc_certs_url,
        caller=settings.dispatch_caller,
        platform_verified=settings.deployed,
    )
