"""Standard Webhooks signatures (https://www.standardwebhooks.com/), used on every dispatch.

Headers: ``webhook-id`` (here ``{run_id}/{attempt}``), ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` entries
over ``f"{id}.{timestamp}.{body}"``, one per secret during a rotation.

Secrets are given as configured in ``FIRECRON_SIGNING_SECRET``: ``whsec_<base64>`` (the
Standard Webhooks form, base64-decoded to the key) or any other string, whose UTF-8
bytes are the key. The first secret signs; verification accepts any of them.

Contract of :func:`verify_webhook`: it raises :class:`SignatureError` (one line, never
containing a secret) unless the three headers are present, the timestamp is within
``tolerance`` of ``now`` in either direction, and at least one ``v1`` signature matches
one secret, compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from firecron.errors import InvalidInputError, SignatureError

__all__ = ["DEFAULT_TOLERANCE", "sign_webhook", "signature_headers", "verify_webhook"]

DEFAULT_TOLERANCE = timedelta(minutes=5)


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise InvalidInputError(
                "FIRECRON_SIGNING_SECRET: a whsec_ secret must be base64"
            ) from None
    return secret.encode()


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
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise SignatureError("invalid webhook-timestamp") from None
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
