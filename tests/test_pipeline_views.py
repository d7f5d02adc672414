"""The pipeline graph as text and as Mermaid (firecron.core.pipeline_graph). Pure."""

from __future__ import annotations

import re
from typing import Any

import pytest

from firecron.core.models import PipelineSpec
from firecron.core.pipeline_graph import (
    depths,
    mermaid_escape,
    render_mermaid,
    render_text,
    topological_order,
)


def _spec(tasks: list[dict[str, Any]], **fields: Any) -> PipelineSpec:
    return PipelineSpec.model_validate({"id": "etl", "tasks": tasks, **fields})


def _fn(task_id: str, *after: str, **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "target": {"function": task_id}, "after": list(after), **fields}


# The README's example: two parallel extracts, a join, a conditional load, an error path.
ETL = _spec(
    [
        # Listed out of order on purpose: the views sort topologically.
        _fn("load", "join", **{"if": 'params.mode == "full" && tasks.join.output.rows > 0'}),
        _fn("join", "extract_a", "extract_b"),
        _fn("extract_a"),
        _fn("extract_b"),
        {
            "id": "alert",
            "notify": {"sink": "ops", "text": "etl failed"},
            "after": ["load"],
            "when": "any_failed",
        },
    ],
    description="Nightly ETL",
    max_parallel=2,
    timeout="1h",
)


def test_topological_order_keeps_file_order_among_ready_tasks() -> None:
    assert topological_order(ETL) == ["extract_a", "extract_b", "join", "load", "alert"]
    assert depths(ETL) == {"extract_a": 0, "extract_b": 0, "join": 1, "load": 2, "alert": 3}


def test_depth_is_the_longest_path() -> None:
    spec = _spec([_fn("a"), _fn("b", "a"), _fn("c", "a", "b")])
    assert depths(spec) == {"a": 0, "b": 1, "c": 2}


def test_a_cycle_or_an_unknown_after_still_draws() -> None:
    # validate refuses both; the views must not hang or fail on a stored snapshot.
    spec = _spec([_fn("a", "c"), _fn("b"), _fn("c", "a", "ghost")])
    assert topological_order(spec) == ["b", "a", "c"]
    assert set(depths(spec)) == {"a", "b", "c"}
    assert "ghost" not in render_mermaid(spec)
    assert "ghost" not in render_text(spec)


def test_render_text() -> None:
    assert render_text(ETL) == (
        "etl: 5 tasks, max_parallel 2, timeout 1h\n"
        "description: Nightly ETL\n"
        "  extract_a    function:extract_a\n"
        "  extract_b    function:extract_b\n"
        "    join       function:join       <- extract_a, extract_b\n"
        "      load     function:load       <- join"
        '  if: params.mode == "full" && tasks.join.output.rows > 0\n'
        "        alert  notify:ops          <- load  when: any_failed\n"
    )


def test_render_text_shows_a_root_condition_and_every_rule_but_the_default() -> None:
    spec = _spec(
        [
            _fn("a", **{"if": "params.go\n  && true"}),
            _fn("b", "a", when="none_failed"),
            _fn("c", "a", when="all_done"),
            _fn("d", "b", "c"),
        ]
    )
    lines = render_text(spec).splitlines()
    assert lines[0] == "etl: 4 tasks"
    assert lines[1].split() == ["a", "function:a", "if:", "params.go", "&&", "true"]
    assert lines[2].endswith("<- a  when: none_failed")
    assert lines[3].endswith("<- a  when: all_done")
    assert lines[4].endswith("<- b, c")


# -- Mermaid -------------------------------------------------------------------------

_NODE = re.compile(r'^    (t\d+)(\["|\(\[")(.*)("\]|"\]\))$')
_EDGE = re.compile(r'^    (t\d+) -->(?:\|"([^"]*)"\|)? (t\d+)$')


