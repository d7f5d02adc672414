"""The ``notify-test`` command (registered on :data:`firecron.cli.cli`).

Thin, like the rest of the CLI: it reads the schedules file as ``validate`` does, calls
:func:`firecron.sink_probe.probe`, and prints one line per try. Exit codes as
everywhere: 0 every try acknowledged, 1 a sink that did not acknowledge
(:class:`~firecron.errors.DeliveryError`), 2 invalid input (the file, an unknown sink, an
event the sink is never sent).
"""

from __future__ import annotations

import asyncio

import click

from firecron._output import console, emit_json
from firecron.cli import _now, _read_schedule_file, _settings, cli, json_option
from firecron.core.events import EventType
from firecron.errors import DeliveryError, InvalidInputError
from firecron.sink_probe import PROBE_EVENTS, Sent, probe

__all__ = ["notify_test_cmd"]


def _line(name: str, sent: Sent) -> str:
    what = "the resolve of the test incident" if sent.resolves else f"a test {sent.event.value}"
    outcome = "acknowledged" if sent.error is None else f"FAILED: {sent.error}"
    return f"{name}: {what} (run {sent.run_id}): {outcome}"


@cli.command("notify-test")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("sink")
@click.option(
    "--event",
    "event_type",
    type=click.Choice([t.value for t in PROBE_EVENTS]),
    default=EventType.run_failed.value,
    show_default=True,
    help="The event to send.",
)
@click.option(
    "--keep-open",
    is_flag=True,
    help="PagerDuty: leave the test incident open (by default it is resolved at once).",
)
@json_option
def notify_test_cmd(file: str, sink: str, event_type: str, keep_open: bool, as_json: bool) -> None:
    """Send a test event to SINK, a sink of FILE's notifications, and say if it arrived.

    The event is about the schedule firecron-test and a made-up run whose error says it
    is a test. It goes out as the dispatcher would send it: the same payload, SSRF
    guard, TLS checks and secrets (FIRECRON_* settings and the variables a sink names,
    from this environment). A pagerduty sink gets a trigger and then, unless
    --keep-open, the resolve that closes it. Exit 1 if the sink did not acknowledge.

    \b
    Examples:
      PD_ROUTING_KEY=... firecron notify-test schedules.yaml pager
      SMTP_PASSWORD=... firecron notify-test schedules.yaml mail --event run.lost
    """
    doc = _read_schedule_file(file)
    sinks = doc.notifications.sinks if doc.notifications is not None else {}
    if sink not in sinks:
        known = ", ".join(sorted(sinks)) or "none"
        raise InvalidInputError(f"SINK: {file} has no sink {sink!r} (its sinks: {known})")
    settings = _settings(None)
    sent = asyncio.run(
        probe(settings, sink, sinks[sink], EventType(event_type), _now(), keep_open=keep_open)
    )
    if as_json:
        emit_json(
            [
                {
                    "sink": sink,
                    "event": s.event.value,
                    "run_id": s.run_id,
                    "resolves": s.resolves,
                    "error": s.error,
                }
                for s in sent
            ]
        )
    else:
        for s in sent:
            console.print(_line(sink, s), markup=False, highlight=False)
    failed = [s for s in sent if s.error is not None]
    if failed:
        raise DeliveryError(f"sink {sink} did not acknowledge the test: {failed[0].error}")
