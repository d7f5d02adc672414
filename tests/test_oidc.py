"""OIDC verification of dispatch callers with real RS256 tokens and a local certificate endpoint.

The test generates an RSA key and a self-signed certificate, serves ``{kid: PEM}`` the
way Google's certs endpoint does, and signs tokens with google-auth's own signer.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.auth import crypt as _crypt
from google.auth import jwt as _jwt

from _certs import CertsServer, rsa_key_and_cert
from _workers import serve_worker, worker_env
from firecron.errors import FirecronError, SignatureError
from firecron.oidc import CertsCache, check_dispatch_caller, verify_google_id_token
from firecron.settings import Settings

# google-auth ships no type hints for these modules (firecron/oidc.py does the same).
crypt: Any = _crypt
jwt: Any = _jwt

AUDIENCE = "https://europe-west1-proj.cloudfunctions.net/dispatch"
CALLER = "firecron-scheduler@proj.iam.gserviceaccount.com"
KID = "test-key-1"
NEXT_KID = "test-key-2"


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    good_key, good_cert = rsa_key_and_cert()
    other_key, _ = rsa_key_and_cert()
    next_key, next_cert = rsa_key_and_cert()
    return {
        "signer": crypt.RSASigner.from_string(good_key, key_id=KID),
        "other": crypt.RSASigner.from_string(other_key, key_id=KID),
        "forged": crypt.RSASigner.from_string(other_key, key_id="forged-key"),
        "next": crypt.RSASigner.from_string(next_key, key_id=NEXT_KID),
        "cert": good_cert.decode(),
        "next_cert": next_cert.decode(),
    }


@pytest.fixture(scope="module")
def certs_url(keys: dict[str, Any]) -> Iterator[str]:
    """A local stand-in for https://www.googleapis.com/oauth2/v1/certs."""
    with CertsServer({KID: keys["cert"]}).serve() as url:
        yield url


