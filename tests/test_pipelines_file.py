"""The ``pipelines:`` section of a schedules file, ``then:`` chains and their refusals.

Each refusal is checked through the real ``firecron validate`` (a subprocess): exit 2 and
exactly the expected line. Valid files are checked for the snapshots the parser fills
(``pipeline_spec``, a notify's ``sink_config``) and for the warning about a pipeline no
schedule targets, which ``validate`` and ``apply`` print and still exit 0.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from _cli import run_cli
from firecron.core.events import LogSink, WebhookSink
from firecron.core.models import TaskRule
from firecron.core.pipeline_checks import cycles
from firecron.core.schedule_file import ScheduleFileError, parse_schedule_file

SINKS = """
notifications:
  sinks:
    ops: {type: log}
    chat: {type: webhook, url: "https://hooks.example.com/x", format: slack}
"""

ETL = """
pipelines:
  - id: etl
    params: {region: eu}
    max_parallel: 2
    timeout: 1h
    tasks:
      - {id: extract-a, target: {function: extract}, params: {source: a}}
      - {id: extract-b, target: {function: extract}, params: {source: b}}
      - id: join
        target: {function: join}
        after: [extract-a, extract-b]
      - id: load
        target: {url: "https://load.example.com/run", worker: true}
        after: [join]
        if: 'params.region == "eu" && tasks["join"].output.rows > 0'
        retry: {max_attempts: 2}
        timeout: 10m
      - id: alert
        notify: {sink: chat, text: "etl failed: {pipeline_run_id}"}
        after: [load]
        when: any_failed
"""

SCHEDULES = """
schedules:
  - id: nightly
    cron: "0 2 * * *"
    target: {pipeline: etl}
    params: {region: eu}
    then: [{schedule: report, on: done, params: {full: true}}]
  - id: report
    target: {function: report}
