"""The schedules file reader built for large files means what PyYAML's loader means.

``_load_yaml`` builds documents straight from libyaml's events and validates each
``schedules`` entry as soon as it is complete (the speed and memory of ``firecron
validate`` on 100,000 schedules; see bench/schedules_file.py). These tests hold it to
the reference: ``yaml.load`` with the same loader class, on ordinary documents, on the
YAML it hands back to that loader (anchors, aliases, merge keys, tags on collections,
several documents, collection keys), and on errors.
"""

from __future__ import annotations

import gc

import pytest
import yaml

from firecron.core import schedule_file
from firecron.core.schedule_file import ScheduleFileError, parse_schedule_file

DOCUMENTS = {
    "empty": "",
    "comment only": "# nothing\n",
    "scalars": (
        "a: 1\nb: -2.5\nc: null\nd: ~\ne: true\nf: False\ng: on\nh: yes\ni: off\n"
        "j: 0x1F\nk: 1e3\nl: .inf\nm: -.nan\nn: 2027-01-01T10:00:00Z\no: 2027-01-01\n"
        "p: '1'\nq: \"true\"\nr: plain text\ns: ''\nt: 0o17\nu: 1_000\n"
    ),
    "block and flow": (
        "schedules:\n  - id: a\n    target: {url: 'https://x/', worker: true}\n"
        "    params: {list: [1, [2, 3], {k: v}], empty: {}, none: []}\n"
        "  - [nested, [seq]]\n  - plain\n  -\n"
    ),
    "multiline": 'a: |\n  line one\n  line two\nb: >\n  folded\n  text\nc: "esc\\tape"\n',
    "explicit tags": (
        "a: !!str 10\nb: !!int '7'\nc: !!float '1.5'\nd: !!binary aGVsbG8=\n"
        "e: !!timestamp 2027-01-01T00:00:00Z\nf: !!null ''\ng: ! 12\nh: !!bool 'true'\n"
    ),
    "duplicate keys": "a: 1\na: 2\nschedules: [x]\nschedules: [y, z]\n",
    "non-string keys": "1: one\n2.5: two\nnull: three\ntrue: four\n",
    "anchors and aliases": "base: &b {x: 1}\nuse: *b\nlist: [*b, *b]\n",
    "merge keys": "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n",
    "collection tags": "s: !!set {a, b}\no: !!omap [{a: 1}, {b: 2}]\np: !!pairs [{a: 1}]\n",
    "top-level list": "- 1\n- two\n",
    "top-level scalar": "just text\n",
    "value key": "=: x\n",
    "explicit document": "---\na: 1\n...\n",
}

BROKEN = {
    "bad indentation": "a:\n  b: 1\n c: 2\n",
    "unclosed flow": "a: [1, 2\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "list as a key": "? [a, b]\n: value\n",
    "mapping as a key": "? {a: 1}\n: value\n",
    "unknown tag": "a: !custom thing\n",
    "tab": "a:\n\t- b\n",
    "alias to nothing": "a: *missing\n",
}


def reference(text: str) -> object:
    return yaml.load(text, Loader=schedule_file._Loader)  # a SafeLoader


