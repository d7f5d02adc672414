"""Signatures interoperate with the reference Standard Webhooks library (``standardwebhooks``).

Every check pairs firecron with code no one here wrote: firecron signs and
``standardwebhooks.Webhook(secret).verify`` accepts; ``Webhook(secret).sign`` signs and
firecron's :func:`verify_webhook`, and a real worker served by functions-framework,
accept. The reference library checks timestamps against the real clock, so these
signatures are made at ``datetime.now``; nothing waits on it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from _factories import make_run
from _sinks import serve
from _workers import WorkerProcess, WorkerStartError, serve_worker, worker_env
from firecron.core.events import EventType, Route, WebhookSink
from firecron.core.lifecycle import SendOutcome, make_event
from firecron.core.models import Target
from firecron.core.runs import Run, RunState
from firecron.errors import InvalidInputError, SignatureError
from firecron.notify import Notifier
from firecron.settings import Settings
from firecron.store.sqlite import SQLiteStore
from firecron.transport.sender import Sender, build_dispatch
from firecron.transport.signing import sign_webhook, verify_webhook

# Unpadded (44 base64 characters less the "="), as the reference library accepts: the
# form that made every delivery a Flask HTML 500 before.
NEW = "whsec_" + base64.b64encode(b"the-new-signing-key-of-32-bytes!").decode().rstrip("=")
OLD = "whsec_" + base64.b64encode(b"the-old-signing-key").decode()
REMOVED = "whsec_" + base64.b64encode(b"a-key-no-longer-in-the-list").decode()


def _reference_signed(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers made by the reference library alone."""
    now = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
    }


@pytest.mark.parametrize("secret", [NEW, NEW + "=", OLD, OLD.rstrip("="), "whsec_YQ"])
def test_signatures_are_the_reference_librarys(secret: str) -> None:
    # Padded or not, the key is the decoded bytes after whsec_, as the reference reads it.
    body = '{"city":"Zürich"}'.encode()
    now = datetime.now(UTC)
    ours = sign_webhook("msg-1", int(now.timestamp()), body, [secret])
    assert ours == Webhook(secret).sign("msg-1", now, body.decode())


# --- firecron signs, the reference verifies -------------------------------------------


def test_dispatches_verify_with_the_reference_library_including_rotation() -> None:
    run = make_run("nightly", params={"city": "Zürich", "n": 3})
    d = build_dispatch(run, "https://example.com/h", secrets=[NEW, OLD], now=datetime.now(UTC))
    # Receivers on either side of a rotation verify; one on a removed secret does not.
    for secret in (NEW, OLD):
        assert Webhook(secret).verify(d.body, d.headers) == json.loads(d.body)
    with pytest.raises(WebhookVerificationError):
        Webhook(REMOVED).verify(d.body, d.headers)


async def test_sent_dispatches_verify_with_the_reference_library() -> None:
    run = make_run("nightly", params={"region": "eu"})
    sender = Sender(concurrency=2, max_open=2, ack_timeout=5.0, allow_private_targets=True)
    try:
        with serve() as sink:
            d = build_dispatch(run, f"{sink.url}/h", secrets=[NEW], now=datetime.now(UTC))
            result = await sender.send(d)
            [got] = sink.requests
    finally:
        await sender.aclose()
    assert result.outcome is SendOutcome.acknowledged
    assert Webhook(NEW).verify(got.body, got.headers) == json.loads(got.body)