"""


def _doc(*parts: str) -> str:
    return "".join(parts)


def _validate(tmp_path: Path, text: str) -> tuple[int, list[str], list[str]]:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    proc = run_cli("validate", str(path), cwd=tmp_path)
    prefix = f"{path}: "
    return (
        proc.returncode,
        proc.stdout.splitlines(),
        [line.removeprefix(prefix) for line in proc.stderr.splitlines()],
    )


def _pipeline(tasks: str, pipeline_id: str = "p", extra: str = "") -> str:
    """A file with one pipeline of ``tasks`` (YAML flow items, one per line) and one
    schedule that targets it."""
    items = "".join(f"      - {line}\n" for line in textwrap.dedent(tasks).strip().splitlines())
    return (
        f"{SINKS}pipelines:\n  - id: {pipeline_id}\n{extra}    tasks:\n{items}"
        f"schedules:\n  - id: s\n    target: {{pipeline: {pipeline_id}}}\n"
    )


F = "{function: f}"
P = "pipelines[0] (id=p)"

REFUSALS: list[tuple[str, str | list[str]]] = [
    (
        _pipeline(f"{{id: a, target: {F}}}\n{{id: b, target: {F}}}\n{{id: a, target: {F}}}"),
        f"{P}.tasks[2] (id=a): duplicate task id 'a' (first at tasks[0])",
    ),
    (
        _pipeline(f"{{id: a, target: {F}}}\n{{id: b, target: {F}, after: [a, nope]}}"),
        f"{P}.tasks[1] (id=b): after: unknown task 'nope'",
    ),
    (
        _pipeline(
            f"{{id: a, target: {F}}}\n{{id: b, target: {F}, after: [a, d]}}\n"
            f"{{id: c, target: {F}, after: [b]}}\n{{id: d, target: {F}, after: [c]}}"
        ),
        f"{P}: tasks form a cycle: b -> c -> d -> b",
    ),
    (
        _pipeline(f"{{id: a, target: {F}, after: [a]}}"),
        f"{P}: tasks form a cycle: a -> a",
    ),
    (
        _pipeline(f"{{id: a, target: {F}}}\n{{id: b, params: {{x: 1}}}}"),
        f"{P}.tasks[1] (id=b): set exactly one of 'target', 'notify' or 'wait'",
    ),
    (
        _pipeline(f"{{id: a, target: {F}, notify: {{sink: ops, text: hi}}}}"),
        f"{P}.tasks[0] (id=a): set exactly one of 'target', 'notify' or 'wait'",
    ),
    (
        _pipeline("{id: a, target: {pipeline: q}}"),
        f"{P}.tasks[0] (id=a): a task's target is a 'url' or a 'function' "
        "(use 'notify:' to notify)",
    ),
    (
        _pipeline("{id: a, notify: {sink: pager, text: hi}}"),
        f"{P}.tasks[0] (id=a): notify.sink: unknown sink 'pager'",
    ),
    (
        _pipeline(f"{{id: a, target: {F}}}\n{{id: b, target: {F}, after: [a], if: 'params.x =='}}"),
        f"{P}.tasks[1] (id=b): if: syntax error at column 12: unexpected end of expression",
    ),
    (
        _pipeline(f"{{id: a, target: {F}, if: 'param.x == 1'}}"),
        f"{P}.tasks[0] (id=a): if: unknown variable 'param' (the variables are params and tasks)",
    ),
    (
        _pipeline(
            f"{{id: a, target: {F}}}\n{{id: b, target: {F}}}\n"
            f'{{id: c, target: {F}, after: [b], if: \'tasks["a"].state == "succeeded"\'}}'
        ),
        f"{P}.tasks[2] (id=c): if: names task 'a', which is not in its 'after' "
        "('tasks' holds its upstream tasks only)",
    ),
    (
        _pipeline('{id: a, target: {url: "https://169.254.169.254/computeMetadata/v1/"}}'),
        f"{P}.tasks[0] (id=a): target.url: https://169.254.169.254/computeMetadata/v1/ is "
        "always refused by the SSRF guard: 169.254.169.254 is link-local (metadata server range)",
    ),
    (
        _pipeline(f"{{id: a, target: {F}, when: any_failed}}"),
        f"{P}.tasks[0] (id=a): when: any_failed never holds for a task without 'after' "
        "(it starts with the pipeline: no upstream task can fail)",
    ),
    (
        _pipeline(f"{{id: a, target: {F}, when: sometimes}}"),
        f"{P}.tasks[0] (id=a): when: Input should be 'all_succeeded', 'none_failed', "
        "'any_failed' or 'all_done' (got 'sometimes')",
    ),
    (
        _pipeline(f"{{id: a, target: {F}, colour: red}}"),
        f"{P}.tasks[0] (id=a): unknown key 'colour'",
    ),
    (
        _pipeline(f"{{id: a, target: {F}}}", extra="    max_parallel: 0\n"),
        f"{P}: max_parallel: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        _pipeline(f"{{id: a, target: {F}}}", pipeline_id="Bad"),
        [
            "pipelines[0] (id=Bad): id: String should match pattern "
            "'^[a-z0-9][a-z0-9_-]{0,62}$' (got 'Bad')",
            "schedules[0] (id=s): target: invalid pipeline id 'Bad'",
        ],
    ),
    (
        _doc(SINKS, "pipelines: {etl: {}}\n"),
        "'pipelines' must be a list",
    ),
    (
        _doc(SINKS, "pipelines: [etl]\n"),
        "pipelines[0]: must be a mapping, got str",
    ),
    (
        _doc(SINKS, ETL, ETL.replace("pipelines:\n", ""), SCHEDULES),
        "pipelines[1] (id=etl): duplicate id 'etl' (first at pipelines[0])",
    ),
    (
        _doc(SINKS, ETL, SCHEDULES, "  - {id: other, every: 1h, target: {pipeline: elt}}\n"),
        "schedules[2] (id=other): target.pipeline: unknown pipeline 'elt'",
    ),
    (
        _doc(SINKS, ETL, SCHEDULES.replace("schedule: report", "schedule: reprot")),
        "schedules[0] (id=nightly): then[0].schedule: unknown schedule 'reprot'",
    ),
    (
        _doc(
            SINKS,
            ETL,
            SCHEDULES,
            "    then: [{schedule: cleanup}]\n",
            "  - {id: cleanup, target: {function: c}, then: [{schedule: nightly, on: failed}]}\n",
        ),
        "schedules[0] (id=nightly): then: the chain is a cycle: nightly -> report -> cleanup "
        "-> nightly",
    ),
    (
        _doc(
            SINKS, "schedules:\n  - {id: loop, target: {function: f}, then: [{schedule: loop}]}\n"
        ),
        "schedules[0] (id=loop): then: the chain is a cycle: loop -> loop",
    ),
    (
        _doc(SINKS, "schedules:\n  - {id: m, every: 1h, target: {notify: {sink: sms, text: x}}}\n"),
        "schedules[0] (id=m): target.notify.sink: unknown sink 'sms'",
    ),
    (
        _doc(SINKS, ETL, SCHEDULES, "    then: [{schedule: nightly, on: sometimes}]\n"),
        "schedules[1] (id=report): then[0].on: Input should be 'succeeded', 'failed' or 'done' "
        "(got 'sometimes')",
    ),
]


@pytest.mark.parametrize(("text", "line"), REFUSALS)
def test_validate_refuses_with_exactly_one_line_and_exit_2(
    text: str, line: str | list[str], tmp_path: Path
) -> None:
    code, out, err = _validate(tmp_path, text)
    assert (code, out) == (2, [])
    assert err == ([line] if isinstance(line, str) else line)


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    text = _pipeline(
        f"{{id: a, target: {F}, after: [zz]}}\n{{id: b}}\n"
        f"{{id: c, target: {F}, after: [b, a], if: 'tasks.zz.state == 1'}}\n"
        '{id: d, notify: {sink: nope, text: "x"}, after: [c, e]}\n'
        f"{{id: e, target: {F}, after: [d]}}"
    ).replace("target: {pipeline: p}", "target: {pipeline: p}\n    then: [{schedule: t}]")
    with pytest.raises(ScheduleFileError) as info:
        parse_schedule_file(text, "s.yaml")
    assert info.value.errors == [
        f"{P}.tasks[1] (id=b): set exactly one of 'target', 'notify' or 'wait'",
        # The tasks the model accepted are still judged; 'b' counts as a task.
        f"{P}.tasks[0] (id=a): after: unknown task 'zz'",
        f"{P}.tasks[2] (id=c): if: names task 'zz', which is not in its 'after' "
        "('tasks' holds its upstream tasks only)",
        f"{P}.tasks[3] (id=d): notify.sink: unknown sink 'nope'",
        f"{P}: tasks form a cycle: d -> e -> d",
        "schedules[0] (id=s): then[0].schedule: unknown schedule 't'",
    ]


def test_names_of_invalid_entries_are_not_reported_as_unknown_too() -> None:
    text = _doc(
        SINKS,
        "pipelines:\n  - {id: p, tasks: [{id: a}]}\n",
        "schedules:\n",
        "  - {id: s, target: {pipeline: p}, then: [{schedule: broken}]}\n",
        "  - {id: broken, every: 10, target: {function: f}}\n",
    )
    with pytest.raises(ScheduleFileError) as info:
        parse_schedule_file(text, "s.yaml")
    assert info.value.errors == [
        "pipelines[0] (id=p).tasks[0] (id=a): set exactly one of 'target', 'notify' or 'wait'",
        "schedules[1] (id=broken): every: invalid duration 10: a bare number has no unit; "
        "write 10s (or 10m, 10h, 10d)",
    ]


def test_a_valid_file_fills_the_snapshots() -> None:
    doc = parse_schedule_file(
        _doc(SINKS, ETL, SCHEDULES, "  - {id: say, target: {notify: {sink: ops, text: hi}}}\n"),
        "s.yaml",
        allow_private_targets=False,
    )
    assert doc.warnings == []
    [etl] = doc.pipelines
    assert [t.id for t in etl.tasks] == ["extract-a", "extract-b", "join", "load", "alert"]
    assert (etl.max_parallel, etl.params) == (2, {"region": "eu"})
    load = etl.task("load")
    assert load.if_ == 'params.region == "eu" && tasks["join"].output.rows > 0'
    assert load.retry.max_attempts == 2
    alert = etl.task("alert")
    assert alert.when is TaskRule.any_failed
    assert alert.notify is not None
    assert alert.notify.sink_config == WebhookSink(
        type="webhook", url="https://hooks.example.com/x", format="slack"
    )
    assert alert.run_target.notify == alert.notify

    nightly, report, say = doc.schedules
    assert nightly.pipeline_spec == etl
    assert [(s.schedule, s.on.value, s.params) for s in nightly.then] == [
        ("report", "done", {"full": True})
    ]
    assert report.on_demand
    assert report.pipeline_spec is None
    assert say.target.notify is not None
    assert say.target.notify.sink_config == LogSink(type="log")


def test_a_pipeline_snapshot_written_by_hand_is_replaced() -> None:
    """``pipeline_spec`` comes from ``pipelines:`` only, whatever an entry says."""
    stray = "    pipeline_spec: {id: fake, tasks: [{id: x, target: {function: f}}]}\n"
    doc = parse_schedule_file(_doc(SINKS, ETL, SCHEDULES, stray), "s.yaml")
    assert doc.schedules[0].pipeline_spec == doc.pipelines[0]
    assert doc.schedules[1].pipeline_spec is None


def test_a_pipeline_no_schedule_targets_is_a_warning(tmp_path: Path) -> None:
    text = _doc(
        SINKS,
        ETL,
        "  - {id: spare, tasks: [{id: a, target: {function: f}}]}\n",
        SCHEDULES,
    )
    code, out, err = _validate(tmp_path, text)
    assert (code, err) == (0, ["warning: pipelines[1] (id=spare): no schedule targets it"])
    assert out == [f"ok: {tmp_path / 's.yaml'}: 2 schedules"]

    store = f"sqlite:///{tmp_path / 'firecron.db'}"
    proc = run_cli("apply", str(tmp_path / "s.yaml"), "--store", store, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["warning: pipelines[1] (id=spare): no schedule targets it"]
    assert json.loads(proc.stdout)["created"] == ["nightly", "report"]


def test_the_example_shapes_validate_cleanly(tmp_path: Path) -> None:
    code, out, err = _validate(tmp_path, _doc(SINKS, ETL, SCHEDULES))
    assert (code, err) == (0, [])
    assert out == [f"ok: {tmp_path / 's.yaml'}: 2 schedules"]


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": ["b"], "b": []}, []),
        ({"a": ["a"]}, [["a", "a"]]),
        ({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["d"]}, [["a", "b", "c", "a"], ["d", "d"]]),
        # Two cycles through one group: one line, the shortest from its first node.
        ({"a": ["b", "c"], "b": ["c"], "c": ["a"]}, [["a", "c", "a"]]),
        ({"x": ["y"], "y": ["outside"]}, []),
    ],
)
def test_cycles(edges: dict[str, list[str]], expected: list[list[str]]) -> None:
    assert cycles(list(edges), edges) == expected


def test_a_long_chain_has_no_cycle_and_does_not_recurse() -> None:
    nodes = [f"t{i}" for i in range(5000)]
    edges = {node: [nodes[i + 1]] if i + 1 < len(nodes) else [] for i, node in enumerate(nodes)}
    assert cycles(nodes, edges) == []
    edges[nodes[-1]] = [nodes[0]]
    [cycle] = cycles(nodes, edges)
    assert (len(cycle), cycle[0], cycle[-1]) == (5001, "t0", "t0")


def test_the_size_bound_counts_the_pipeline_snapshot(tmp_path: Path) -> None:
    """Each schedule carries its pipeline: a big one shared by many fits as long as each
    encoded schedule stays within 256 KiB; past that, validate names the pipeline."""
    blob = "x" * 1000

    def file(tasks: int, schedules: int) -> str:
        items = "\n".join(
            f"{{id: t{i}, target: {F}, params: {{blob: {blob}}}}}" for i in range(tasks)
        )
        text = _pipeline(items)
        return text + "".join(
            f"  - {{id: s{i}, target: {{pipeline: p}}}}\n" for i in range(schedules)
        )

    code, out, err = _validate(tmp_path, file(tasks=150, schedules=40))
    assert (code, err) == (0, [])
    assert out == [f"ok: {tmp_path / 's.yaml'}: 41 schedules"]

    code, out, err = _validate(tmp_path, file(tasks=300, schedules=1))
    assert (code, out, len(err)) == (2, [], 2)
    for index, schedule_id in enumerate(["s", "s0"]):
        assert err[index].startswith(f"schedules[{index}] (id={schedule_id}): the schedule is ")
        assert err[index].endswith(
            "bytes once encoded; at most 262,144 (shorten params, description or the pipeline)"
        )


def test_a_huge_offending_value_is_quoted_short() -> None:
    """A 10,000-character value in an error is cut, so the error stays one readable line."""
    from firecron.core.schedule_file import ScheduleFileError, parse_schedule_file

    text = (
        "pipelines:\n  - id: p\n    tasks:\n"
        f"      - {{id: a, target: {{url: 'https://e.com'}}, if: '{'x' * 10_000}'}}\n"
        "schedules: [{id: s, every: 1h, target: {pipeline: p}}]\n"
    )
    with pytest.raises(ScheduleFileError) as info:
        parse_schedule_file(text, "f.yaml")
    [line] = info.value.errors
    assert line.startswith("pipelines[0] (id=p).tasks[0] (id=a): if: String should have at most")
    assert line.endswith("...' (10,000 characters))")
    assert len(line) < 250
