"""Google ID tokens for targets whose auth is ``oidc`` (private Cloud Functions / Run).

The audience is the target URL, as docs/design.md, "Firing: one-way POST" states. A
Cloud Run service (every 2nd gen function is one) accepts only its ``run.app`` URL or a
configured custom audience, so the deploy resolves a ``function`` target to its service's
root, ``https://{function}-PROJECT_NUMBER.REGION.run.app`` (a ``FIRECRON_FUNCTIONS_BASE_URL``
template), which is then both where the request goes and its token's audience.

Contract of :class:`IdTokenProvider`: ``await token(audience)`` returns a bearer token
for ``audience`` or raises a :class:`~firecron.errors.FirecronError` with one line that
names the audience (without query or userinfo) and never contains a token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Callable
from typing import Protocol

from firecron.errors import FirecronError
from firecron.transport.guard import redact_url

__all__ = ["REFRESH_MARGIN_SECONDS", "GoogleIdTokens", "IdTokenError", "IdTokenProvider"]

REFRESH_MARGIN_SECONDS = 300.0
"""A cached token is replaced this long before it expires."""


class IdTokenError(FirecronError):
    """No ID token could be obtained (no credentials, metadata server down, refused)."""


class IdTokenProvider(Protocol):
    """Source of bearer tokens for ``auth: oidc`` targets (see the module contract)."""

    async def token(self, audience: str) -> str:
        """A valid ID token whose ``aud`` is ``audience``."""
        ...


def _expiry(token: str) -> float:
    """The ``exp`` claim of a JWT, read without verifying (we minted it; we only cache it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        raise IdTokenError("the ID token returned by Google is not a JWT with 'exp'") from None


def _google_fetch(audience: str) -> str:
    # Imported here: google.auth is heavy and only oidc targets need it.
    import google.auth.transport.requests
    import google.oauth2.id_token

    request = google.auth.transport.requests.Request()
    token: str = google.oauth2.id_token.fetch_id_token(request, audience)  # type: ignore[no-untyped-call]
    return token


class GoogleIdTokens:
    """ID tokens from Google's default credentials, cached per audience.

    ``fetch`` is ``google.oauth2.id_token.fetch_id_token`` with a
    ``google.auth.transport.requests.Request``; it blocks, so it runs in a thread. A
    token is reused until :data:`REFRESH_MARGIN_SECONDS` before its ``exp``. Concurrent
    calls for one audience share one fetch. Google's errors become :class:`IdTokenError`.
    ``fetch`` and ``clock`` (Unix seconds) are replaceable for tests.
    """

    def __init__(
        self,
        fetch: Callable[[str], str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch or _google_fetch
        self._clock = clock
        self._cache: dict[str, tuple[float, str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _cached(self, audience: str) -> str | None:
        hit = self._cache.get(audience)
        if hit is not None and hit[0] - REFRESH_MARGIN_SECONDS > self._clock():
            return hit[1]
        return None

    async def token(self, audience: str) -> str:
        """A token for ``audience``: cached, or fetched in a thread (see the class doc)."""
        cached = self._cached(audience)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(audience, asyncio.Lock())
        async with lock:
            # Another caller may have fetched it while this one waited.
            cached = self._cached(audience)
            if cached is not None:
                return cached
            try:
                token = await asyncio.to_thread(self._fetch, audience)
            except FirecronError:
                raise
            except Exception as exc:
                # google.auth's messages can be long and multi-line; keep the first line.
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise IdTokenError(
                    f"cannot get a Google ID token for {redact_url(audience)}: "
                    f"{type(exc).__name__}: {first}"
                ) from None
            self._cache[audience] = (_expiry(token), token)
            return token
