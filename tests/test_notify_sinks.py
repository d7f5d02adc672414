"""The PagerDuty and email sinks against real servers on 127.0.0.1.

PagerDuty: an HTTP server that checks every event against the Events API v2 schema
(``tests/_notify_servers.py``) and answers ``400`` to one that is not valid, so a
payload firecron gets wrong fails the delivery. Email: ``aiosmtpd`` requiring STARTTLS
(a throwaway certificate trusted through ``FIRECRON_CA_FILE``) and a login. Both are
also driven through the outbox (:mod:`firecron.outbox`) with a real SQLite store: a
failed try is retried when due, and an acknowledged one is never sent again.
"""

from __future__ import annotations

import email
import email.policy
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from _factories import T0, make_run
from _notify_servers import PINNED_NAME, Smtp, self_signed, serve_pagerduty, serve_smtp
from _sinks import closed_port
from firecron.core.events import (
    PAGERDUTY_TRIGGERS,
    SINK_TYPES,
    DeliveryState,
    EmailSink,
    Event,
    EventType,
    PagerDutySink,
    Route,
    schedule_error_event,
)
from firecron.core.lifecycle import make_event
from firecron.core.models import NotifyAction, Target
from firecron.core.runs import Run, RunState
from firecron.core.schedule_file import parse_schedule_file
from firecron.errors import FirecronError, InvalidInputError
from firecron.notify import Notifier, email_message
from firecron.outbox import emit, flush
from firecron.settings import Settings
from firecron.store import Store, open_store
from firecron.transport import guard

SCHEDULE = "nightly-report"
KEY = "R0UT1NGKEY0123456789abcdefABCDEF"  # 32 characters, like PagerDuty's
CONSOLE = "https://admin.example.run.app"
WHEN = T0 + timedelta(minutes=5)
PARAM_SECRET = "PARAM-SECRET-xyz"


def _run(state: RunState = RunState.failed, routes: list[Route] | None = None, **kw: Any) -> Run:
    fields: dict[str, Any] = {
        "state": state,
        "attempt": 3,
        "error": "RuntimeError: boom\nTraceback line two",
        "labels": {"team": "data"},
        "params": {"api_token": PARAM_SECRET},
        "started_at": T0 + timedelta(seconds=2),
        "ended_at": T0 + timedelta(minutes=4),
        "expected_duration": timedelta(minutes=2),
        "notify": routes or [],
    }
    fields.update(kw)
    return make_run(SCHEDULE, **fields)


def _pd_route(url: str, on: tuple[EventType, ...] = ()) -> Route:
    sink = PagerDutySink(type="pagerduty", routing_key_env="PD_ROUTING_KEY", url=url)
    return Route(sink_name="pager", types=on, sink=sink)


def _settings(**kw: Any) -> Settings:
    fields: dict[str, Any] = {
        "allow_private_targets": True,
        "console_url": CONSOLE,
        "secret_env": {"PD_ROUTING_KEY": KEY, "SMTP_PASSWORD": "smtp-password"},
    }
    fields.update(kw)
    return Settings(**fields)


@pytest.fixture
async def notifier() -> AsyncIterator[Notifier]:
    n = Notifier(_settings())
    yield n
    await n.aclose()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'sinks.db'}")
    yield s
    await s.close()


# --- routing (pure) -----------------------------------------------------------------


def test_a_pagerduty_route_takes_its_trigger_types_and_the_success_that_resolves_them() -> None:
    every = _pd_route("https://pd.test/v2/enqueue")
    assert every.pagerduty_triggers == PAGERDUTY_TRIGGERS
    assert every.wants(EventType.run_succeeded)
    for kind in (EventType.run_started, EventType.run_retrying, EventType.run_skipped):
        assert not every.wants(kind), kind
    failed_only = _pd_route("https://pd.test/v2/enqueue", (EventType.run_failed,))
    assert failed_only.pagerduty_triggers == (EventType.run_failed,)
    assert failed_only.wants(EventType.run_succeeded)  # not listed: the resolve still goes
    assert not failed_only.wants(EventType.run_lost)
    no_trigger = _pd_route("https://pd.test/v2/enqueue", (EventType.run_started,))
    assert not no_trigger.wants(EventType.run_succeeded)
    assert not no_trigger.wants(EventType.run_started)


