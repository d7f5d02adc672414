"""``firecron dev`` as a user runs it: a subprocess, real workers, real ticks, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

FIRECRON = str(Path(sys.executable).parent / "firecron")

SCHEDULES = """\
schedules:
  - id: hello-fast
    every: 1s
    target: {function: hello}
    params: {name: dev}
  - id: failing
    every: 3s
    target: {function: fail}
    retry: {max_attempts: 2, backoff: 1s}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FIRECRON_")}


def _runs(cwd: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        [FIRECRON, "runs", "--json", "--limit", "50"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    return list(json.loads(out.stdout))


def test_dev_runs_workers_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "schedules.yaml").write_text(SCHEDULES)
    port = _free_port()
    proc = subprocess.Popen(
        [FIRECRON, "dev", "--schedules", "schedules.yaml", "--port", str(port)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        states: set[object] = set()
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            runs = _runs(tmp_path)  # from the default store, as the README says
            states = {r["state"] for r in runs if r["schedule_id"] == "hello-fast"}
            failed = [r for r in runs if r["schedule_id"] == "failing" and r["state"] == "failed"]
            if "succeeded" in states and failed:
                break
            time.sleep(0.5)
        assert "succeeded" in states
        assert failed, "the failing schedule did not end failed after its retries"
        assert failed[0]["attempt"] == 2
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        output = proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 0, output
    assert "hello-fast@" in output
    assert "succeeded" in output  # plain log lines when stdout is not a terminal
    assert "firecron dev: stopped" in output
    assert "Traceback" not in output


def test_dev_reports_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [FIRECRON, "dev", "--port", str(port)],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 2
    assert f"port {port} is already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