@pytest.mark.parametrize("text", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_same_document_as_the_loader(text: str) -> None:
    expected = reference(text)
    got = schedule_file._load_yaml(text)
    assert got == expected
    assert repr(got) == repr(expected)  # same types too (1 vs 1.0 vs True)


@pytest.mark.parametrize("text", BROKEN.values(), ids=BROKEN.keys())
def test_same_error_as_the_loader(text: str) -> None:
    with pytest.raises(yaml.YAMLError) as expected:
        reference(text)
    with pytest.raises(yaml.YAMLError) as got:
        schedule_file._load_yaml(text)
    assert type(got.value) is type(expected.value)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("anchor", ["", "&x "], ids=["fast path", "loader's path"])
def test_a_value_its_tag_cannot_read_is_one_line_not_a_traceback(anchor: str) -> None:
    # PyYAML lets a bare ValueError escape from ``!!int nope``.
    text = f"schedules:\n  - id: a\n    every: {anchor}!!int nope\n"
    with pytest.raises(ValueError, match="invalid literal"):
        reference(text)
    with pytest.raises(ScheduleFileError) as failed:
        parse_schedule_file(text, "f.yaml")
    [line] = failed.value.errors
    assert line.startswith("invalid YAML")
    assert "cannot read" in line
    assert "nope" in line
    if not anchor:
        assert line.startswith("invalid YAML at line 3, column 12: cannot read int 'nope'")


def test_the_fast_path_builds_common_documents_itself() -> None:
    # What a schedules file is made of never needs the loader's own (slow) path.
    for name in ("scalars", "block and flow", "multiline", "explicit tags", "duplicate keys"):
        loader = schedule_file._Loader(DOCUMENTS[name])
        try:
            schedule_file._load_direct(loader)
        finally:
            loader.dispose()
    for name in ("anchors and aliases", "merge keys", "collection tags", "value key"):
        loader = schedule_file._Loader(DOCUMENTS[name])
        try:
            with pytest.raises(schedule_file._Unusual):
                schedule_file._load_direct(loader)
        finally:
            loader.dispose()


def test_entries_are_handed_over_as_they_complete() -> None:
    text = (
        "notifications: {log: false}\n"
        "schedules:\n  - {id: a}\n  - [b]\n  - c\n"
        "other: [{id: not-an-entry}]\n"
        "nested: {schedules: [{id: not-either}]}\n"
    )
    seen: list[tuple[int, object]] = []

    def on_entry(index: int, item: object) -> object:
        seen.append((index, item))
        return ("checked", index)

    doc = schedule_file._load_yaml(text, on_entry)
    assert seen == [(0, {"id": "a"}), (1, ["b"]), (2, "c")]
    assert doc["schedules"] == [("checked", 0), ("checked", 1), ("checked", 2)]
    assert doc["other"] == [{"id": "not-an-entry"}]
    assert doc["nested"] == {"schedules": [{"id": "not-either"}]}


ENTRIES = """\
schedules:
  - id: ok
    every: 1m
    target: {url: "https://example.com/a"}
  - not a mapping
  - id: bad
    every: 10x
    target: {url: "https://example.com/b"}
  - id: ok
    every: 1m
    target: {url: "https://example.com/c"}
  - id: meta
    every: 1m
    target: {url: "http://169.254.169.254/"}
  - id: second
    cron: "0 2 * * *"
    target: {function: report}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ScheduleFileError) as failed:
        parse_schedule_file(text, "f.yaml")
    return failed.value.errors


def test_entries_validated_while_parsing_report_what_they_did() -> None:
    expected = [
        "schedules[1]: must be a mapping, got str",
        "schedules[2] (id=bad): every: invalid duration '10x'",
        "schedules[3] (id=ok): duplicate id 'ok' (first at schedules[0])",
        "schedules[4] (id=meta): target.url:",
    ]
    errors = errors_of(ENTRIES)
    assert len(errors) == len(expected)
    for line, start in zip(errors, expected, strict=True):
        assert line.startswith(start), (line, start)
    # The same file read by the loader's own path (an anchor sends it there) says the same.
    with_anchor = ENTRIES.replace("every: 10x", "every: &unit 10x")
    assert errors_of(with_anchor) == errors


GOOD = """\
notifications:
  sinks: {hook: {type: webhook, url: "https://example.com/events"}}
  rules: [{schedules: ["team=ops"], on: ["run.failed"], sink: hook}]
schedules:
  - id: ok
    every: 1m
    target: {url: "https://example.com/a"}
    labels: {team: ops}
  - id: second
    cron: "0 2 * * *"
    timezone: Europe/Berlin
    target: {function: report}
    params: {nested: {list: [1, 2.5, null, true]}}
"""


def test_the_same_schedules_either_way() -> None:
    fast = parse_schedule_file(GOOD)
    slow = parse_schedule_file(GOOD.replace("every: 1m", "every: &unit 1m"))
    assert fast == slow
    assert [s.id for s in fast.schedules] == ["ok", "second"]
    assert [r.sink_name for r in fast.schedules[0].notify] == ["log", "hook"]
    assert [r.sink_name for r in fast.schedules[1].notify] == ["log"]


def test_the_collector_is_back_on_afterwards() -> None:
    assert gc.isenabled()
    parse_schedule_file(GOOD)
    assert gc.isenabled()
    with pytest.raises(ScheduleFileError):
        parse_schedule_file("a: [1, 2\n")
    assert gc.isenabled()