def test_sinks_are_read_from_a_schedules_file_and_bad_fields_are_named() -> None:
    doc = parse_schedule_file(
        """
notifications:
  sinks:
    pager: {type: pagerduty, routing_key_env: PD_ROUTING_KEY}
    mail:
      type: email
      host: smtp.example.com
      from: firecron@example.com
      to: [oncall@example.com]
      password_env: SMTP_PASSWORD
  rules:
    - {on: ["*"], sink: pager}
schedules: []
"""
    )
    assert doc.notifications is not None
    pager, mail = doc.notifications.sinks["pager"], doc.notifications.sinks["mail"]
    assert isinstance(pager, PagerDutySink)
    assert pager.url == "https://events.pagerduty.com/v2/enqueue"
    assert isinstance(mail, EmailSink)
    assert (mail.port, mail.from_, mail.to) == (
        587,
        "firecron@example.com",
        ("oncall@example.com",),
    )
    # Exactly one line each, naming the field as the file does (no union tag in it).
    for bad, line in (
        (
            "{type: email, host: h, from: a@b.c, to: ['x y@b.c']}",
            "sinks.s.to[0]: 'x y@b.c' is not an email address",
        ),
        (
            '{type: email, host: h, from: "a@b.c\\nBcc: z@evil.test", to: [o@b.c]}',
            "sinks.s.from: 'a@b.c\\nBcc: z@evil.test' is not an email address",
        ),
        ("{type: email, host: h, from: a@b.c, to: []}", "sinks.s.to: give 1 to 50 addresses"),
        (
            '{type: email, host: "h\\nX: y", from: a@b.c, to: [o@b.c]}',
            "sinks.s.host: 'h\\nX: y' is not a host name or IP address",
        ),
        (
            "{type: email, host: h, port: 0, from: a@b.c, to: [o@b.c]}",
            "sinks.s.port: Input should be greater than or equal to 1",
        ),
        (
            "{type: pagerduty, routing_key_env: 'not a name'}",
            "sinks.s.routing_key_env: 'not a name' is not an environment variable name",
        ),
        (
            "{type: pagerduty, routing_key_env: K, routing_key: KEYINLINE}",
            "sinks.s: unknown key 'routing_key'",
        ),
    ):
        with pytest.raises(FirecronError) as caught:
            parse_schedule_file(f"notifications:\n  sinks:\n    s: {bad}\nschedules: []\n")
        lines = str(caught.value).splitlines()[1:] or [str(caught.value)]
        assert len(lines) == 1, (bad, lines)
        assert line in lines[0], (bad, lines[0])


def test_sink_types_are_the_union_s_tags() -> None:
    assert {"webhook", "pubsub", "log", "pagerduty", "email"} == SINK_TYPES


def test_a_pagerduty_rule_that_could_send_nothing_and_a_metadata_url_are_refused() -> None:
    with pytest.raises(FirecronError) as caught:
        parse_schedule_file(
            """
notifications:
  sinks:
    pager: {type: pagerduty, routing_key_env: PD_ROUTING_KEY, url: "http://169.254.169.254/v2/enqueue"}
  rules:
    - {on: [run.started, run.retrying], sink: pager}
schedules: []
"""
        )
    text = str(caught.value)
    assert "notifications.rules[0].on: a pagerduty sink triggers on run.failed" in text
    assert "notifications.sinks.pager.url:" in text


