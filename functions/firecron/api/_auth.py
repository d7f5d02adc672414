"""Who may call the admin API, and from where.

- **Deployed** (``FIRECRON_ADMIN_AUDIENCE`` set): every request carries
  ``Authorization: Bearer <Google ID token>`` whose audience is that URL, checked as
  :func:`firecron.oidc.verify_google_id_token` checks dispatch's callers (RS256 against
  Google's certificates, issuer, expiry), and whose verified ``email`` is one of
  ``FIRECRON_ADMIN_MEMBERS``. No token or a bad one: 401. A valid token of someone
  else: 403. IAM (the ``admin_members`` invoker grants) already turned strangers away
  at Cloud Run; this is the same list, checked again in the code.
- **Locally** (no audience, not deployed, as under ``firecron dev``): no token is
  needed, but only loopback callers are answered (403 for any other address).
- A deployed function without an audience refuses every request (500): an admin API
  without authentication would let anyone change every schedule.

State-changing requests (anything but GET, HEAD and OPTIONS) also need the header
``X-Requested-By: firecron`` (403 otherwise). There are no cookies, so a browser page of
another site cannot act with a user's credentials; the header is what a cross-site form
cannot send without a CORS preflight, which this API never grants.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import flask

from firecron.api._problem import Problem
from firecron.errors import SignatureError
from firecron.settings import Settings

__all__ = ["REQUESTED_BY", "Authenticate", "check_request", "google_members"]

Authenticate = Callable[[flask.Request], str | None]
"""``authenticate(request)``: the caller's identity, or None (then 401). It may raise
:class:`Problem` itself (e.g. 403 for a caller it knows but refuses)."""

REQUESTED_BY = ("X-Requested-By", "firecron")
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def google_members(settings: Settings) -> Authenticate:
    """The deployed authenticator: a Google ID token for ``settings.admin_audience`` whose
    verified email is among ``settings.admin_members``."""
    from firecron.oidc import verify_google_id_token

    audience = settings.admin_audience
    if audience is None:
        raise ValueError("google_members needs settings.admin_audience")

    def authenticate(request: flask.Request) -> str | None:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "missing bearer token (a Google ID token for this API)")
        try:
            claims = verify_google_id_token(
                token.strip(),
                audience=audience,
                certs_url=settings.oidc_certs_url,
                platform_verified=settings.deployed,
            )
        except SignatureError as exc:
            text = str(exc).replace("FIRECRON_DISPATCH_AUDIENCE", "FIRECRON_ADMIN_AUDIENCE")
            raise Problem(401, text) from None
        email = claims.get("email")
        if not isinstance(email, str) or claims.get("email_verified") is not True:
            raise Problem(403, "the token carries no verified email")
        if email.lower() not in settings.admin_members:
            raise Problem(403, f"{email} is not in FIRECRON_ADMIN_MEMBERS")
        return email.lower()

    return authenticate


def _loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_request(
    request: flask.Request, settings: Settings, authenticate: Authenticate | None
) -> str:
    """Authenticate ``request`` (see the module contract) and return the caller.

    ``authenticate`` replaces the default (Google ID tokens when an audience is set,
    else loopback only). Raises :class:`Problem` (401, 403 or 500).
    """
    if authenticate is None:
        if settings.admin_audience is not None:
            authenticate = google_members(settings)
        elif settings.deployed:
            raise Problem(
                500,
                "refusing to serve: FIRECRON_ADMIN_AUDIENCE is not set, so callers cannot be "
                "verified; set it to this function's URL",
            )
        elif not _loopback(request.remote_addr):
            raise Problem(
                403, f"the local admin API answers loopback callers only, not {request.remote_addr}"
            )
        else:
            authenticate = _local
    caller = authenticate(request)
    if caller is None:
        raise Problem(401, "not authenticated")
    if request.method not in _SAFE and request.headers.get(REQUESTED_BY[0]) != REQUESTED_BY[1]:
        raise Problem(
            403,
            "a state-changing request needs the header X-Requested-By: firecron",
            field="X-Requested-By",
        )
    return caller


def _local(request: flask.Request) -> str:
    return "local"
