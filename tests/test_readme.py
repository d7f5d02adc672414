"""The README's quickstart, run as written: its worker, its schedule and its commands.

The test copies ``functions/main.py`` and ``schedules.yaml`` to a temporary folder,
adds the README's worker and schedule blocks to them, starts ``firecron dev`` there
(what ``make dev`` runs) on a free port, and runs the README's command block with bash,
``set -e``, so a command that fails fails the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def block(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- quickstart:{name} -->\n```\w+\n(.*?)```", readme, re.S)
    assert match, f"README has no quickstart:{name} block"
    return match.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_make_dev_runs_the_dev_command() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "firecron dev --schedules schedules.yaml --port $(PORT)" in makefile


def test_readme_quickstart(tmp_path: Path) -> None:
    (tmp_path / "functions").mkdir()
    main = (ROOT / "functions" / "main.py").read_text() + "\n\n" + block("worker")
    (tmp_path / "functions" / "main.py").write_text(main)
    (tmp_path / "schedules.yaml").write_text(
        (ROOT / "schedules.yaml").read_text() + block("schedule")
    )
    (tmp_path / ".venv").symlink_to(BIN.parent)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRECRON_")}
    dev = subprocess.Popen(
        [
            str(BIN / "firecron"),
            "dev",
            "--schedules",
            "schedules.yaml",
            "--port",
            str(port),
            "--source",
            "functions/main.py",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        script = "set -euo pipefail\n" + block("commands").replace(
            "127.0.0.1:8080", f"127.0.0.1:{port}"
        )
        deadline = time.monotonic() + 60
        while True:  # the scheduled run of the new worker, on its own
            proc = subprocess.run(
                [
                    str(BIN / "firecron"),
                    "runs",
                    "--schedule",
                    "count-words",
                    "--json",
                    "--state",
                    "succeeded",
                ],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            done = json.loads(proc.stdout)
            if done or time.monotonic() > deadline:
                break
            assert dev.poll() is None, dev.stdout.read() if dev.stdout else ""
            time.sleep(0.5)
        assert done, "count-words never succeeded"
        assert done[0]["output"] == {"words": 7}
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        triggered = [
            line for line in result.stdout.splitlines() if re.fullmatch(r"count-words@m\S+", line)
        ]
        assert len(triggered) == 1
        run = subprocess.run(
            [str(BIN / "firecron"), "run", triggered[0], "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        deadline = time.monotonic() + 30
        while json.loads(run.stdout)["state"] != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.3)
            run = subprocess.run(
                [str(BIN / "firecron"), "run", triggered[0], "--json"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
        assert json.loads(run.stdout)["output"] == {"words": 3}
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
    assert dev.returncode == 0
