"""Fuzzing the two HTTP endpoints: bad input is a 4xx with a JSON error, never a 5xx.

A 5xx tells the dispatcher (or Cloud Scheduler) to retry, so a malformed request
answered with one would be retried forever, and a traceback in the log is a crash. Each
endpoint is served by the real functions-framework (gunicorn) in a subprocess, on one
kept-alive connection:

- the worker (``functions/main.py``'s ``hello``, signing secret set, a SQLite store
  holding one pending run) gets mutations of a valid signed delivery: each body field
  replaced by values of every JSON type (huge and non-finite numbers, deep nesting),
  removed, or the whole body replaced by non-objects and invalid UTF-8; and each
  ``webhook-*`` header replaced (huge numbers, non-ASCII), dropped or repeated. Half the
  mutated requests are re-signed, so that the body checks behind the signature are
  reached too.
- ``dispatch`` (an audience, a caller and a local certificates endpoint set; a due
  schedule in its store) gets bearer tokens whose header and claims take values of
  every JSON type, signed with the right key, the wrong one, or not at all, and raw
  token text.

Examples that the real checks would accept (a request equivalent to the genuine one)
are skipped: the point is bad input, and nothing may be executed. Hypothesis runs
derandomized, with bounded example counts and no deadline, so CI is deterministic.
After the examples, the store is unchanged and the server log holds no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from _factories import make_run
from _workers import WorkerProcess, serve_worker, worker_env
from firecron.core import planning
from firecron.core.models import ScheduleSpec, Target
from firecron.core.runs import Run
from firecron.oidc import CertsCache, verify_google_id_token
from firecron.store.sqlite import SQLiteStore
from firecron.transport.signing import verify_webhook
from firecron.worker import _Delivery
from test_oidc import AUDIENCE, CALLER, KID, certs_url, keys  # noqa: F401 (fixtures)

SECRET = "whsec_ZnV6ei1lbmRwb2ludHMtc2VjcmV0LWtleQ=="
EXAMPLES = 300

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _now() -> datetime:
    return datetime.now(UTC)


def _check_refusal(response: httpx.Response, secret_texts: list[str]) -> str:
    """Assert a 4xx whose body is ``{"error": one line}`` naming no secret; the error."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert isinstance(error, str), error
    assert error, response.text
    assert "\n" not in error, error
    assert len(error) <= 1000, error
    for text in secret_texts:
        assert text not in error, error
    return error


def _assert_no_traceback(proc: WorkerProcess) -> None:
    logs = proc.logs()
    assert "Traceback" not in logs, logs[-5000:]
    assert proc.alive, logs[-5000:]


# --- strategies shared by both endpoints ---------------------------------------------

# Header values that HTTP can carry: visible ASCII and obs-text (latin-1), no controls.
header_text = st.text(
    alphabet=st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=80
).map(str.strip)

huge_ints = st.one_of(
    st.integers(min_value=2**63, max_value=10**400),
    st.integers(max_value=-(2**63), min_value=-(10**400)),
)
numbers = st.one_of(
    st.integers(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1.0, 1.5, 10**19, 1e308]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


raw_json = st.one_of(
    json_values.map(lambda v: json.dumps(v)),
    st.integers(min_value=1, max_value=5000).map(_nested),
    st.integers(min_value=300, max_value=4400).map(lambda n: "9" * n),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "true", "null", '"x"']),
)

token_json = st.one_of(
    json_values.map(lambda v: json.dumps(v)),
    st.integers(min_value=1, max_value=2000).map(_nested),
    st.integers(min_value=300, max_value=4000).map(lambda n: "9" * n),
    st.sampled_from(["NaN", "Infinity", "1e999", "true", "null", '"x"', '{"a":1}x']),
)


# --- the worker ----------------------------------------------------------------------


@dataclass
class WorkerStack:
    proc: WorkerProcess
    db_path: Path
    run: Run

    def stored(self) -> Run | None:
        async def read() -> Run | None:
            store = SQLiteStore(self.db_path)
            try:
                return await store.get_run(self.run.id)
            finally:
                await store.close()

        return asyncio.run(read())


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    tmp = tmp_path_factory.mktemp("fuzz-worker")
    db_path = tmp / "w.db"

    async def seed() -> Run:
        store = SQLiteStore(db_path)
        try:
            run = make_run(
                "fuzz-hello", _now().replace(microsecond=0), target=Target(function="hello")
            )
            created = await store.create_run(run.model_copy(update={"params": {"name": "fuzz"}}))
            assert created is not None
            return created
        finally:
            await store.close()

    run = asyncio.run(seed())
    env = worker_env(f"sqlite:///{db_path}", secrets=[SECRET])
    with serve_worker("hello", env=env, log_dir=tmp) as proc:
        yield WorkerStack(proc, db_path, run)