@pytest.mark.parametrize("fmt", ["cloudevents", "slack"])
async def test_notification_webhooks_verify_with_the_reference_library(fmt: str) -> None:
    run = make_run("nightly", state=RunState.failed, error="boom <!channel> & more")
    event = make_event(run, EventType.run_failed, datetime.now(UTC), [])
    notifier = Notifier(Settings(allow_private_targets=True, signing_secrets=(NEW, OLD)))
    try:
        with serve() as sink:
            hook = WebhookSink(type="webhook", url=f"{sink.url}/events", format=fmt)
            route = Route(sink_name="hook", types=(), sink=hook)
            assert await notifier.deliver(event, route) is None
            [got] = sink.requests
    finally:
        await notifier.aclose()
    assert got.headers["webhook-id"] == event.id
    for secret in (NEW, OLD):
        Webhook(secret).verify(got.body, got.headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(REMOVED).verify(got.body, got.headers, json_parse=False)


# --- the reference signs, firecron verifies -------------------------------------------


@pytest.mark.parametrize("signer", [NEW, OLD], ids=["new", "old-during-rotation"])
def test_reference_signed_requests_pass_verify_webhook(signer: str) -> None:
    body = b'{"hello":"world"}'
    headers = _reference_signed(signer, "run-1/1", body)
    assert verify_webhook(headers, body, [NEW, OLD], datetime.now(UTC)) == "run-1/1"


def test_a_removed_secret_no_longer_verifies() -> None:
    body = b'{"hello":"world"}'
    headers = _reference_signed(OLD, "run-1/1", body)
    with pytest.raises(SignatureError, match="signature does not match"):
        verify_webhook(headers, body, [NEW], datetime.now(UTC))


@pytest.mark.parametrize(
    "timestamp",
    [
        "9" * 400,
        "9" * 16,
        "+1700000000",
        " 1700000000",
        "1_700_000_000",
        "\u0661\u0667" + "\u0660" * 8,
        "1.7e9",
    ],
    ids=["400-digits", "16-digits", "plus", "space", "underscores", "arabic-digits", "float"],
)
def test_a_timestamp_that_is_not_plain_unix_seconds_is_refused(timestamp: str) -> None:
    # 400 digits used to overflow the float arithmetic (a 500 and a traceback in the
    # worker); int() alone also took signs, spaces, underscores and other scripts' digits.
    body = b'{"hello":"world"}'
    headers = {**_reference_signed(NEW, "run-1/1", body), "webhook-timestamp": timestamp}
    with pytest.raises(SignatureError, match=r"^invalid webhook-timestamp: expected Unix seconds$"):
        verify_webhook(headers, body, [NEW], datetime.now(UTC))


def test_headers_that_are_not_valid_text_are_refused() -> None:
    body = b'{"hello":"world"}'
    headers = {**_reference_signed(NEW, "run-1/1", body), "webhook-id": "run-\ud800/1"}
    with pytest.raises(SignatureError, match="not valid text"):
        verify_webhook(headers, body, [NEW], datetime.now(UTC))


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, Path]]:
    """The ``hello`` worker of functions/main.py during a rotation: ``NEW,OLD``."""
    tmp = tmp_path_factory.mktemp("whsec")
    db_path = tmp / "x.db"
    env = worker_env(f"sqlite:///{db_path}", secrets=[NEW, OLD])
    with serve_worker("hello", env=env, log_dir=tmp) as proc:
        yield proc, db_path


async def _pending_run(db_path: Path) -> tuple[Run, bytes]:
    store = SQLiteStore(db_path)
    try:
        run = await store.create_run(
            make_run(
                f"hello-{datetime.now(UTC).timestamp():.6f}".replace(".", "-"),
                target=Target(function="hello"),
                params={"name": "standard webhooks"},
            )
        )
    finally:
        await store.close()
    assert run is not None
    body = {
        "run_id": run.id,
        "schedule_id": run.schedule_id,
        "scheduled_for": run.scheduled_for.isoformat().replace("+00:00", "Z"),
        "attempt": run.attempt,
        "trigger": run.trigger.value,
        "params": run.params,
    }
    return run, json.dumps(body, separators=(",", ":")).encode()


async def _stored(db_path: Path, run_id: str) -> Run:
    store = SQLiteStore(db_path)
    try:
        run = await store.get_run(run_id)
    finally:
        await store.close()
    assert run is not None
    return run


