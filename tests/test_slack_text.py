"""Slack messages show event text literally: ``&``, ``<`` and ``>`` are escaped.

Slack reads ``<!channel>`` as an @channel mention and ``<https://x|click>`` as a link,
and its "Escaping text" rule is to send exactly ``&amp;``, ``&lt;`` and ``&gt;``
instead. Anything taken from a run (its error above all, which a worker's exception
writes) must not become markup; firecron's own formatting must stay.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

from _factories import T0, make_run
from _sinks import serve
from firecron.core.events import EventType, Route, WebhookSink
from firecron.core.lifecycle import make_event
from firecron.core.runs import RunState
from firecron.notify import Notifier, slack_text
from firecron.settings import Settings

HOSTILE = "boom <!channel> <https://evil.example|click> & <@U123> &lt;already&gt;"
ESCAPED = (
    "boom &lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; &lt;@U123&gt; "
    "&amp;lt;already&amp;gt;"
)


def _failed(error: str = HOSTILE) -> str:
    run = make_run("nightly-report", state=RunState.failed, attempt=3, error=error)
    return slack_text(make_event(run, EventType.run_failed, T0 + timedelta(minutes=5), []))


def _unescaped_markup(text: str) -> list[str]:
    """Every ``<...>`` Slack would parse as a mention, a channel or a link."""
    return re.findall(r"<[^>]*>", text)


def test_error_text_is_escaped_and_cannot_mention_or_link() -> None:
    text = _failed()
    assert f"> {ESCAPED}" in text.splitlines()
    assert _unescaped_markup(text) == []
    assert "<!channel>" not in text
    # '&' first: an entity already in the error is shown as typed, not decoded.
    assert "&amp;lt;already&amp;gt;" in text


def test_firecron_formatting_is_kept() -> None:
    lines = _failed("RuntimeError: plain").splitlines()
    assert lines[0] == (
        ":rotating_light: *run.failed*: schedule `nightly-report` run "
        "`nightly-report@20270101T000000Z` is *failed* (attempt 3 of 3)"
    )
    assert lines[1] == "> RuntimeError: plain"
    assert lines[2] == "Inspect: `firecron run nightly-report@20270101T000000Z`"


def test_every_line_of_a_multiline_error_stays_quoted() -> None:
    lines = _failed("first <!here>\nsecond > third").splitlines()
    assert lines[1:3] == ["> first &lt;!here&gt;", "> second &gt; third"]


async def test_the_slack_webhook_receives_the_escaped_text() -> None:
    run = make_run("nightly-report", state=RunState.failed, error=HOSTILE)
    event = make_event(run, EventType.run_failed, T0, [])
    notifier = Notifier(Settings(allow_private_targets=True))
    try:
        with serve() as sink:
            hook = WebhookSink(type="webhook", url=f"{sink.url}/services/T/B/x", format="slack")
            assert await notifier.deliver(event, Route(sink_name="s", types=(), sink=hook)) is None
            [request] = sink.requests
    finally:
        await notifier.aclose()
    text = json.loads(request.body)["text"]
    assert ESCAPED in text
    assert _unescaped_markup(text) == []
