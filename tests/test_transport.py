"""Building dispatches and sending them to real HTTP sinks on 127.0.0.1.

No tight timing: the machine is shared. Timing checks are loose upper bounds that a
correct sender meets by a wide margin and a broken one (e.g. waiting serially) misses.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

import firecron.transport
from _factories import T0, make_run
from _sinks import closed_port, serve
from firecron.core.lifecycle import SendOutcome
from firecron.core.models import Target
from firecron.core.runs import RunTrigger
from firecron.errors import FirecronError, InvalidInputError, SignatureError, TargetRefusedError
from firecron.settings import Settings
from firecron.transport import guard
from firecron.transport.idtoken import GoogleIdTokens, IdTokenError
from firecron.transport.sender import (
    Dispatch,
    Sender,
    SendResult,
    build_dispatch,
    dispatch_body,
    resolve_url,
)
from firecron.transport.signing import verify_webhook

SECRET = "whsec_" + base64.b64encode(b"signing-key-never-in-errors").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"old-signing-key-never-in-errors").decode().rstrip("=")
TOKEN = "eyJ.secret-id-token.never-in-errors"


def run_of(**overrides: Any) -> Any:
    return make_run("nightly", params={"region": "eu", "n": 3}, **overrides)


def dispatch_to(url: str, **overrides: Any) -> Dispatch:
    return build_dispatch(run_of(**overrides), url, secrets=[SECRET], now=T0, id_token=TOKEN)


async def send_all(sender: Sender, ds: list[Dispatch]) -> list[SendResult]:
    """Send ``ds`` concurrently, as the dispatcher does (one ``send`` per run, gathered)."""
    return list(await asyncio.gather(*(sender.send(d) for d in ds)))


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    s = Sender(concurrency=8, max_open=32, ack_timeout=5.0, allow_private_targets=True)
    yield s
    await s.aclose()


# --- building -------------------------------------------------------------------------


def test_body_has_the_documented_fields_compactly() -> None:
    body = dispatch_body(run_of())
    assert json.loads(body) == {
        "run_id": "nightly@20270101T000000Z",
        "schedule_id": "nightly",
        "scheduled_for": "2027-01-01T00:00:00Z",
        "attempt": 1,
        "trigger": "schedule",
        "params": {"region": "eu", "n": 3},
    }
    assert b" " not in body


def test_later_attempts_are_sent_as_retry() -> None:
    assert json.loads(dispatch_body(run_of(attempt=2)))["trigger"] == "retry"
    manual = run_of(trigger=RunTrigger.manual)
    assert json.loads(dispatch_body(manual))["trigger"] == "manual"


def test_headers_keys_and_bearer_token() -> None:
    d = dispatch_to("https://example.com/hook", attempt=2)
    assert d.key == "nightly@20270101T000000Z/2"
    assert d.headers["idempotency-key"] == d.key
    assert d.headers["webhook-id"] == d.key
    assert d.headers["webhook-timestamp"] == str(int(T0.timestamp()))
    assert d.headers["content-type"] == "application/json"
    assert d.headers["user-agent"].startswith("firecron/")
    assert d.headers["authorization"] == f"Bearer {TOKEN}"


def test_signature_verifies() -> None:
    d = dispatch_to("https://example.com/hook")
    assert verify_webhook(d.headers, d.body, [SECRET], T0 + timedelta(seconds=30)) == d.key


@pytest.mark.parametrize("verifier", [[SECRET], [OLD_SECRET]], ids=["new", "old"])
def test_every_secret_of_a_rotation_verifies(verifier: list[str]) -> None:
    d = build_dispatch(run_of(), "https://example.com/h", secrets=[SECRET, OLD_SECRET], now=T0)
    assert len(d.headers["webhook-signature"].split()) == 2
    assert verify_webhook(d.headers, d.body, verifier, T0) == d.key


def test_a_tampered_body_does_not_verify() -> None:
    d = dispatch_to("https://example.com/hook")
    with pytest.raises(SignatureError):
        verify_webhook(d.headers, d.body.replace(b"eu", b"us"), [SECRET], T0)


def test_no_secret_means_no_signature_and_no_token_means_no_authorization() -> None:
    d = build_dispatch(run_of(), "https://example.com/hook", secrets=[], now=T0)
    assert "webhook-signature" not in d.headers
    assert "authorization" not in d.headers
    assert d.headers["webhook-id"] == d.key


def test_dispatch_repr_hides_headers_and_query() -> None:
    d = dispatch_to("https://example.com/hook?key=QUERYSECRET")
    assert TOKEN not in repr(d)
    assert "QUERYSECRET" not in repr(d)


def test_resolve_url() -> None:
    assert resolve_url(Target(url="https://a.example/x"), None) == "https://a.example/x"
    assert (
        resolve_url(Target(function="report"), "https://eu-p.cloudfunctions.net/")
        == "https://eu-p.cloudfunctions.net/report"
    )
    with pytest.raises(TargetRefusedError, match="'report' needs FIRECRON_FUNCTIONS_BASE_URL"):
        resolve_url(Target(function="report"), None)


def test_resolve_url_fills_a_run_app_template() -> None:
    # Deployed workers answer (and accept ID tokens) at their own run.app host, not at a
    # path under one shared base: the name goes into the host.
    settings = Settings.from_env(
        {"FIRECRON_FUNCTIONS_BASE_URL": "https://{function}-123456789.europe-west1.run.app/"}
    )
    assert settings.functions_base_url is not None
    assert (
        resolve_url(Target(function="report"), settings.functions_base_url)
        == "https://report-123456789.europe-west1.run.app"
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("https://{name}-1.r.run.app", "the only placeholder allowed is {function}, once"),
        ("https://{function}-{function}.run.app", "the only placeholder allowed"),
        ("https://{function-1.r.run.app", "the only placeholder allowed"),
        ("{function}.run.app", "expected an http:// or https:// URL"),
    ],
)
def test_functions_base_url_is_checked(value: str, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Settings.from_env({"FIRECRON_FUNCTIONS_BASE_URL": value})
    message = str(caught.value)
    assert message.startswith("FIRECRON_FUNCTIONS_BASE_URL=")
    assert fragment in message
    assert "\n" not in message


# --- outcomes against real sinks ------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 204])
async def test_2xx_is_acknowledged_and_the_sink_gets_the_signed_post(
    sender: Sender, status: int
) -> None:
    with serve(status=status) as sink:
        d = dispatch_to(f"{sink.url}/hook?x=1")
        result = await sender.send(d)
    assert result.outcome is SendOutcome.acknowledged
    assert result.status_code == status
    assert result.error is None
    [got] = sink.requests
    assert (got.method, got.path) == ("POST", "/hook?x=1")
    assert got.body == d.body
    assert got.headers["host"] == f"127.0.0.1:{sink.port}"
    assert got.headers["authorization"] == f"Bearer {TOKEN}"
    assert verify_webhook(got.headers, got.body, [SECRET], T0) == d.key


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_retryable_statuses(sender: Sender, status: int) -> None:
    with serve(status=status) as sink:
        result = await sender.send(dispatch_to(sink.url))
    assert result.outcome is SendOutcome.retryable
    assert result.status_code == status
    assert f"HTTP {status}" in (result.error or "")


@pytest.mark.parametrize("status", [400, 401, 404, 410])
async def test_other_4xx_is_permanent(sender: Sender, status: int) -> None:
    with serve(status=status) as sink:
        result = await sender.send(dispatch_to(sink.url))
    assert result.outcome is SendOutcome.permanent
    assert result.status_code == status


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_permanent_and_never_followed(sender: Sender, status: int) -> None:
    with serve() as elsewhere:
        with serve(status=status, headers={"location": f"{elsewhere.url}/stolen"}) as sink:
            result = await sender.send(dispatch_to(sink.url))
        assert len(sink.requests) == 1
    assert result.outcome is SendOutcome.permanent
    assert result.status_code == status
    assert "redirects are not followed" in (result.error or "")
    assert elsewhere.requests == []


async def test_a_streamed_202_is_acknowledged_without_reading_the_body() -> None:
    # Like a worker: 202 and headers at once, then the body never ends.
    sender = Sender(concurrency=4, max_open=4, ack_timeout=60, allow_private_targets=True)
    with serve(status=202, stream=True) as sink:
        result = await sender.send(dispatch_to(sink.url))
        # The dispatcher closed its side, so the sink sees the request end.
        sink.wait_idle()
    # The body never ends: waiting for it would have run into the ack timeout and been
    # reported unacknowledged, so "acknowledged" means the headers were enough.
    assert result.outcome is SendOutcome.acknowledged
    assert result.status_code == 202


async def test_no_response_after_writing_is_unacknowledged() -> None:
    sender = Sender(concurrency=1, max_open=1, ack_timeout=0.5, allow_private_targets=True)
    with serve(hold=True) as sink:
        result = await sender.send(dispatch_to(sink.url))
        sink.wait_for(1)
        assert sink.requests[0].body  # the whole request reached the target
        sink.wait_idle()  # and the connection was closed after the timeout
    assert result.outcome is SendOutcome.unacknowledged
    assert result.status_code is None
    assert "no response within 0.5s" in (result.error or "")


async def test_an_answer_later_than_ack_timeout_is_unacknowledged() -> None:
    sender = Sender(concurrency=1, max_open=1, ack_timeout=0.3, allow_private_targets=True)
    with serve(status=200, delay=3) as sink:
        result = await sender.send(dispatch_to(sink.url))
    assert result.outcome is SendOutcome.unacknowledged


async def test_connection_refused_is_retryable(sender: Sender) -> None:
    result = await sender.send(dispatch_to(f"http://127.0.0.1:{closed_port()}/hook"))
    assert result.outcome is SendOutcome.retryable
    assert result.status_code is None
    assert "connection failed" in (result.error or "")


async def test_a_connection_that_never_completes_is_retryable_not_unacknowledged() -> None:
    # A listening socket with a full backlog that nobody accepts: connect never completes
    # (or completes and the write cannot finish); either way nothing was written.
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        port = lsock.getsockname()[1]
        fillers = []
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        sender = Sender(
            concurrency=1,
            max_open=1,
            ack_timeout=30,
            allow_private_targets=True,
            connect_timeout=0.5,
        )
        result = await sender.send(
            Dispatch(url=f"http://127.0.0.1:{port}/", body=b"x" * 8_000_000, headers={}, key="k")
        )
        for s in fillers:
            s.close()
    assert result.outcome is SendOutcome.retryable, result


async def test_unknown_host_is_retryable(sender: Sender) -> None:
    loop = asyncio.get_running_loop()

    async def no_such_name(*_: Any, **__: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    loop.getaddrinfo = no_such_name  # type: ignore[method-assign]
    result = await sender.send(dispatch_to("http://nowhere.test/hook"))
    assert result.outcome is SendOutcome.retryable
    assert "DNS lookup failed" in (result.error or "")


async def test_a_refused_target_is_permanent_with_the_reason_and_never_contacted() -> None:
    strict = Sender(concurrency=2, max_open=2, ack_timeout=1, allow_private_targets=False)
    with serve() as sink:
        results = await send_all(
            strict,
            [
                dispatch_to(sink.url),
                dispatch_to(f"https://127.0.0.1:{sink.port}/"),
                dispatch_to("https://169.254.169.254/computeMetadata/v1/"),
            ],
        )
    assert [r.outcome for r in results] == [SendOutcome.permanent] * 3
    assert "scheme 'http' not allowed" in (results[0].error or "")
    assert "loopback" in (results[1].error or "")
    assert "link-local" in (results[2].error or "")
    assert sink.requests == []


async def test_the_sender_connects_to_the_approved_address_with_the_original_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guard._dns_cache.clear()
    loop = asyncio.get_running_loop()

    async def resolve(host: str, port: int, **_: Any) -> Any:
        assert host == "worker.test"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    sender = Sender(concurrency=1, max_open=1, ack_timeout=5, allow_private_targets=True)
    try:
        with serve() as sink:
            result = await sender.send(dispatch_to(f"http://worker.test:{sink.port}/h"))
        assert result.outcome is SendOutcome.acknowledged
        assert sink.requests[0].headers["host"] == f"worker.test:{sink.port}"
    finally:
        guard._dns_cache.clear()


async def test_errors_never_contain_secrets() -> None:
    sender = Sender(concurrency=4, max_open=4, ack_timeout=0.3, allow_private_targets=True)
    query = "?api_key=QUERYSECRET"
    with serve(status=503) as failing, serve(hold=True) as holding:
        urls = [
            f"{failing.url}/h{query}",
            f"{holding.url}/h{query}",
            f"http://127.0.0.1:{closed_port()}/h{query}",
            f"http://user:PASSWORDSECRET@127.0.0.1:{failing.port}/h{query}",
            f"https://169.254.169.254/h{query}",
            f"ftp://127.0.0.1/h{query}",
        ]
        dispatches = [
            build_dispatch(run_of(), u, secrets=[SECRET, OLD_SECRET], now=T0, id_token=TOKEN)
            for u in urls
        ]
        results = await send_all(sender, dispatches)
    for r in results:
        assert r.outcome is not SendOutcome.acknowledged
        error = r.error or ""
        assert error
        assert "\n" not in error
        for secret in (SECRET, OLD_SECRET, TOKEN, "QUERYSECRET", "PASSWORDSECRET"):
            assert secret not in error, (secret, error)
        signature = dispatches[0].headers["webhook-signature"]
        assert signature.split()[0] not in error


# --- the send-slot / open-slot split ---------------------------------------------------


async def test_waiting_for_acks_holds_no_send_slot() -> None:
    sender = Sender(concurrency=2, max_open=8, ack_timeout=1.0, allow_private_targets=True)
    with serve(hold=True) as sink:
        results = await send_all(sender, [dispatch_to(sink.url, attempt=i) for i in range(1, 25)])
        peak = sink.peak_open
    assert [r.outcome for r in results] == [SendOutcome.unacknowledged] * 24
    # More requests were open at once than there are send slots, but never more than max_open.
    assert peak == 8
    # (How much faster the split is, is measured by `make bench`, not asserted here.)


def test_sender_rejects_bad_limits() -> None:
    with pytest.raises(InvalidInputError):
        Sender(concurrency=0, max_open=1, ack_timeout=1, allow_private_targets=False)
    with pytest.raises(InvalidInputError):
        Sender(concurrency=1, max_open=1, ack_timeout=0, allow_private_targets=False)


# --- ID tokens ------------------------------------------------------------------------


def jwt(exp: float) -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).decode().rstrip("=")
    return f"header.{claims}.signature"


async def test_id_tokens_are_cached_per_audience_until_near_expiry() -> None:
    now = [1_000_000.0]
    fetched: list[str] = []

    def fetch(audience: str) -> str:
        fetched.append(audience)
        return jwt(now[0] + 3600)

    tokens = GoogleIdTokens(fetch=fetch, clock=lambda: now[0])
    a = await tokens.token("https://a.example/f")
    assert await tokens.token("https://a.example/f") == a
    await tokens.token("https://b.example/f")
    assert fetched == ["https://a.example/f", "https://b.example/f"]
    now[0] += 3600 - 299  # inside the 5-minute margin: refresh
    await tokens.token("https://a.example/f")
    assert fetched[-1] == "https://a.example/f"
    assert len(fetched) == 3


async def test_concurrent_callers_share_one_fetch() -> None:
    calls = 0

    def fetch(audience: str) -> str:
        nonlocal calls
        calls += 1
        time.sleep(0.05)
        return jwt(time.time() + 3600)

    tokens = GoogleIdTokens(fetch=fetch)
    got = await asyncio.gather(*(tokens.token("https://a.example/f") for _ in range(10)))
    assert len(set(got)) == 1
    assert calls == 1


async def test_id_token_errors_become_one_line_firecron_errors() -> None:
    def fetch(audience: str) -> str:
        raise RuntimeError("Neither metadata server or valid service account credentials\nmore")

    tokens = GoogleIdTokens(fetch=fetch)
    with pytest.raises(IdTokenError) as info:
        await tokens.token("https://a.example/f?key=QUERYSECRET")
    message = str(info.value)
    assert isinstance(info.value, FirecronError)
    assert "\n" not in message
    assert "QUERYSECRET" not in message
    assert message.startswith("cannot get a Google ID token for https://a.example/f:")


async def test_a_token_that_is_not_a_jwt_is_an_error() -> None:
    tokens = GoogleIdTokens(fetch=lambda audience: "opaque")
    with pytest.raises(IdTokenError, match="not a JWT"):
        await tokens.token("https://a.example/f")


# --- package surface -------------------------------------------------------------------


def test_all_is_sorted_and_importable() -> None:
    names = firecron.transport.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(firecron.transport, name) is not None
