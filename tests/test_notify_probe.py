"""``firecron notify-test``: a test event to one sink, against real servers on 127.0.0.1.

The command runs as a subprocess (exit codes and stderr are what a user sees); the
PagerDuty server checks every event against the Events API v2 schema, and the SMTP
server (aiosmtpd) requires STARTTLS and a login, as in tests/test_notify_sinks.py.
"""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

import pytest

from _cli import clean_env, run_cli
from _notify_servers import self_signed, serve_pagerduty, serve_smtp
from _sinks import serve

KEY = "R0UT1NGKEY0123456789abcdefABCDEF"


def _file(tmp_path: Path, sinks: str) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(f"notifications:\n  sinks:\n{sinks}schedules: []\n", encoding="utf-8")
    return path


def _env(**extra: str) -> dict[str, str]:
    return clean_env({"FIRECRON_ALLOW_PRIVATE_TARGETS": "1", **extra})


def test_pagerduty_gets_a_trigger_then_its_resolve(tmp_path: Path) -> None:
    with serve_pagerduty(KEY) as pd:
        path = _file(
            tmp_path, f'    pager: {{type: pagerduty, routing_key_env: PD_KEY, url: "{pd.url}"}}\n'
        )
        proc = run_cli("notify-test", str(path), "pager", env=_env(PD_KEY=KEY))
        kept = run_cli(
            "notify-test", str(path), "pager", "--event", "run.sla_breached", "--keep-open",
            "--json", env=_env(PD_KEY=KEY),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("pager: a test run.failed (run firecron-test@m")
    assert lines[0].endswith(": acknowledged")
    assert lines[1].startswith("pager: the resolve of the test incident (run firecron-test@m")
    assert pd.rejected == []
    triggers, resolves = pd.events("trigger"), pd.events("resolve")
    assert [t["dedup_key"] for t in triggers] == [
        "firecron/firecron-test/run.failed",
        "firecron/firecron-test/run.sla_breached",
    ]
    assert "a test event sent by firecron notify-test" in triggers[0]["payload"]["summary"]
    assert triggers[1]["payload"]["severity"] == "warning"
    # The resolve closes the first test's incident; --keep-open sent none for the second.
    assert [r["dedup_key"] for r in resolves] == ["firecron/firecron-test/run.failed"]
    assert kept.returncode == 0, kept.stderr
    [sent] = json.loads(kept.stdout)
    assert (sent["sink"], sent["event"], sent["resolves"], sent["error"]) == (
        "pager",
        "run.sla_breached",
        False,
        None,
    )


def test_email_arrives_over_starttls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with serve_smtp(certificate=(cert, key)) as smtp:
        path = _file(
            tmp_path,
            f"    mail: {{type: email, host: 127.0.0.1, port: {smtp.port}, from: alerts@example.com,"
            " to: [oncall@example.com], password_env: SMTP_PASSWORD}\n",
        )
        proc = run_cli(
            "notify-test", str(path), "mail", "--event", "run.lost",
            env=_env(SMTP_PASSWORD="smtp-password", FIRECRON_CA_FILE=str(cert)),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("mail: a test run.lost (run firecron-test@m")
    [received] = smtp.received
    assert received.tls
    assert received.login == "alerts@example.com"
    message = email.message_from_bytes(received.content, policy=email.policy.default)
    assert message["Subject"] == "[firecron] run.lost: firecron-test"
    assert "a test event sent by firecron notify-test" in message.get_content()


def test_a_webhook_gets_the_signed_cloudevent(tmp_path: Path) -> None:
    with serve() as sink:
        path = _file(tmp_path, f'    hook: {{type: webhook, url: "{sink.url}/events"}}\n')
        proc = run_cli(
            "notify-test", str(path), "hook",
            env=_env(FIRECRON_SIGNING_SECRET="whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"),
        )  # fmt: skip
        sink.wait_for(1)
    assert proc.returncode == 0, proc.stderr
    [request] = sink.requests
    assert request.headers["content-type"] == "application/cloudevents+json"
    assert "webhook-signature" in request.headers
    assert json.loads(request.body)["type"] == "dev.firecron.run.failed"


def test_a_sink_that_does_not_acknowledge_exits_1_naming_why(tmp_path: Path) -> None:
    with serve_pagerduty(KEY) as pd:
        path = _file(
            tmp_path, f'    pager: {{type: pagerduty, routing_key_env: PD_KEY, url: "{pd.url}"}}\n'
        )
        missing = run_cli("notify-test", str(path), "pager", env=_env())
        pd.fail_next = 1
        down = run_cli("notify-test", str(path), "pager", env=_env(PD_KEY=KEY))
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        "error: sink pager did not acknowledge the test:"
        " sink pager: routing_key_env PD_KEY is not set"
    ]
    assert down.returncode == 1
    assert "503" in down.stderr
    assert "Traceback" not in missing.stderr + down.stderr
    # The first failed: no resolve is sent after it (nothing was opened).
    assert pd.events("resolve") == []
    assert KEY not in down.stdout + down.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "error: SINK: {file} has no sink 'nope' (its sinks: pager)"),
        (
            ["pager", "--event", "run.succeeded"],
            "error: --event: a pagerduty sink is sent run.failed, run.lost, run.timed_out,"
            " run.sla_breached (a success only resolves them)",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    path = _file(tmp_path, "    pager: {type: pagerduty, routing_key_env: PD_KEY}\n")
    proc = run_cli("notify-test", str(path), *args, env=_env())
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [message.format(file=path)]
    assert proc.stdout == ""


def test_an_invalid_file_is_refused_as_validate_refuses_it(tmp_path: Path) -> None:
    path = _file(tmp_path, "    mail: {type: email, host: smtp.example.com, from: x, to: []}\n")
    proc = run_cli("notify-test", str(path), "mail", env=_env())
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"{path}: notifications.sinks.mail.from: 'x' is not an email address (a bare one:"
        " name@domain)",
        f"{path}: notifications.sinks.mail.to: give 1 to 50 addresses (got 0)",
    ]
