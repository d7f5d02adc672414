"""Verification of the Google OIDC token that Cloud Scheduler sends to ``dispatch``.

Contract of :func:`check_dispatch_caller`:
- With ``FIRECRON_DISPATCH_AUDIENCE`` set, the ``authorization`` header must hold
  ``Bearer <JWT>`` signed (RS256) by one of Google's current keys (fetched from
  ``FIRECRON_OIDC_CERTS_URL`` and cached), with issuer ``https://accounts.google.com``,
  ``aud`` equal to the configured audience, and ``exp``/``iat`` valid within 60 s of
  clock skew. With ``FIRECRON_DISPATCH_CALLER`` set, the token's ``email`` must equal it
  and be verified. Anything else raises :class:`SignatureError` with one line that
  names what is wrong (never the token itself), e.g. "token has no exp claim".
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


def _claims_checked(claims: dict[str, Any], audience: str, caller: str | None) -> dict[str, Any]:
    now = time.time()
    if claims.get("aud") != audience:
        raise SignatureError("token audience does not match FIRECRON_DISPATCH_AUDIENCE")
    exp, iat = claims.get("exp"), claims.get("iat")
    if exp is None:
        raise SignatureError("token has no exp claim")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise SignatureError("token exp claim is not a number")
    if exp + _CLOCK_SKEW_S < now:
        raise SignatureError("token expired or not yet valid")
    if isinstance(iat, int | float) and iat - _CLOCK_SKEW_S > now:
        raise SignatureError("token expired or not yet valid")
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise SignatureError("token issuer is not Google")
    if caller is not None and (claims.get("email") != caller or not claims.get("email_verified")):
        raise SignatureError("token is not from the configured caller")
    return claims


def _platform_verified_claims(token: str) -> dict[str, Any] | None:
    """The claims of a token whose signature Cloud Run removed after verifying it, else None."""
    import base64
    import json

    parts = token.split(".")
    if len(parts) != 3 or parts[2] != _PLATFORM_MARK:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except ValueError:
        raise SignatureError("malformed bearer token") from None
    if not isinstance(claims, dict):
        raise SignatureError("malformed bearer token")
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
    stripped = _platform_verified_claims(token)
    if stripped is not None:
        if not platform_verified:
            raise SignatureError("token signature could not be verified")
        return _claims_checked(stripped, audience, caller)
    from google.auth import exceptions as auth_exceptions
    from google.auth import jwt as _jwt

    jwt: Any = _jwt  # google-auth ships no type hints for this module

    try:
        header = jwt.decode_header(token)
    except (ValueError, auth_exceptions.GoogleAuthError):
        raise SignatureError("malformed bearer token") from None
    # Checked before any fetch: a token that cannot be valid costs no certificate fetch.
    if header.get("alg") != "RS256":
        raise SignatureError("token is not RS256-signed")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise SignatureError("malformed bearer token")
    documents = (certs or _CERTS).for_key(certs_url, kid)
    if kid is not None and kid not in documents:
        raise SignatureError("token is signed by a key that is not one of Google's current keys")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, certs=documents, audience=audience, clock_skew_in_seconds=_CLOCK_SKEW_S
        )
    except (ValueError, auth_exceptions.GoogleAuthError) as exc:
        message = str(exc).split("\n", 1)[0]
        # google-auth checks the claims only after the signature, so this token is genuine.
        missing = re.fullmatch(r"Token does not contain required claim (\w+)", message)
        if missing:
            raise SignatureError(f"token has no {missing.group(1)} claim") from None
        if "expired" in message.lower() or "too early" in message.lower():
            raise SignatureError("token expired or not yet valid") from None
        if "audience" in message.lower():
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
