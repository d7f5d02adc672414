"""``firecron dev`` is signed: a secret per store, every dispatch signed, unsigned refused.

The secret's file (``firecron._dev_secret``) is tested directly: private, made once,
reused, never made by ``trigger``, second to ``FIRECRON_SIGNING_SECRET``. Then the stack
as a user runs it: its scheduled runs succeed (signed), an unsigned or wrongly signed
POST to one of its workers is refused with 401, and ``firecron trigger`` from another
shell, with no secret in its environment, signs with the stack's secret.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from _devstack import clean_env, dev_stack, firecron, poll, runs
from firecron._dev_secret import SECRET_SUFFIX, secret_path, with_dev_secret
from firecron.errors import InvalidInputError
from firecron.settings import Settings
from firecron.transport.signing import signature_headers, signing_key

CONFIGURED = "whsec_" + base64.b64encode(b"a configured secret of 32 bytes!").decode()


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets everyone read new files: the secret must stay private anyway."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _settings(tmp_path: Path) -> Settings:
    return Settings(store_url=f"sqlite:///{tmp_path / 'store' / 'firecron.db'}")


@pytest.mark.usefixtures("open_umask")
def test_the_secret_is_made_once_private_and_reused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    path = tmp_path / "store" / ("firecron.db" + SECRET_SUFFIX)
    assert secret_path(settings.store_url) == path

    first = with_dev_secret(settings, create=True)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (secret,) = first.signing_secrets
    assert secret.startswith("whsec_")
    assert len(signing_key(secret)) == 32
    assert path.read_text().strip() == secret
    assert with_dev_secret(settings, create=True).signing_secrets == (secret,)
    assert with_dev_secret(settings, create=False).signing_secrets == (secret,)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left


def test_trigger_never_makes_a_secret(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert with_dev_secret(settings, create=False) == settings
    assert not (tmp_path / "store").exists()


def test_a_configured_secret_wins_and_no_file_is_made(tmp_path: Path) -> None:
    settings = _settings(tmp_path).__class__(
        store_url=_settings(tmp_path).store_url, signing_secrets=(CONFIGURED,)
    )
    assert with_dev_secret(settings, create=True).signing_secrets == (CONFIGURED,)
    assert not (tmp_path / "store").exists()


def test_only_a_sqlite_file_has_a_secret_file() -> None:
    remote = Settings(store_url="firestore://project")
    assert secret_path(remote.store_url) is None
    assert with_dev_secret(remote, create=True) == remote


def test_a_bad_secret_file_is_one_line_without_its_content(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    path = secret_path(settings.store_url)
    assert path is not None
    path.parent.mkdir()
    path.write_text("hunter2-not-a-secret\n")
    with pytest.raises(InvalidInputError) as caught:
        with_dev_secret(settings, create=True)
    message = str(caught.value)
    assert str(path) in message
    assert "hunter2" not in message
    assert "\n" not in message


def test_stacks_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    start = threading.Barrier(8)
    found: list[tuple[str, ...]] = []

    def make() -> None:
        start.wait()
        found.append(with_dev_secret(settings, create=True).signing_secrets)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8
    assert len(set(found)) == 1


SCHEDULES = """\
schedules:
  - id: hello-fast
    every: 1s
    target: {function: hello}
    params: {name: dev}
"""


def test_dev_signs_refuses_unsigned_and_trigger_signs_alike(tmp_path: Path) -> None:
    (tmp_path / "schedules.yaml").write_text(SCHEDULES)
    with dev_stack(tmp_path, "--schedules", "schedules.yaml") as dev:
        done = poll(
            lambda: [r for r in runs(tmp_path, "hello-fast") if r["state"] == "succeeded"],
            what="a scheduled hello-fast run succeeded (signed dispatch, signed worker)",
            dev=dev,
        )
        path = tmp_path / ".firecron" / ("firecron.db" + SECRET_SUFFIX)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secret = path.read_text().strip()

        # A real run id, altered params: refused before anything is read or run.
        run = done[0]
        body = json.dumps(
            {
                "run_id": run["id"],
                "schedule_id": run["schedule_id"],
                "scheduled_for": run["scheduled_for"],
                "attempt": run["attempt"],
                "trigger": "schedule",
                "params": {"name": "forged"},
            }
        ).encode()
        key = f"{run['id']}/{run['attempt']}"
        wrong = "whsec_" + base64.b64encode(b"not the stack's secret, 32 byte").decode()
        for headers in ({}, signature_headers(key, datetime.now(UTC), body, [wrong])):
            refused = httpx.post(
                f"{dev.url}/hello",
                content=body,
                headers={"content-type": "application/json", **headers},
                timeout=10,
            )
            assert refused.status_code == 401, refused.text

        # Another shell: no secret in its environment, the same store.
        cli_env = clean_env(
            {
                "FIRECRON_FUNCTIONS_BASE_URL": dev.url,
                "FIRECRON_ALLOW_PRIVATE_TARGETS": "1",
            }
        )
        triggered = firecron(
            tmp_path, "trigger", "hello-fast", "--param", "name=cli", env=cli_env
        ).stdout.strip()

        def finished() -> dict[str, object]:
            shown = json.loads(firecron(tmp_path, "run", triggered, "--json").stdout)
            return {} if shown["state"] in ("pending", "dispatched", "running") else dict(shown)

        ended = poll(finished, what=f"the triggered run {triggered} ended", dev=dev)
        assert ended["state"] == "succeeded", ended
        assert ended["output"] == {"greeting": "hello cli"}
        assert dev.stop() == 0
    output = dev.output()
    assert secret not in output
    assert str(Path(".firecron") / ("firecron.db" + SECRET_SUFFIX)) in output