def _parse(chart: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str, str | None]]]:
    """Nodes (name -> (shape, label)) and edges (from, to, label) of a chart this module
    drew; any other line fails the test."""
    lines = chart.splitlines()
    assert lines[0] == "flowchart TD"
    assert chart.endswith("\n")
    nodes: dict[str, tuple[str, str]] = {}
    edges: list[tuple[str, str, str | None]] = []
    for line in lines[1:]:
        if node := _NODE.match(line):
            name, opening, label, closing = node.groups()
            assert name not in nodes
            assert {'["': '"]', '(["': '"])'}[opening] == closing
            # A quote inside a label would end it: every one must be escaped.
            assert '"' not in label
            nodes[name] = ("stadium" if opening == '(["' else "box", label)
        elif edge := _EDGE.match(line):
            edges.append((edge.group(1), edge.group(3), edge.group(2)))
        else:
            pytest.fail(f"unexpected line {line!r}")
    return nodes, edges


def test_render_mermaid_structure() -> None:
    nodes, edges = _parse(render_mermaid(ETL))
    by_task = {label.split("<br/>")[0]: name for name, (_, label) in nodes.items()}
    assert list(by_task) == ["extract_a", "extract_b", "join", "load", "alert"]
    assert nodes[by_task["join"]] == ("box", "join<br/>function:join")
    assert nodes[by_task["alert"]] == ("stadium", "alert<br/>notify:ops")
    named = {(_task_of(nodes, a), _task_of(nodes, b)): label for a, b, label in edges}
    assert named == {
        ("extract_a", "join"): None,
        ("extract_b", "join"): None,
        (
            "join",
            "load",
        ): "if: params.mode == #quot;full#quot; #amp;#amp; tasks.join.output.rows #gt; 0",
        ("load", "alert"): "when: any_failed",
    }


def _task_of(nodes: dict[str, tuple[str, str]], name: str) -> str:
    return nodes[name][1].split("<br/>")[0]


def test_render_mermaid_node_names_never_are_task_ids() -> None:
    # `end` and `graph` are Mermaid keywords: a node named after them breaks the chart.
    spec = _spec([_fn("end"), _fn("graph", "end")])
    nodes, edges = _parse(render_mermaid(spec))
    assert set(nodes) == {"t1", "t2"}
    assert edges == [("t1", "t2", None)]


def test_render_mermaid_condition_on_every_edge_in_and_on_a_root() -> None:
    spec = _spec(
        [
            _fn("a", **{"if": "params.x"}),
            _fn("b"),
            _fn("c", "a", "b", when="none_failed", **{"if": "tasks.a.state == 'succeeded'"}),
        ]
    )
    nodes, edges = _parse(render_mermaid(spec))
    assert nodes["t1"] == ("box", "a<br/>function:a<br/>if: params.x")
    label = "when: none_failed, if: tasks.a.state == 'succeeded'"
    assert edges == [("t1", "t3", label), ("t2", "t3", label)]
    # A task with upstream tasks keeps its condition on the edges only.
    assert nodes["t3"] == ("box", "c<br/>function:c")


def test_render_mermaid_escapes_hostile_labels() -> None:
    url = 'https://h.example/x?a="b"&c=<d>|[e]#f`g`'
    spec = _spec(
        [
            {"id": "a", "target": {"url": url}},
            _fn("b", "a", **{"if": 'params.s == "x\\"]|-->"'}),
        ]
    )
    nodes, edges = _parse(render_mermaid(spec))
    assert nodes["t1"][1] == (
        "a<br/>https://h.example/x?a=#quot;b#quot;#amp;c=#lt;d#gt;#124;#91;e#93;#35;f#96;g#96;"
    )
    [(_, _, label)] = edges
    assert label is not None
    assert "|" not in label
    assert '"' not in label
    assert "]" not in label


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain text (ok) {x}", "plain text (ok) {x}"),
        ("#35;", "#35;35;"),  # the code of a # is itself escaped, so it shows literally
        ("a\nb\t c", "a b c"),
        ("<br/>", "#lt;br/#gt;"),
    ],
)
def test_mermaid_escape(raw: str, escaped: str) -> None:
    assert mermaid_escape(raw) == escaped