def test_the_console_url_is_its_own_setting_or_the_admin_function() -> None:
    assert Settings.from_env({}).console_url is None
    admin = {"FIRECRON_ADMIN_AUDIENCE": "https://admin-abc.a.run.app/"}
    assert Settings.from_env(admin).console_url == "https://admin-abc.a.run.app"
    own = {**admin, "FIRECRON_CONSOLE_URL": "https://firecron.example.com/console/"}
    assert Settings.from_env(own).console_url == "https://firecron.example.com/console"
    with pytest.raises(InvalidInputError, match=r"^FIRECRON_CONSOLE_URL='console': expected"):
        Settings.from_env({"FIRECRON_CONSOLE_URL": "console"})
    # The environment is kept for the secrets sinks name, never shown.
    settings = Settings.from_env({"PD_ROUTING_KEY": KEY})
    assert settings.secret_env["PD_ROUTING_KEY"] == KEY
    assert KEY not in repr(settings)


# --- PagerDuty ----------------------------------------------------------------------


def test_the_pagerduty_server_refuses_an_invalid_event() -> None:
    """The checking server can fail: the tests below would catch a wrong payload."""
    with serve_pagerduty(KEY) as pd:
        bad = {"routing_key": KEY, "event_action": "trigger", "payload": {"summary": "x"}}
        request = urllib.request.Request(
            pd.url, json.dumps(bad).encode(), {"content-type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 400
        assert pd.accepted == []
        assert any("payload.source" in e for e in pd.rejected[0])
        assert any("dedup_key" in e for e in pd.rejected[0])


async def test_pagerduty_triggers_an_incident_per_schedule_and_kind(notifier: Notifier) -> None:
    with serve_pagerduty(KEY) as pd:
        route = _pd_route(pd.url)
        run = _run(routes=[route])
        event = make_event(run, EventType.run_failed, WHEN, [route])
        assert await notifier.deliver(event, route) is None
        assert pd.rejected == []
        (trigger,) = pd.events("trigger")
    assert trigger["dedup_key"] == f"firecron/{SCHEDULE}/run.failed"
    payload = trigger["payload"]
    assert payload["severity"] == "error"
    assert payload["source"] == f"firecron/{SCHEDULE}"
    assert payload["component"] == SCHEDULE
    assert "RuntimeError: boom" in payload["summary"]
    assert "\n" not in payload["summary"]
    assert payload["custom_details"]["run_id"] == run.id
    assert trigger["links"][0]["href"] == f"{CONSOLE}/runs/{run.id}"
    assert PARAM_SECRET not in json.dumps(trigger)


async def test_an_sla_breach_is_a_warning_of_its_own_incident(notifier: Notifier) -> None:
    with serve_pagerduty(KEY) as pd:
        route = _pd_route(pd.url)
        run = _run(RunState.running, routes=[route], ended_at=None, error=None)
        assert (
            await notifier.deliver(
                make_event(run, EventType.run_sla_breached, WHEN, [route]), route
            )
            is None
        )
        (trigger,) = pd.events("trigger")
    assert trigger["dedup_key"] == f"firecron/{SCHEDULE}/run.sla_breached"
    assert trigger["payload"]["severity"] == "warning"


async def test_a_success_resolves_the_incidents_of_every_kind_the_route_triggers(
    notifier: Notifier,
) -> None:
    with serve_pagerduty(KEY) as pd:
        every, failed_only = _pd_route(pd.url), _pd_route(pd.url, (EventType.run_failed,))
        run = _run(RunState.succeeded, routes=[every], error=None)
        succeeded = make_event(run, EventType.run_succeeded, WHEN, [every])
        assert await notifier.deliver(succeeded, every) is None
        assert sorted(e["dedup_key"] for e in pd.events("resolve")) == sorted(
            f"firecron/{SCHEDULE}/{kind.value}" for kind in PAGERDUTY_TRIGGERS
        )
        assert await notifier.deliver(succeeded, failed_only) is None
        assert len(pd.events("resolve")) == len(PAGERDUTY_TRIGGERS) + 1
        assert pd.events("resolve")[-1]["dedup_key"] == f"firecron/{SCHEDULE}/run.failed"
        assert pd.events("trigger") == []
        assert pd.rejected == []


async def test_a_missing_routing_key_is_an_error_naming_the_variable() -> None:
    notifier = Notifier(_settings(secret_env={}))
    try:
        with serve_pagerduty(KEY) as pd:
            route = _pd_route(pd.url)
            error = await notifier.deliver(
                make_event(_run(), EventType.run_failed, WHEN, [route]), route
            )
            assert pd.requests == 0
    finally:
        await notifier.aclose()
    assert error == "sink pager: routing_key_env PD_ROUTING_KEY is not set"


async def test_a_refused_event_is_an_error_line_without_the_key() -> None:
    notifier = Notifier(_settings(secret_env={"PD_ROUTING_KEY": "another-integration-key"}))
    try:
        with serve_pagerduty(KEY) as pd:
            route = _pd_route(pd.url)
            error = await notifier.deliver(
                make_event(_run(), EventType.run_failed, WHEN, [route]), route
            )
            assert len(pd.rejected) == 1
            assert pd.accepted == []
    finally:
        await notifier.aclose()
    assert error is not None
    assert "400" in error
    assert "\n" not in error
    assert "another-integration-key" not in error


async def test_a_notify_message_to_pagerduty_triggers_an_incident(notifier: Notifier) -> None:
    with serve_pagerduty(KEY) as pd:
        sink = PagerDutySink(type="pagerduty", routing_key_env="PD_ROUTING_KEY", url=pd.url)
        run = _run(RunState.running, target=Target(notify=NotifyAction(sink="pager", text="x")))
        assert await notifier.send_message(sink, "daily-etl run {run_id} failed", run) is None
        (trigger,) = pd.events("trigger")
    assert trigger["payload"]["summary"] == f"daily-etl run {run.id} failed"
    assert trigger["dedup_key"] == f"firecron/{run.id}/message"


async def test_pagerduty_through_the_outbox_retries_then_never_resends(
    store: Store, notifier: Notifier
) -> None:
    with serve_pagerduty(KEY) as pd:
        route = _pd_route(pd.url)
        run = _run(routes=[route])
        run = run.model_copy(
            update={"events": [make_event(run, EventType.run_failed, WHEN, [route])]}
        )
        created = await store.create_run(run)  # the stored run carries its version
        assert created is not None
        run = created
        pd.fail_next = 1  # PagerDuty is down for the first try
        after = await emit(store, notifier, run, set(), WHEN)
        (delivery,) = after.events[0].deliveries
        assert delivery.state is DeliveryState.pending
        assert "503" in (delivery.last_error or "")
        assert delivery.next_at is not None
        after = await flush(store, notifier, after, delivery.next_at)
        assert after.events[0].deliveries[0].state is DeliveryState.delivered
        # Driven again later, an acknowledged delivery is not sent again.
        stored = await store.get_run(run.id)
        assert stored is not None
        await flush(store, notifier, stored, delivery.next_at + timedelta(hours=2))
        assert pd.requests == 2
        assert [e["dedup_key"] for e in pd.events("trigger")] == [f"firecron/{SCHEDULE}/run.failed"]

        # The next run of the schedule succeeds: its event resolves the incident.
        ok = _run(
            RunState.succeeded, routes=[route], error=None, scheduled_for=T0 + timedelta(days=1)
        )
        ok = ok.model_copy(
            update={"events": [make_event(ok, EventType.run_succeeded, WHEN, [route])]}
        )
        created = await store.create_run(ok)
        assert created is not None
        ok = await emit(store, notifier, created, set(), WHEN)
        assert ok.events[0].deliveries[0].state is DeliveryState.delivered
        assert f"firecron/{SCHEDULE}/run.failed" in [e["dedup_key"] for e in pd.events("resolve")]


async def _stored(store: Store, run: Run, event: EventType, route: Route, at: datetime) -> Run:
    run = run.model_copy(update={"events": [make_event(run, event, at, [route])]})
    created = await store.create_run(run)
    assert created is not None
    return created


async def test_a_trigger_retried_after_a_later_success_is_superseded_not_sent(
    store: Store, notifier: Notifier
) -> None:
    with serve_pagerduty(KEY) as pd:
        route = _pd_route(pd.url)
        failed = await _stored(store, _run(routes=[route]), EventType.run_failed, route, WHEN)
        pd.fail_next = 2  # PagerDuty refuses the trigger's first two tries
        failed = await emit(store, notifier, failed, set(), WHEN)
        (pending,) = failed.events[0].deliveries
        assert pending.state is DeliveryState.pending
        assert pending.next_at is not None
        # An older success (before the failure) holds nothing back.
        older = _run(
            RunState.succeeded,
            routes=[route],
            error=None,
            scheduled_for=T0 - timedelta(days=1),
            ended_at=T0 - timedelta(days=1) + timedelta(minutes=1),
        )
        await _stored(store, older, EventType.run_succeeded, route, T0 - timedelta(days=1))
        still = await flush(store, notifier, failed, pending.next_at)
        assert still.events[0].deliveries[0].state is DeliveryState.pending  # tried: 503 again
        assert pd.requests == 2
        assert pd.events("trigger") == []

        # The next run succeeds, and its resolve gets through while the trigger waits.
        later = WHEN + timedelta(minutes=10)
        ok = _run(
            RunState.succeeded,
            routes=[route],
            error=None,
            scheduled_for=T0 + timedelta(days=1),
            ended_at=later,
        )
        ok = await emit(
            store,
            notifier,
            await _stored(store, ok, EventType.run_succeeded, route, later),
            set(),
            later,
        )
        assert ok.events[0].deliveries[0].state is DeliveryState.delivered
        retry_at = still.events[0].deliveries[0].next_at
        assert retry_at is not None
        after = await flush(store, notifier, still, max(retry_at, later))
    (delivery,) = after.events[0].deliveries
    assert delivery.state is DeliveryState.superseded
    assert delivery.next_at is None
    assert ok.id in (delivery.last_error or "")
    # Sent now, the trigger would have reopened the incident the success resolved.
    assert pd.events("trigger") == []
    stored = await store.get_run(failed.id)
    assert stored is not None
    assert stored.events[0].deliveries[0].state is DeliveryState.superseded
    assert stored.watch_at is None or stored.watch_at > max(retry_at, later)


# --- email --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("smtp-tls"))


def _mail_route(port: int, **kw: Any) -> Route:
    fields: dict[str, Any] = {
        "type": "email",
        "host": "127.0.0.1",
        "port": port,
        "from": "alerts@example.com",
        "to": ["oncall@example.com", "data-team@example.com"],
        "password_env": "SMTP_PASSWORD",
    }
    fields.update(kw)
    return Route(sink_name="mail", types=(), sink=EmailSink.model_validate(fields))


def _mail_notifier(certificate: tuple[Path, Path], **kw: Any) -> Notifier:
    return Notifier(_settings(ca_file=str(certificate[0]), **kw))


async def test_email_is_sent_over_starttls_with_a_login(certificate: tuple[Path, Path]) -> None:
    notifier = _mail_notifier(certificate)
    try:
        with serve_smtp(certificate=certificate) as smtp:
            route = _mail_route(smtp.port)
            run = _run(routes=[route])
            event = make_event(run, EventType.run_failed, WHEN, [route])
            assert await notifier.deliver(event, route) is None
            assert await notifier.deliver(event, route) is None  # a retry after a lost ack
    finally:
        await notifier.aclose()
    first, again = smtp.received
    assert first.tls
    assert first.login == "alerts@example.com"
    assert first.mail_from == "alerts@example.com"
    assert first.rcpt_tos == ["oncall@example.com", "data-team@example.com"]
    message = email.message_from_bytes(first.content, policy=email.policy.default)
    assert message["Subject"] == f"[firecron] run.failed: {SCHEDULE}"
    assert message.get_content_type() == "text/plain"
    body = message.get_content().replace("\r\n", "\n")
    assert body.startswith(f"run.failed: schedule {SCHEDULE} run {run.id} failed (attempt 3 of 3)")
    assert f"Schedule: {SCHEDULE}" in body
    assert f"Run:      {run.id}" in body
    assert "  RuntimeError: boom\n  Traceback line two" in body
    assert f"Open the run: {CONSOLE}/runs/{run.id}" in body
    assert PARAM_SECRET not in first.content.decode()
    # The same event is the same message, to a receiver that deduplicates by Message-ID.
    retried = email.message_from_bytes(again.content, policy=email.policy.default)
    assert message["Message-ID"] == retried["Message-ID"]
    other = make_event(run, EventType.run_sla_breached, WHEN, [route])
    assert email_message(route.sink, other, None, WHEN)["Message-ID"] != message["Message-ID"]  # type: ignore[arg-type]


def test_an_email_without_a_console_names_the_command() -> None:
    route = _mail_route(587)
    run = _run(routes=[route])
    assert isinstance(route.sink, EmailSink)
    message = email_message(
        route.sink, make_event(run, EventType.run_lost, WHEN, [route]), None, WHEN
    )
    assert f"Inspect: firecron run {run.id}" in message.get_content()


async def _refused_mail(
    notifier: Notifier, certificate: tuple[Path, Path] | None
) -> tuple[str, Smtp]:
    """Deliver one ``run.failed`` to a fresh SMTP server (STARTTLS with ``certificate``,
    none without) through ``notifier``, then close it: (the error line, the server).
    The delivery must fail before any login or message reached the server."""
    try:
        with serve_smtp(certificate=certificate) as smtp:
            route = _mail_route(smtp.port)
            error = await notifier.deliver(
                make_event(_run(), EventType.run_failed, WHEN, [route]), route
            )
    finally:
        await notifier.aclose()
    assert error is not None
    assert smtp.received == []
    assert smtp.logins == []
    return error, smtp


async def test_email_refuses_a_server_without_starttls(certificate: tuple[Path, Path]) -> None:
    error, _ = await _refused_mail(_mail_notifier(certificate), certificate=None)
    assert "STARTTLS" in error


async def test_email_to_a_private_server_is_refused_unless_private_targets_are_allowed(
    certificate: tuple[Path, Path],
) -> None:
    notifier = _mail_notifier(certificate, allow_private_targets=False)
    error, smtp = await _refused_mail(notifier, certificate)
    assert error.startswith(f"email: host 127.0.0.1:{smtp.port} refused: ")
    assert "FIRECRON_ALLOW_PRIVATE_TARGETS" in error


async def test_email_connects_to_the_address_the_guard_approved(
    certificate: tuple[Path, Path],
) -> None:
    # No resolver knows PINNED_NAME: the guard's cache is given its address, as a lookup
    # would. The client must connect there (not look the name up again, which fails) and
    # still verify the certificate against the name.
    notifier = _mail_notifier(certificate)
    try:
        with serve_smtp(certificate=certificate) as smtp:
            guard._dns_cache[(PINNED_NAME, smtp.port)] = (time.monotonic() + 60, ("127.0.0.1",))
            route = _mail_route(smtp.port, host=PINNED_NAME)
            event = make_event(_run(), EventType.run_failed, WHEN, [route])
            assert await notifier.deliver(event, route) is None
    finally:
        guard._dns_cache.pop((PINNED_NAME, smtp.port), None)
        await notifier.aclose()
    assert [m.tls for m in smtp.received] == [True]


def test_validate_refuses_an_email_host_the_guard_always_refuses() -> None:
    def problems(host: str, allow_private: bool) -> str:
        sink = f"{{type: email, host: '{host}', from: a@example.com, to: [b@example.com]}}"
        text = f"notifications:\n  sinks:\n    mail: {sink}\nschedules: []\n"
        try:
            parse_schedule_file(text, allow_private_targets=allow_private)
        except FirecronError as exc:
            return str(exc)
        return ""

    assert "notifications.sinks.mail.host: 10.0.0.5:587 is always refused" in problems(
        "10.0.0.5", False
    )
    assert problems("10.0.0.5", True) == ""  # a private relay, when private targets are on
    assert "sinks.mail.host: 169.254.169.254:587" in problems("169.254.169.254", True)
    assert "sinks.mail.host: metadata.google.internal:587" in problems(
        "metadata.google.internal", True
    )
    assert "sinks.mail.host: [::1]:587" in problems("::1", False)
    assert problems("smtp.example.com", False) == ""


async def test_email_verifies_the_server_certificate(certificate: tuple[Path, Path]) -> None:
    # The throwaway certificate is not trusted.
    error, _ = await _refused_mail(Notifier(_settings()), certificate)
    assert "CERTIFICATE_VERIFY_FAILED" in error


async def test_email_with_a_wrong_password_is_an_error(certificate: tuple[Path, Path]) -> None:
    notifier = _mail_notifier(certificate, secret_env={"SMTP_PASSWORD": "wrong-password"})
    try:
        with serve_smtp(certificate=certificate) as smtp:
            route = _mail_route(smtp.port)
            error = await notifier.deliver(
                make_event(_run(), EventType.run_failed, WHEN, [route]), route
            )
            missing = await notifier.deliver(
                make_event(_run(), EventType.run_failed, WHEN, [route]),
                _mail_route(smtp.port, password_env="NOT_SET_ANYWHERE"),
            )
    finally:
        await notifier.aclose()
    assert error is not None
    assert "SMTPAuthenticationError" in error
    assert "wrong-password" not in error
    assert missing == "sink mail: password_env NOT_SET_ANYWHERE is not set"
    # smtplib tries each mechanism the server offers (PLAIN, LOGIN): every one refused.
    assert smtp.received == []
    assert smtp.logins
    assert all(login == ("alerts@example.com", False) for login in smtp.logins)


async def test_email_through_the_outbox_retries_then_never_resends(
    store: Store, certificate: tuple[Path, Path]
) -> None:
    notifier = _mail_notifier(certificate)
    port = closed_port()
    try:
        route = _mail_route(port)
        run = _run(routes=[route])
        run = run.model_copy(
            update={"events": [make_event(run, EventType.run_failed, WHEN, [route])]}
        )
        created = await store.create_run(run)  # the stored run carries its version
        assert created is not None
        run = created
        # Nothing listens yet: the first try fails and stays pending.
        after = await emit(store, notifier, run, set(), WHEN)
        (delivery,) = after.events[0].deliveries
        assert delivery.state is DeliveryState.pending
        assert delivery.next_at is not None
        assert "ConnectionRefusedError" in (delivery.last_error or "")
        with serve_smtp(certificate=certificate, port=port) as smtp:
            after = await flush(store, notifier, after, delivery.next_at)
            assert after.events[0].deliveries[0].state is DeliveryState.delivered
            stored = await store.get_run(run.id)
            assert stored is not None
            await flush(store, notifier, stored, delivery.next_at + timedelta(hours=2))
            assert len(smtp.received) == 1
    finally:
        await notifier.aclose()


def test_the_events_of_a_run_route_to_email_as_to_a_webhook() -> None:
    route = _mail_route(587)
    event: Event = make_event(_run(routes=[route]), EventType.run_started, WHEN, [route])
    assert [d.sink for d in event.deliveries] == ["mail"]


def test_an_email_about_a_schedule_error_names_the_schedule_and_the_show_command() -> None:
    route = _mail_route(587)
    assert isinstance(route.sink, EmailSink)
    event = schedule_error_event(SCHEDULE, {}, "cannot plan: bad cron", WHEN, None)
    message = email_message(route.sink, event, CONSOLE, WHEN)
    body = message.get_content()
    assert message["Subject"] == f"[firecron] schedule.error: {SCHEDULE}"
    assert f"Schedule: {SCHEDULE}" in body
    assert "  cannot plan: bad cron" in body
    assert f"Inspect: firecron show {SCHEDULE}" in body
    assert "Run:" not in body
    assert "/runs/" not in body  # a schedule error is about no run