def _valid_body(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "schedule_id": run.schedule_id,
        "scheduled_for": run.scheduled_for.isoformat().replace("+00:00", "Z"),
        "attempt": run.attempt,
        "trigger": run.trigger.value,
        "params": run.params,
    }


def _sign(msg_id: str, timestamp: str, body: bytes) -> str:
    """A v1 signature over the header texts as given (the verifier's view when they parse)."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@st.composite
def deliveries(draw: st.DrawFn, run: Run) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """A mutated delivery of ``run``: headers (as raw pairs) and body."""
    fields = _valid_body(run)
    body_kind = draw(st.sampled_from(["field", "drop", "raw-field", "whole", "bytes", "none"]))
    if body_kind == "field":
        name = draw(st.sampled_from([*fields, "extra"]))
        fields[name] = draw(json_values)
        body = json.dumps(fields).encode()
    elif body_kind == "drop":
        del fields[draw(st.sampled_from(list(fields)))]
        body = json.dumps(fields).encode()
    elif body_kind == "raw-field":
        name = draw(st.sampled_from(list(fields)))
        fields[name] = "@@RAW@@"
        body = json.dumps(fields).replace('"@@RAW@@"', draw(raw_json)).encode()
    elif body_kind == "whole":
        body = draw(raw_json).encode()
    elif body_kind == "bytes":
        # Invalid UTF-8 inside an otherwise valid body, or any bytes at all.
        body = draw(
            st.one_of(
                st.binary(max_size=200),
                st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80"]).map(
                    lambda bad: json.dumps(fields).replace("fuzz", "@").encode().replace(b"@", bad)
                ),
            )
        )
    else:
        body = json.dumps(fields).encode()

    msg_id = f"{run.id}/{run.attempt}"
    timestamp = str(int(_now().timestamp()))
    header_kind = draw(
        st.sampled_from(["none", "id", "timestamp", "signature", "drop", "duplicate", "type"])
    )
    if header_kind == "id":
        msg_id = draw(st.one_of(header_text, st.just(f"{run.id}/2"), st.just(f"{run.id}/0")))
    elif header_kind == "timestamp":
        timestamp = draw(
            st.one_of(
                header_text,
                numbers.map(str),
                st.integers(min_value=20, max_value=600).map(lambda n: "9" * n),
                st.sampled_from(["\u00b2", "1 2", "1_000", "+1", "-1", "0x10", "1e3", "", "nan"]),
            )
        )
    headers: dict[str, str] = {
        "content-type": draw(
            st.sampled_from(
                ["application/json", "text/plain", "application/json; charset=latin-1", "x"]
            )
        ),
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": _sign(msg_id, timestamp, body)
        if draw(st.booleans()) or body_kind == "none"
        else _sign(
            f"{run.id}/{run.attempt}",
            str(int(_now().timestamp())),
            json.dumps(_valid_body(run)).encode(),
        ),
    }
    if header_kind == "signature":
        headers["webhook-signature"] = draw(
            st.one_of(
                header_text, header_text.map(lambda t: "v1," + t), st.just("v1,"), st.just("v1")
            )
        )
    pairs = [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]
    if header_kind == "drop":
        dropped = draw(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]))
        pairs = [(k, v) for k, v in pairs if k != dropped.encode()]
    elif header_kind == "duplicate":
        name = draw(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]))
        pairs.append((name.encode(), draw(header_text).encode("latin-1")))
    elif header_kind == "type":
        name = draw(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]))
        pairs = [(k.upper() if k == name.encode() else k, v) for k, v in pairs]
    return pairs, body


def _would_execute(run: Run, pairs: list[tuple[bytes, bytes]], body: bytes) -> bool:
    """True when the real checks would accept this request as the genuine delivery."""
    try:
        headers = {k.decode(): v.decode("latin-1") for k, v in pairs}
        msg_id = verify_webhook(headers, body, [SECRET], _now())
        delivery = _Delivery.model_validate_json(body)
    except Exception:  # any refusal, or a crash that the server must not have
        return False
    return msg_id == f"{run.id}/{run.attempt}" and delivery == _Delivery.model_validate(
        _valid_body(run)
    )


def test_worker_answers_every_malformed_delivery_with_a_4xx(worker: WorkerStack) -> None:
    run = worker.run
    with httpx.Client(timeout=60) as client:

        @FUZZ
        @given(data=deliveries(run))
        def fuzz(data: tuple[list[tuple[bytes, bytes]], bytes]) -> None:
            pairs, body = data
            assume(not _would_execute(run, pairs, body))
            response = client.post(worker.proc.url, content=body, headers=pairs)
            _check_refusal(response, [SECRET])

        fuzz()
    assert worker.stored() == run  # nothing ran, nothing was written
    _assert_no_traceback(worker.proc)


def _signed_pairs(run: Run, body: bytes, at: datetime) -> list[tuple[str, str]]:
    msg_id = f"{run.id}/{run.attempt}"
    timestamp = str(int(at.timestamp()))
    return [
        ("content-type", "application/json"),
        ("webhook-id", msg_id),
        ("webhook-timestamp", timestamp),
        ("webhook-signature", _sign(msg_id, timestamp, body)),
    ]


def test_worker_refuses_oversized_and_edge_requests_with_a_4xx(worker: WorkerStack) -> None:
    run = worker.run
    body = json.dumps(_valid_body(run)).encode()
    stale = _signed_pairs(run, body, _now() - timedelta(minutes=6))
    future = _signed_pairs(run, body, _now() + timedelta(minutes=6))
    ghost_body = json.dumps({**_valid_body(run), "run_id": "ghost"}).encode()
    ghost = [*_signed_pairs(run, ghost_body, _now())]
    ghost[1] = ("webhook-id", f"ghost/{run.attempt}")
    ghost[3] = ("webhook-signature", _sign(f"ghost/{run.attempt}", ghost[2][1], ghost_body))
    huge = json.dumps({**_valid_body(run), "params": {"blob": "x" * (5 * 1024 * 1024)}}).encode()
    with httpx.Client(timeout=60) as client:
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            response = client.request(method, worker.proc.url, content=body, headers=stale)
            assert response.status_code == 405, method
            _check_refusal(response, [SECRET])
        # A genuine signature, but 6 minutes old or ahead: a replay outside the window.
        assert "tolerance" in _check_refusal(
            client.post(worker.proc.url, content=body, headers=stale), [SECRET]
        )
        assert "tolerance" in _check_refusal(
            client.post(worker.proc.url, content=body, headers=future), [SECRET]
        )
        response = client.post(worker.proc.url, content=ghost_body, headers=ghost)
        assert response.status_code == 404
        assert "unknown run" in _check_refusal(response, [SECRET])
        response = client.post(
            worker.proc.url, content=huge, headers=_signed_pairs(run, huge, _now())
        )
        assert response.status_code == 413
        _check_refusal(response, [SECRET])
    assert worker.stored() == run
    _assert_no_traceback(worker.proc)


# --- dispatch ------------------------------------------------------------------------


@dataclass
class DispatchStack:
    proc: WorkerProcess
    db_path: Path
    schedule_version: str
    certs_url: str
    cache: CertsCache

    def unchanged(self) -> bool:
        async def read() -> tuple[str | None, int]:
            store = SQLiteStore(self.db_path)
            try:
                stored = await store.get_schedule("fuzz-due")
                runs = await store.list_runs()
                return (stored.version if stored else None), len(runs)
            finally:
                await store.close()

        version, runs = asyncio.run(read())
        return version == self.schedule_version and runs == 0


@pytest.fixture(scope="module")
def dispatch(
    tmp_path_factory: pytest.TempPathFactory,
    certs_url: str,  # noqa: F811 (the fixture imported from test_oidc)
) -> Iterator[DispatchStack]:
    tmp = tmp_path_factory.mktemp("fuzz-dispatch")
    db_path = tmp / "d.db"

    async def seed() -> str:
        store = SQLiteStore(db_path)
        try:
            spec = ScheduleSpec.model_validate(
                {"id": "fuzz-due", "every": "1h", "target": {"url": "http://127.0.0.1:9/hook"}}
            )
            state = planning.initial_state(spec, _now() - timedelta(hours=2))
            return (await store.put_schedule(spec, state, expect_version=None)).version
        finally:
            await store.close()

    version = asyncio.run(seed())
    env = worker_env(
        f"sqlite:///{db_path}",
        extra={
            "FIRECRON_DISPATCH_AUDIENCE": AUDIENCE,
            "FIRECRON_DISPATCH_CALLER": CALLER,
            "FIRECRON_OIDC_CERTS_URL": certs_url,
        },
    )
    with serve_worker("dispatch", env=env, log_dir=tmp) as proc:
        yield DispatchStack(proc, db_path, version, certs_url, CertsCache())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _good_claims() -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
        "email": CALLER,
        "email_verified": True,
        "sub": "1234",
    }


@st.composite
def tokens(draw: st.DrawFn, signers: dict[str, Any]) -> str:
    """A bearer token (the text after ``Bearer``): mutated header, claims and signature."""
    kind = draw(st.sampled_from(["header", "claims", "claims", "segment", "raw"]))
    header: dict[str, Any] = {"alg": "RS256", "kid": KID, "typ": "JWT"}
    claims = _good_claims()
    if kind == "header":
        name = draw(st.sampled_from(["alg", "kid", "typ", "x5c"]))
        if draw(st.booleans()):
            header[name] = draw(json_values)
        else:
            header.pop(name, None)
    elif kind == "claims":
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            name = draw(
                st.sampled_from(["iss", "aud", "exp", "iat", "email", "email_verified", "nbf"])
            )
            if draw(st.booleans()):
                claims[name] = draw(
                    st.one_of(
                        json_values,
                        st.sampled_from([str(claims.get(name)), [claims.get(name)], float("nan")]),
                        huge_ints,
                    )
                )
            else:
                claims.pop(name, None)
    head = _b64(json.dumps(header).encode())
    payload = _b64(json.dumps(claims).encode())
    if kind == "segment":
        # One segment replaced by other text: not base64, base64 of non-JSON or of
        # non-objects, deep nesting.
        garbage = draw(
            st.one_of(
                header_text,
                st.binary(max_size=60).map(_b64),
                # Deep nesting stays under gunicorn's 8 KiB header limit (431 beyond it).
                token_json.map(lambda t: _b64(t.encode())),
            )
        )
        if draw(st.booleans()):
            head = garbage
        else:
            payload = garbage
    signing_input = f"{head}.{payload}".encode()
    signer = draw(st.sampled_from(["signer", "signer", "other", "none", "removed"]))
    if signer == "none":
        signature = draw(st.one_of(header_text, st.just("")))
    elif signer == "removed":
        signature = "SIGNATURE_REMOVED_BY_GOOGLE"
    else:
        signature = _b64(signers[signer].sign(signing_input))
    token = f"{head}.{payload}.{signature}"
    if kind == "raw":
        token = draw(
            st.one_of(
                header_text,
                header_text.map(lambda t: t + "." + t + "." + t),
                st.integers(min_value=1, max_value=7000).map(lambda n: "a" * n),
                st.just(token + "." + token),
            )
        )
    return token


def _accepted(stack: DispatchStack, token: str) -> bool:
    try:
        verify_google_id_token(
            token,
            audience=AUDIENCE,
            certs_url=stack.certs_url,
            caller=CALLER,
            certs=stack.cache,
        )
    except Exception:  # any refusal, or a crash that the server must not have
        return False
    return True


def test_dispatch_answers_every_malformed_token_with_a_4xx(
    dispatch: DispatchStack,
    keys: dict[str, Any],  # noqa: F811 (the fixture imported from test_oidc)
) -> None:
    with httpx.Client(timeout=60) as client:

        @FUZZ
        @given(
            token=tokens(keys),
            scheme=st.sampled_from(["Bearer", "Bearer", "bearer", "Basic", "", "Bearer  "]),
        )
        def fuzz(token: str, scheme: str) -> None:
            assume(not (scheme.strip().lower() == "bearer" and _accepted(dispatch, token.strip())))
            value = f"{scheme} {token}".strip().encode("latin-1")
            response = client.post(dispatch.proc.url, headers=[(b"authorization", value)])
            error = _check_refusal(response, [])
            assert response.status_code == 401, (response.status_code, error)
            if len(token) > 40:
                assert token not in error, error

        fuzz()
    assert dispatch.unchanged()  # no tick ran
    _assert_no_traceback(dispatch.proc)
