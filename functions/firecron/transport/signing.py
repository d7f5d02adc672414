"""Standard Webhooks signatures (https://www.standardwebhooks.com/), used on every dispatch.

Headers: ``webhook-id`` (here ``{run_id}/{attempt}``), ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` entries
over ``f"{id}.{timestamp}.{body}"``, one per secret during a rotation.

Secrets are given as configured in ``FIRECRON_SIGNING_SECRET``: a comma-separated list of
``whsec_<base64>`` secrets, the Standard Webhooks form, whose key is the base64-decoded
bytes after the prefix (padding optional, as in the reference ``standardwebhooks``
library). During a rotation (``NEW,OLD``) every secret signs, the first one first, so
receivers holding either verify; verification accepts a match with any of them. :func:`parse_signing_secrets` refuses anything else with one line naming the
variable and the position of the bad entry, never the secret; entry points call it once
at startup (through :meth:`firecron.settings.Settings.from_env`), so a bad secret can
never surface later as a failure of every request.

Contract of :func:`verify_webhook`: it raises :class:`SignatureError` (one line, never
containing a secret or a header's value) unless the three headers are present, the
timestamp is Unix seconds written as at most 15 ASCII digits and within ``tolerance``
of ``now`` in either direction, and at least one ``v1`` signature matches one secret,
compared in constant time. It raises nothing else, whatever the headers hold.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from firecron.errors import InvalidInputError, SignatureError

__all__ = [
    "DEFAULT_TOLERANCE",
    "SECRET_PREFIX",
    "check_signing_secrets",
    "parse_signing_secrets",
    "sign_webhook",
    "signature_headers",
    "signing_key",
    "verify_webhook",
]

DEFAULT_TOLERANCE = timedelta(minutes=5)

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
"""The prefix of a Standard Webhooks secret; the base64 key follows it."""

_SECRETS_VAR = "FIRECRON_SIGNING_SECRET"

_TIMESTAMP = re.compile(r"[0-9]{1,15}")
"""A ``webhook-timestamp`` that :func:`verify_webhook` reads: Unix seconds, ASCII digits."""


class _BadSecretError(ValueError):
    """Why a secret is refused, phrased to follow "entry N" or "signing secret"."""


def _decode(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise _BadSecretError(
            "does not start with whsec_ (expected whsec_<base64>, the Standard Webhooks format)"
        )
    encoded = secret.removeprefix(SECRET_PREFIX).rstrip("=")
    try:
        # Re-padded because the reference library accepts unpadded base64: a secret
        # that it signs and verifies with must work here too.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError:  # binascii.Error, or non-ASCII characters
        raise _BadSecretError("is not valid standard base64 after whsec_") from None
    if not key:
        raise _BadSecretError("has an empty key after whsec_")
    return key


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret: the decoded bytes after the prefix.

    Padded and unpadded standard base64 are accepted. Anything else (no prefix,
    invalid base64, an empty key) raises :class:`InvalidInputError` saying what is
    wrong without quoting the secret.
    """
    try:
        return _decode(secret)
    except _BadSecretError as exc:
        raise InvalidInputError(f"signing secret {exc}") from None


def check_signing_secrets(secrets: Sequence[str]) -> None:
    """Raise :class:`InvalidInputError` unless every secret is a valid ``whsec_`` secret.

    The message is one line naming ``FIRECRON_SIGNING_SECRET`` and the 1-based
    position of the first bad entry, e.g. ``FIRECRON_SIGNING_SECRET: entry 2 of 2
    does not start with whsec_ (...)``; it never contains a secret.
    """
    for position, secret in enumerate(secrets, start=1):
        try:
            _decode(secret)
        except _BadSecretError as exc:
            raise InvalidInputError(
                f"{_SECRETS_VAR}: entry {position} of {len(secrets)} {exc}"
            ) from None


def parse_signing_secrets(raw: str) -> tuple[str, ...]:
    """The secrets of a comma-separated ``FIRECRON_SIGNING_SECRET`` value, each checked
    by :func:`check_signing_secrets`.

    Entries are stripped of surrounding whitespace and blank ones are dropped, so
    ``""`` means no secret and positions count the non-blank entries.
    """
    secrets = tuple(part.strip() for part in raw.split(",") if part.strip())
    check_signing_secrets(secrets)
    return secrets


@functools.lru_cache(maxsize=64)
def _key(secret: str) -> bytes:
    # Cached: every dispatch and every verification needs the key of the same few secrets.
    return signing_key(secret)


def _sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    payload = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, payload, hashlib.sha256).digest()).decode()


def sign_webhook(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> str:
    """The ``webhook-signature`` header value: one ``v1,`` entry per secret, first secret first."""
    return " ".join(f"v1,{_sign(_key(s), msg_id, timestamp, body)}" for s in secrets)


def signature_headers(
    msg_id: str, now: datetime, body: bytes, secrets: Sequence[str]
) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and (when there are secrets) ``webhook-signature``."""
    timestamp = int(now.timestamp())
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secrets:
        # During a rotation every secret signs, so receivers on the old or new secret verify.
        headers["webhook-signature"] = sign_webhook(msg_id, timestamp, body, secrets)
    return headers


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> str:
    """Verify a signed request and return its ``webhook-id`` (see the module contract)."""
    if not secrets:
        raise SignatureError("no signing secret configured")
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    raw_ts = lowered.get("webhook-timestamp", "")
    raw_sig = lowered.get("webhook-signature", "")
    if not (msg_id and raw_ts and raw_sig):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    # ASCII digits only, and few of them: int() would also take "+1", " 1", "1_0" and
    # other scripts' digits, and 400 digits overflow the float arithmetic below.
    if not _TIMESTAMP.fullmatch(raw_ts):
        raise SignatureError("invalid webhook-timestamp: expected Unix seconds")
    timestamp = int(raw_ts)
    try:
        # HTTP headers are latin-1 text; a str from elsewhere may hold lone surrogates.
        msg_id.encode()
        raw_sig.encode()
    except UnicodeEncodeError:
        raise SignatureError("webhook-id or webhook-signature is not valid text") from None
    skew = abs(now.timestamp() - timestamp)
    if skew > tolerance.total_seconds():
        raise SignatureError(
            f"webhook-timestamp outside the {int(tolerance.total_seconds())}s tolerance"
        )
    offered = [part.split(",", 1)[1] for part in raw_sig.split() if part.startswith("v1,")]
    expected = [_sign(_key(s), msg_id, timestamp, body) for s in secrets]
    # Check every pair so the time taken does not depend on which one matched.
    matched = False
    for sig in offered:
        for exp in expected:
            matched |= hmac.compare_digest(sig.encode(), exp.encode())
    if not matched:
        raise SignatureError("signature does not match")
    return msg_id