@pytest.mark.parametrize("signer", [NEW, OLD], ids=["new", "old-during-rotation"])
async def test_worker_executes_reference_signed_deliveries(
    worker: tuple[WorkerProcess, Path], signer: str
) -> None:
    proc, db_path = worker
    run, body = await _pending_run(db_path)
    headers = _reference_signed(signer, f"{run.id}/{run.attempt}", body)
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(proc.url, content=body, headers=headers)
    # The worker answers once the run has ended and been recorded.
    assert response.status_code == 202, response.text
    last: dict[str, Any] = json.loads(response.text.splitlines()[-1])
    assert last == {"run_id": run.id, "state": "succeeded", "recorded": True}
    done = await _stored(db_path, run.id)
    assert done.state is RunState.succeeded
    assert done.output == {"greeting": "hello standard webhooks"}


async def test_worker_refuses_a_removed_secret(worker: tuple[WorkerProcess, Path]) -> None:
    proc, db_path = worker
    run, body = await _pending_run(db_path)
    headers = _reference_signed(REMOVED, f"{run.id}/{run.attempt}", body)
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(proc.url, content=body, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "signature does not match"}
    assert (await _stored(db_path, run.id)).state is RunState.pending


# --- bad secrets fail at startup, in one line -----------------------------------------

_KEY_B64 = base64.b64encode(b"k" * 32).decode()
BAD_SECRETS = {
    "plain": (
        "a-48-character-random-password-as-infra-made-them",
        "entry 1 of 1 does not start with whsec_",
    ),
    "bad-base64": ("whsec_not*base64!", "entry 1 of 1 is not valid standard base64"),
    "empty": ("whsec_", "entry 1 of 1 has an empty key"),
    "second-of-two": (f"whsec_{_KEY_B64}, whsec_{_KEY_B64[:-2]}-_", "entry 2 of 2 is not valid"),
}


@pytest.mark.parametrize(("value", "message"), BAD_SECRETS.values(), ids=BAD_SECRETS.keys())
def test_bad_secrets_are_refused_by_settings_in_one_line(value: str, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Settings.from_env({"FIRECRON_SIGNING_SECRET": value})
    text = str(caught.value)
    assert text.startswith("FIRECRON_SIGNING_SECRET: ")
    assert message in text
    assert "\n" not in text
    keys = [part.strip().removeprefix("whsec_") for part in value.split(",")]
    assert not [key for key in keys if key and key in text]


def test_settings_made_in_code_cannot_hold_a_bad_secret() -> None:
    with pytest.raises(InvalidInputError, match="FIRECRON_SIGNING_SECRET: entry 2 of 2"):
        Settings(signing_secrets=(NEW, "plain"))


@pytest.mark.parametrize(("value", "message"), BAD_SECRETS.values(), ids=BAD_SECRETS.keys())
def test_cli_refuses_a_bad_secret_with_exit_2(value: str, message: str, tmp_path: Path) -> None:
    env = worker_env(f"sqlite:///{tmp_path / 'x.db'}", extra={"FIRECRON_SIGNING_SECRET": value})
    done = subprocess.run(
        [str(Path(sys.executable).parent / "firecron"), "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_worker_with_a_bad_secret_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    """A bad secret fails when the source is loaded (``@firecron.worker``), so the
    process never serves: no delivery can get Flask's HTML 500, and the deploy fails
    with one line naming the variable, never the secret."""
    value = "whsec_not*base64!"
    env = worker_env(f"sqlite:///{tmp_path / 'x.db'}", extra={"FIRECRON_SIGNING_SECRET": value})
    with pytest.raises(WorkerStartError) as info, serve_worker("hello", env=env, log_dir=tmp_path):
        pass
    log = str(info.value)
    assert "FIRECRON_SIGNING_SECRET: entry 1 of 1 is not valid standard base64" in log
    assert "not*base64" not in log
