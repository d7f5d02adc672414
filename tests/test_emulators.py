"""The emulator harness itself: starts, answers, stops with nothing left behind."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import urllib.request
from pathlib import Path

import pytest

from _emulators import (
    EMULATOR_PROJECT,
    EmulatorError,
    EmulatorKind,
    emulator_or_skip,
    group_members,
    running_emulator,
    start_emulator,
)


def _get(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return response.status, response.read()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _fake_gcloud(directory: Path, body: str) -> Path:
    """A ``gcloud`` stand-in: a shell script running ``body``."""
    path = directory / "gcloud"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.emulator
@pytest.mark.parametrize(
    ("kind", "path", "body"),
    [
        ("firestore", "/", b"Ok"),
        ("pubsub", f"/v1/projects/{EMULATOR_PROJECT}/topics", None),
    ],
)
def test_emulator_starts_answers_and_stops_its_whole_group(
    kind: EmulatorKind, path: str, body: bytes | None
) -> None:
    if shutil.which("gcloud") is None:
        pytest.skip("gcloud not found: emulator tests skipped (they run in CI)")
    with running_emulator(kind) as emulator:
        assert emulator.host.startswith("127.0.0.1:")
        status, content = _get(f"http://{emulator.host}{path}")
        assert status == 200
        if body is not None:
            assert content.strip() == body
        members = group_members(emulator.pgid)
        # gcloud -> (script) -> java: the JVM is in the group, so killing the group kills it.
        assert any("java" in _cmdline(pid) for pid in members), members
        log_path, pgid = emulator.log_path, emulator.pgid
    assert group_members(pgid) == []
    assert not log_path.exists()


@pytest.mark.emulator
def test_emulator_or_skip_yields_a_working_host() -> None:
    with emulator_or_skip("firestore") as host:
        status, content = _get(f"http://{host}/")
        assert (status, content.strip()) == (200, b"Ok")


def test_missing_gcloud_skips_locally(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with (
        pytest.raises(pytest.skip.Exception, match="gcloud not found"),
        emulator_or_skip("firestore"),
    ):
        pass


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_missing_gcloud_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    with (
        pytest.raises(pytest.fail.Exception, match="gcloud not found"),
        emulator_or_skip("pubsub"),
    ):
        pass


def test_emulator_that_exits_fails_loudly_with_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_gcloud(
        tmp_path, 'echo "ERROR: (gcloud) component cloud-firestore-emulator missing"\nexit 3'
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("CI", raising=False)  # never a skip, CI or not
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the kept log lands here
    with (
        pytest.raises(pytest.fail.Exception, match=r"exited with code 3(.|\n)*component"),
        emulator_or_skip("firestore"),
    ):
        pass


def test_emulator_that_never_answers_is_killed_with_its_children(tmp_path: Path) -> None:
    # The fake records its process group (its own pid: it leads a new session), then
    # starts a child and waits, as gcloud does with java.
    pgid_file = tmp_path / "pgid"
    gcloud = _fake_gcloud(tmp_path, f"echo $$ > {pgid_file}\necho starting\nsleep 300 &\nwait")
    with pytest.raises(EmulatorError, match=r"no answer in 1s(.|\n)*starting") as info:
        start_emulator("firestore", gcloud=str(gcloud), timeout=1.0)
    assert group_members(int(pgid_file.read_text())) == []
    log = Path(str(info.value).split(" log ", 1)[1].split(":\n", 1)[0])
    assert log.exists()  # kept for whoever reads the message
    log.unlink()
