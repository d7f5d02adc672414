"""Endpoint fuzzing: seeded mutations of good requests to a served worker and to dispatch.

Both endpoints are the real thing: functions-framework processes (``tests/_workers.py``)
serving the chaos worker and ``functions/main.py``'s ``dispatch`` with
``FIRECRON_DISPATCH_AUDIENCE`` set and Google's certificates stood in for by a local
endpoint (a fresh RSA key and self-signed certificate, as in ``tests/test_oidc.py``).

- **worker**: a correctly signed dispatch (Standard Webhooks) for a run that does not
  exist, then one mutation: a header replaced by an odd value (400 digits, empty, a
  list-like string...) or dropped, or the body mutated (ill-typed fields, deep nesting,
  truncation, bytes that are not UTF-8) and *signed again*, so that the request gets
  past the signature check into parsing half of the time.
- **dispatch**: a good RS256 ID token, then one mutation of its header (``kid`` a list
  or a dict, another ``alg``), of its claims (``exp``/``iat`` strings, ``iss`` a list,
  ``aud`` a number...) re-signed with the good key, or of its text.

Counted: 5xx answers, tracebacks in the process's log, and (worker) executions.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench._common import ROOT
from bench.chaos._count import Row, count_tracebacks
from bench.chaos._env import SECRET, Lab, StoreRef, read_jsonl, workers

AUDIENCE = "https://chaos.example/dispatch"
KID = "chaos-key"

ODD_VALUES = [
    "",
    " ",
    "9" * 400,
    "-1",
    "1e309",
    "NaN",
    "0x10",
    "+1",
    "1_0",
    "v1,",
    "v1,AAAA",
    "v1," + "A" * 5000,
    "[1,2]",
    '{"a":1}',
    "x" * 8000,
    "\t",
    "Bearer",
]
ODD_JSON: list[Any] = [
    None,
    [],
    {},
    "",
    "9" * 400,
    10**400,
    -1,
    1e308,
    True,
    "\ud800",
    {"k": [1, {"k": None}]},
    "2026-13-45T99:99:99Z",
]


@dataclass(frozen=True)
class EndpointsConfig:
    requests: int = 500
    """Mutated requests per endpoint."""


def _sign(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def _base_body() -> dict[str, Any]:
    return {
        "run_id": "fuzz@20270101T000000Z",
        "schedule_id": "fuzz",
        "scheduled_for": "2027-01-01T00:00:00Z",
        "attempt": 1,
        "trigger": "schedule",
        "params": {"seconds": 0},
    }


def _deep(levels: int) -> bytes:
    return b'{"k":' * levels + b"1" + b"}" * levels


def worker_request(rng: random.Random, now: int) -> tuple[dict[str, str], bytes]:
    """One mutated worker dispatch: headers and body."""
    doc = _base_body()
    msg_id = f"{doc['run_id']}/1"
    timestamp = str(now)
    kind = rng.random()
    body = json.dumps(doc).encode()
    if kind < 0.35:
        field = rng.choice([*doc.keys(), "extra"])
        doc[field] = rng.choice(ODD_JSON)
        body = json.dumps(doc).encode("utf-8", "surrogatepass")
    elif kind < 0.45:
        body = rng.choice(
            [_deep(rng.choice([100, 2_000, 20_000])), b"", b"\xff\xfe", b"[]", b"null", b"{"]
        )
    elif kind < 0.5:
        body = body[: rng.randrange(len(body))]
    elif kind < 0.6:
        timestamp = rng.choice(ODD_VALUES[:10])
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": _sign(SECRET, msg_id, timestamp, body),
        "idempotency-key": msg_id,
    }
    if kind >= 0.6:
        name = rng.choice(sorted(headers))
        if rng.random() < 0.2:
            del headers[name]
        else:
            headers[name] = rng.choice(ODD_VALUES)
            if name in ("webhook-id", "webhook-timestamp") and rng.random() < 0.5:
                # Signed again: the request passes the signature with the odd value.
                headers["webhook-signature"] = _sign(
                    SECRET, headers["webhook-id"], headers["webhook-timestamp"], body
                )
    return headers, body


class _Keys:
    def __init__(self) -> None:
        from google.auth import crypt as _crypt

        sys.path.insert(0, str(ROOT / "tests"))
        from _certs import rsa_key_and_cert

        crypt: Any = _crypt  # google-auth ships no type hints
        pem, cert = rsa_key_and_cert("firecron-chaos")
        self.signer = crypt.RSASigner.from_string(pem, key_id=KID)
        self.cert = cert.decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def dispatch_request(rng: random.Random, keys: _Keys, now: int) -> dict[str, str]:
    """One mutated dispatch call's headers."""
    from google.auth import jwt as _jwt

    jwt: Any = _jwt  # google-auth ships no type hints
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
        "email": "caller@chaos.example",
        "email_verified": True,
        "sub": "1",
    }
    header: dict[str, Any] = {}
    kind = rng.random()
    if kind < 0.3:
        field = rng.choice(["kid", "alg", "typ"])
        header[field] = rng.choice([[KID], {"k": KID}, 5, None, "", "x" * 5000, "none", "HS256"])
    elif kind < 0.6:
        field = rng.choice([*claims.keys(), "nbf"])
        claims[field] = rng.choice(
            [str(now), f"{now + 60}", [claims.get(field)], {"a": 1}, 10**30, -(10**30), 1.5, None]
        )
    token: str = jwt.encode(keys.signer, claims, header=header or None).decode()
    if kind >= 0.6:
        parts = token.split(".")
        op = rng.randrange(6)
        if op == 0:
            parts[rng.randrange(3)] = _b64(rng.randbytes(rng.randrange(1, 64)))
        elif op == 1:
            parts = parts[: rng.randrange(3)]
        elif op == 2:
            parts.append(_b64(b"extra"))
        elif op == 3:
            parts[0] = _b64(json.dumps(rng.choice(ODD_JSON[:9])).encode())
        elif op == 4:
            parts[1] = _b64(b"\xff\xfe not json")
        else:
            parts[2] = ""
        token = ".".join(parts)
    scheme = rng.choice(["Bearer", "Bearer", "Bearer", "bearer", "Basic", "", "Bearer  "])
    return {"authorization": f"{scheme} {token}".strip()}