def token(keys: dict[str, Any], signer: str = "signer", **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
        "email": CALLER,
        "email_verified": True,
        "sub": "1234",
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    encoded: bytes = jwt.encode(keys[signer], claims)
    return encoded.decode()


def settings(certs_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "dispatch_audience": AUDIENCE,
        "oidc_certs_url": certs_url,
        "dispatch_caller": CALLER,
    }
    base.update(overrides)
    return Settings(**base)


def test_good_token_is_accepted(keys: dict[str, Any], certs_url: str) -> None:
    check_dispatch_caller(f"Bearer {token(keys)}", settings(certs_url))


def test_several_callers_are_each_accepted_and_no_other(
    keys: dict[str, Any], certs_url: str
) -> None:
    # The deploy lists the scheduler's account and dispatch's own (its shard ticks and
    # continuations).
    own = "firecron-dispatch@proj.iam.gserviceaccount.com"
    both = settings(certs_url, dispatch_caller=f"{CALLER}, {own}")
    check_dispatch_caller(f"Bearer {token(keys)}", both)
    check_dispatch_caller(f"Bearer {token(keys, email=own)}", both)
    with pytest.raises(SignatureError, match=r"^token is not from the configured caller$"):
        check_dispatch_caller(f"Bearer {token(keys, email='x@proj.iam.gserviceaccount.com')}", both)


@pytest.mark.parametrize(
    ("make_header", "message"),
    [
        (lambda k: None, "missing bearer token"),
        (lambda k: "Basic abc", "missing bearer token"),
        (lambda k: "Bearer not-a-jwt", "malformed"),
        (
            lambda k: f"Bearer {token(k, exp=int(time.time()) - 600, iat=int(time.time()) - 4200)}",
            "expired",
        ),
        (lambda k: f"Bearer {token(k, aud='https://evil.example/dispatch')}", "audience"),
        (lambda k: f"Bearer {token(k, iss='https://evil.example')}", "issuer"),
        (lambda k: f"Bearer {token(k, 'other')}", "signature"),
        (lambda k: f"Bearer {token(k, email='someone@else.iam.gserviceaccount.com')}", "caller"),
        (lambda k: f"Bearer {token(k, email_verified=False)}", "caller"),
    ],
)
def test_bad_tokens_are_refused(
    keys: dict[str, Any], certs_url: str, make_header: Any, message: str
) -> None:
    with pytest.raises(SignatureError, match=message):
        check_dispatch_caller(make_header(keys), settings(certs_url))


def _stripped(tok: str) -> str:
    head, body, _ = tok.split(".")
    return f"{head}.{body}.SIGNATURE_REMOVED_BY_GOOGLE"


def test_platform_verified_token_is_accepted_only_when_deployed(
    keys: dict[str, Any], certs_url: str
) -> None:
    stripped = _stripped(token(keys))
    check_dispatch_caller(f"Bearer {stripped}", settings(certs_url, deployed=True))
    with pytest.raises(SignatureError, match="signature"):
        check_dispatch_caller(f"Bearer {stripped}", settings(certs_url, deployed=False))
    # The claims are still checked on the platform path.
    wrong = _stripped(token(keys, aud="https://evil.example/dispatch"))
    with pytest.raises(SignatureError, match="audience"):
        check_dispatch_caller(f"Bearer {wrong}", settings(certs_url, deployed=True))


def test_deployed_without_audience_refuses_to_run() -> None:
    with pytest.raises(FirecronError, match="FIRECRON_DISPATCH_AUDIENCE is not set"):
        check_dispatch_caller(None, Settings(deployed=True))
    check_dispatch_caller(None, Settings(deployed=False))  # local: allowed


def test_dispatch_entry_point_end_to_end(
    keys: dict[str, Any], certs_url: str, tmp_path: Path
) -> None:
    """functions-framework serving main.py's ``dispatch``: 401 without a good token, a tick with one."""
    env = worker_env(
        f"sqlite:///{tmp_path / 'd.db'}",
        extra={"FIRECRON_DISPATCH_AUDIENCE": AUDIENCE, "FIRECRON_OIDC_CERTS_URL": certs_url},
    )
    with serve_worker("dispatch", env=env) as proc:
        refused = httpx.post(proc.url, timeout=30)
        assert refused.status_code == 401
        assert refused.json() == {"error": "missing bearer token"}
        forged = httpx.post(
            proc.url, headers={"authorization": f"Bearer {token(keys, 'other')}"}, timeout=30
        )
        assert forged.status_code == 401
        ok = httpx.post(proc.url, headers={"authorization": f"Bearer {token(keys)}"}, timeout=30)
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["due"] == 0
        assert body["errors"] == []


def test_dispatch_entry_point_refuses_when_deployed_without_audience(tmp_path: Path) -> None:
    env = worker_env(f"sqlite:///{tmp_path / 'd.db'}", extra={"K_SERVICE": "dispatch"})
    with serve_worker("dispatch", env=env) as proc:
        response = httpx.post(proc.url, timeout=30)
    assert response.status_code == 500
    assert "FIRECRON_DISPATCH_AUDIENCE is not set" in response.json()["error"]


# --- claims and key misses ---------------------------------------------------------------


def test_a_token_without_exp_is_refused_saying_so(keys: dict[str, Any], certs_url: str) -> None:
    # Genuinely signed, so the signature is not what is wrong.
    with pytest.raises(SignatureError, match=r"^token has no exp claim$"):
        check_dispatch_caller(f"Bearer {token(keys, exp=None)}", settings(certs_url))
    stripped = _stripped(token(keys, exp=None))
    with pytest.raises(SignatureError, match=r"^token has no exp claim$"):
        check_dispatch_caller(f"Bearer {stripped}", settings(certs_url, deployed=True))


def _forged(header: dict[str, Any], claims: dict[str, Any], signature: str = "c2ln") -> str:
    """A token with any header and claims (not validly signed)."""

    def segment(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{segment(header)}.{segment(claims)}.{signature}"


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
        "email": CALLER,
        "email_verified": True,
    }
    claims.update(overrides)
    return claims


_RS256 = {"alg": "RS256", "kid": KID}


@pytest.mark.parametrize(
    ("header", "claims", "message"),
    [
        ({"alg": "RS256", "kid": ["a"]}, _claims(), "kid is not a string"),
        ({"alg": "RS256", "kid": {"a": 1}}, _claims(), "kid is not a string"),
        ({"alg": ["RS256"]}, _claims(), "not RS256"),
        ({"alg": {"RS256": 1}}, _claims(), "not RS256"),
        (_RS256, _claims(exp="9999999999"), "exp claim is not a number"),
        (_RS256, _claims(iat="0"), "iat claim is not a number"),
        (_RS256, _claims(exp=10**400), "exp claim is not a number"),
        (_RS256, _claims(iat=float("nan")), "iat claim is not a number"),
        (_RS256, _claims(exp=True), "exp claim is not a number"),
        (_RS256, _claims(iss=["https://accounts.google.com"]), "iss claim is not a string"),
        (_RS256, _claims(aud=[AUDIENCE]), "aud claim is not a string"),
        (_RS256, _claims(email={"a": 1}), "email claim is not a string"),
        (_RS256, _claims(email_verified="true"), "email_verified claim is not a boolean"),
        (_RS256, {k: v for k, v in _claims().items() if k != "iat"}, "no iat claim"),
        (_RS256, ["not", "an", "object"], "payload is not a JSON object"),
    ],
)
@pytest.mark.parametrize("deployed", [False, True], ids=["signed", "platform-verified"])
def test_malformed_headers_and_claims_are_refused_in_one_line(
    certs_url: str, header: dict[str, Any], claims: Any, message: str, deployed: bool
) -> None:
    # Each used to raise TypeError (a 500 from dispatch) before the signature check:
    # a list kid in the certificate lookup, a string exp in arithmetic, a list iss in a
    # set. Both paths check them: a signed token and one whose signature Cloud Run removed.
    tok = _forged(header, claims, "SIGNATURE_REMOVED_BY_GOOGLE" if deployed else "c2ln")
    with pytest.raises(SignatureError, match=message) as refused:
        check_dispatch_caller(f"Bearer {tok}", settings(certs_url, deployed=deployed))
    assert "\n" not in str(refused.value)
    assert tok not in str(refused.value)


def test_genuinely_signed_tokens_with_claims_of_the_wrong_type_are_refused(
    keys: dict[str, Any], certs_url: str
) -> None:
    # Signed with the real key, so google-auth's own claim checks would run on them.
    for claim, value, message in [
        ("exp", "later", "exp claim is not a number"),
        ("iat", [1], "iat claim is not a number"),
        ("iss", ["https://accounts.google.com"], "iss claim is not a string"),
        ("exp", 10**400, "exp claim is not a number"),
    ]:
        with pytest.raises(SignatureError, match=message):
            check_dispatch_caller(
                f"Bearer {token(keys, 'signer', **{claim: value})}", settings(certs_url)
            )


@pytest.mark.parametrize(
    ("tok", "message"),
    [
        ("a.b", "three dot-separated parts"),
        ("a.b.c.d", "three dot-separated parts"),
        ("e30+.e30.c2ln", "header is not base64url"),
        ("e30.é.c2ln", "payload is not base64url"),
        ("_w.e30.c2ln", "header is not JSON"),  # invalid UTF-8
        ("a.e30.c2ln", "header is not JSON"),  # impossible base64 length
        (
            base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode().rstrip("=") + ".e30.c2ln",
            "header is not JSON",
        ),
        ("x" * 20000, "larger than 16,384 characters"),
    ],
)
def test_malformed_token_text_is_refused_in_one_line(
    certs_url: str, tok: str, message: str
) -> None:
    with pytest.raises(SignatureError, match=message):
        check_dispatch_caller(f"Bearer {tok}", settings(certs_url))


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def counting(keys: dict[str, Any]) -> Iterator[tuple[CertsServer, str]]:
    server = CertsServer({KID: keys["cert"]})
    with server.serve() as url:
        yield server, url


def _verify(tok: str, url: str, cache: CertsCache) -> dict[str, Any]:
    return verify_google_id_token(tok, audience=AUDIENCE, certs_url=url, certs=cache)


def test_unknown_key_ids_refetch_the_certs_at_most_once_per_30s(
    keys: dict[str, Any], counting: tuple[CertsServer, str]
) -> None:
    server, url = counting
    clock = FakeClock()
    cache = CertsCache(clock=clock)
    _verify(token(keys), url, cache)
    assert server.fetches == 1

    forged = token(keys, "forged")
    for _ in range(50):  # a stream of forged key ids, right after a fetch
        with pytest.raises(SignatureError, match="not one of Google's current keys"):
            _verify(forged, url, cache)
    assert server.fetches == 1

    clock.now += 29.9
    with pytest.raises(SignatureError, match="not one of Google's current keys"):
        _verify(forged, url, cache)
    assert server.fetches == 1
    clock.now += 0.1  # 30 s after the last fetch: one refetch, then quiet again
    for _ in range(50):
        with pytest.raises(SignatureError, match="not one of Google's current keys"):
            _verify(forged, url, cache)
    assert server.fetches == 2
    # Known keys are served from the cache all along.
    _verify(token(keys), url, cache)
    assert server.fetches == 2


def test_a_rotated_key_is_fetched_once_the_interval_has_passed(
    keys: dict[str, Any], counting: tuple[CertsServer, str]
) -> None:
    server, url = counting
    clock = FakeClock()
    cache = CertsCache(clock=clock)
    _verify(token(keys), url, cache)
    server.document = {KID: keys["cert"], NEXT_KID: keys["next_cert"]}  # Google rotates
    clock.now += 30
    assert _verify(token(keys, "next"), url, cache)["email"] == CALLER
    assert server.fetches == 2
    _verify(token(keys, "next"), url, cache)
    assert server.fetches == 2


def test_concurrent_key_misses_make_one_fetch(
    keys: dict[str, Any], counting: tuple[CertsServer, str]
) -> None:
    server, url = counting
    clock = FakeClock()
    cache = CertsCache(clock=clock)
    _verify(token(keys), url, cache)
    clock.now += 60
    forged = token(keys, "forged")

    refusals: list[str] = []

    def attempt() -> None:
        try:
            _verify(forged, url, cache)
        except SignatureError as exc:
            refusals.append(str(exc))

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refusals == ["token is signed by a key that is not one of Google's current keys"] * 16
    assert server.fetches == 2


def test_tokens_that_cannot_be_valid_cost_no_fetch(
    keys: dict[str, Any], counting: tuple[CertsServer, str]
) -> None:
    server, url = counting
    head = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":"x"}').decode().rstrip("=")
    with pytest.raises(SignatureError, match="not RS256"):
        _verify(f"{head}.e30.c2ln", url, CertsCache(clock=FakeClock()))
    assert server.fetches == 0