def _post(client: httpx.Client, url: str, headers: dict[str, str], body: bytes) -> int:
    try:
        return client.post(url, headers=headers, content=body).status_code
    except httpx.LocalProtocolError:
        return -1  # httpx refused to send it (e.g. a blank header value): not a try
    except httpx.HTTPError:
        return 0  # no answer at all (e.g. the server's header limit): listed as "0"
    except (UnicodeEncodeError, ValueError):
        return -1  # httpx refused to send it (a header it cannot encode): not a try


def _fuzz(lab: Lab, ref: StoreRef, backend: str, cfg: EndpointsConfig) -> list[Row]:
    rng = random.Random(f"{lab.seed}-endpoints")
    keys = _Keys()  # puts tests/ on the path
    from _certs import CertsServer

    log_dir = lab.tmp / f"endpoints-{backend}"
    attempt_log = log_dir / "attempts.jsonl"
    rows = []
    with (
        CertsServer({KID: keys.cert}).serve() as certs_url,
        httpx.Client(timeout=30, trust_env=False) as client,
    ):
        ref_env = {
            "FIRECRON_DISPATCH_AUDIENCE": AUDIENCE,
            "FIRECRON_OIDC_CERTS_URL": certs_url,
        }
        with (
            workers(ref, ["worker"], log_dir, attempt_log) as served,
            workers(
                ref,
                ["dispatch"],
                log_dir,
                attempt_log,
                source=ROOT / "functions" / "main.py",
                target="dispatch",
                extra=ref_env,
            ) as dispatch_served,
        ):
            makers: tuple[tuple[str, Any, Callable[[], tuple[dict[str, str], bytes]]], ...] = (
                (
                    "worker",
                    served["worker"],
                    lambda: worker_request(rng, int(dt.datetime.now(dt.UTC).timestamp())),
                ),
                (
                    "dispatch",
                    dispatch_served["dispatch"],
                    lambda: (
                        dispatch_request(rng, keys, int(dt.datetime.now(dt.UTC).timestamp())),
                        b"",
                    ),
                ),
            )
            for label, proc, make in makers:
                row = Row(f"endpoint fuzzing: {label}", backend, http_5xx=0)
                codes: dict[str, int] = {}
                for _ in range(cfg.requests):
                    headers, body = make()
                    code = _post(client, proc.url, headers, body)
                    if code == -1:
                        continue
                    row.tries += 1
                    codes[str(code)] = codes.get(str(code), 0) + 1
                    if code >= 500:
                        row.add(http_5xx=1)
                row.tracebacks = count_tracebacks(proc.logs())
                row.details = {"status_codes": codes}
                rows.append(row)
    executed = sum(1 for line in read_jsonl(attempt_log) if line["event"] == "start")
    rows[0].details["executed"] = executed
    return rows


def run(lab: Lab, backend: str, cfg: EndpointsConfig) -> list[Row]:
    return _fuzz(lab, lab.store(backend, "endpoints"), backend, cfg)
