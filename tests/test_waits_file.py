"""Waits in a schedules file: a schedule's ``wait:`` gate, a ``wait`` target, a pipeline's
``wait`` task; what ``validate`` and ``apply`` refuse (exit 2, one line each naming the
entry and the field) and what they accept.

Each refusal goes through the real ``firecron validate`` (a subprocess); the parser's
models are checked directly for what a valid file fills in.
"""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from _cli import run_cli
from firecron.core.schedule_file import ScheduleFileError, parse_schedule_file


def _validate(tmp_path: Path, text: str) -> tuple[int, list[str], list[str]]:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    proc = run_cli("validate", str(path), cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    prefix = f"{path}: "
    return (
        proc.returncode,
        proc.stdout.splitlines(),
        [line.removeprefix(prefix) for line in proc.stderr.splitlines()],
    )


def schedule(wait: str, *, params: str = "{cust: acme}", target: str = "{function: load}") -> str:
    """One gated schedule; ``wait`` is the flow mapping of its ``wait:``."""
    return (
        "schedules:\n"
        "  - id: load\n"
        '    cron: "0 2 * * *"\n'
        f"    params: {params}\n"
        f"    wait: {wait}\n"
        f"    target: {target}\n"
    )


def wait_target(wait: str) -> str:
    return f'schedules:\n  - id: mark\n    cron: "0 2 * * *"\n    target: {{wait: {wait}}}\n'


def pipeline(task_wait: str, *, schedules: str | None = None, params: str = "{region: eu}") -> str:
    """A pipeline ``etl`` whose task ``ready`` waits (``task_wait``) before ``load``."""
    text = textwrap.dedent(
        f"""\
        pipelines:
          - id: etl
            params: {params}
            tasks:
              - {{id: ready, wait: {task_wait}}}
              - {{id: load, target: {{function: load}}, after: [ready]}}
        """
    )
    if schedules is None:
        schedules = "  - {id: nightly, cron: '0 2 * * *', target: {pipeline: etl}}\n"
    return text + "schedules:\n" + schedules


S = "schedules[0] (id=load)"
T = "pipelines[0] (id=etl).tasks[0] (id=ready)"

REFUSALS: list[tuple[str, str | list[str]]] = [
    # The gate's key template: its syntax, its params.
    (
        schedule('{key: "exports/{date"}'),
        f"{S}: wait.key: key 'exports/{{date': braces must enclose a param name, "
        "{date} or {scheduled_for}",
    ),
    (
        schedule('{key: "exports/{date}/{region}"}'),
        f"{S}: wait.key: key 'exports/{{date}}/{{region}}': no param 'region' "
        "(nor date or scheduled_for)",
    ),
    (
        schedule('{key: "exports /{cust}"}'),
        f"{S}: wait.key: key 'exports /{{cust}}' holds ' ': keys are letters, digits and / _ . : -",
    ),
    # Its condition: CEL over value only.
    (
        schedule('{key: "exports/{cust}", until: "params.cust == 1"}'),
        f"{S}: wait.until: unknown variable 'params' (the only variable is value)",
    ),
    (
        schedule('{key: "exports/{cust}", until: "value =="}'),
        f"{S}: wait.until: syntax error at column 9: unexpected end of expression",
    ),
    # every longer than timeout.
    (
        schedule('{key: "exports/{cust}", every: 2h, timeout: 1h}'),
        f"{S}: wait.every: 2h is longer than timeout 1h: the wait would time out before it "
        "looks again",
    ),
    (
        schedule('{key: "exports/{cust}", every: 7h}'),
        f"{S}: wait.every: 7h is longer than timeout 6h: the wait would time out before it "
        "looks again",
    ),
    # The model's own rules.
    (schedule('{key: "k", every: 0s}'), f"{S}: wait.every: every must be at least 1s"),
    (schedule("{until: value}"), f"{S}: wait.key: required"),
    (schedule('{key: "k", colour: red}'), f"{S}: wait: unknown key 'colour'"),
    # A gate and a wait target: the run would wait twice.
    (
        schedule('{key: "a/{cust}"}', target='{wait: {key: "b"}}'),
        f"{S}: wait: the target is a wait already, so the run would wait twice: drop the "
        "'wait:' gate (or give the gate a target to fire)",
    ),
    # A wait target is judged like a gate.
    (
        wait_target('{key: "marks/{day}", until: "tasks.x"}'),
        [
            "schedules[0] (id=mark): target.wait.key: key 'marks/{day}': no param 'day' "
            "(nor date or scheduled_for)",
            "schedules[0] (id=mark): target.wait.until: unknown variable 'tasks' "
            "(the only variable is value)",
        ],
    ),
    # A pipeline's wait task: syntax, condition and every, in the task's line...
    (
        pipeline('{key: "orders/{date", until: "value >", every: 1d}'),
        [
            f"{T}: wait.key: key 'orders/{{date': braces must enclose a param name, "
            "{date} or {scheduled_for}",
            f"{T}: wait.until: syntax error at column 8: unexpected end of expression",
            f"{T}: wait.every: 1d is longer than timeout 6h: the wait would time out before "
            "it looks again",
        ],
    ),
    # ... and its params: the pipeline's, the schedule's and the task's, per schedule.
    (
        pipeline(
            '{key: "orders/{date}/{region}/{shard}"}',
            schedules=(
                "  - {id: a, cron: '0 2 * * *', target: {pipeline: etl}}\n"
                "  - {id: b, cron: '0 3 * * *', target: {pipeline: etl}, params: {shard: 1}}\n"
                "  - {id: c, cron: '0 4 * * *', target: {pipeline: etl}}\n"
            ),
        ),
        f"{T}: wait.key: key 'orders/{{date}}/{{region}}/{{shard}}': no param 'shard' "
        "(nor date or scheduled_for) in the runs of schedules 'a', 'c'",
    ),
    (
        pipeline('{key: "orders/{tenant}"}', params="{}"),
        f"{T}: wait.key: key 'orders/{{tenant}}': no param 'tenant' (nor date or "
        "scheduled_for) in the runs of schedule 'nightly'",
    ),
    # A task is exactly one of target, notify or wait.
    (
        pipeline('{key: "k"}, target: {function: f}'),
        f"{T}: set exactly one of 'target', 'notify' or 'wait'",
    ),
    # A gate on a schedule that runs a pipeline: the pipeline's params count.
    (
        pipeline(
            '{key: "k"}',
            schedules=(
                "  - {id: nightly, cron: '0 2 * * *', target: {pipeline: etl},"
                " wait: {key: 'exports/{region}/{tenant}'}}\n"
            ),
        ),
        "schedules[0] (id=nightly): wait.key: key 'exports/{region}/{tenant}': "
        "no param 'tenant' (nor date or scheduled_for)",
    ),
]


@pytest.mark.parametrize(("text", "lines"), REFUSALS)
def test_validate_refuses_with_one_line_each_and_exit_2(
    tmp_path: Path, text: str, lines: str | list[str]
) -> None:
    code, out, err = _validate(tmp_path, text)
    assert (code, out) == (2, [])
    assert err == ([lines] if isinstance(lines, str) else lines)


def test_apply_refuses_the_same_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(schedule('{key: "exports/{cust}", every: 2h, timeout: 1h}'))
    store = tmp_path / "firecron.db"
    proc = run_cli("apply", str(path), "--store", f"sqlite:///{store}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"{path}: {S}: wait.every: 2h is longer than timeout 1h: the wait would time out "
        "before it looks again"
    ]
    assert proc.stdout == ""


VALID = textwrap.dedent(
    """\
        pipelines:
          - id: etl
            params: {region: eu}
            tasks:
              - id: ready
                wait: {key: "orders/{date}/{region}/{tenant}", until: "value != null && value.rows > 0",
                       every: 1m, timeout: 3h}
                params: {tenant: acme}
              - {id: load, target: {function: load}, after: [ready]}
              - {id: late, notify: {sink: ops, text: "no orders"}, after: [ready],
                 when: any_failed}
        notifications:
          sinks:
            ops: {type: log}
        schedules:
          - id: nightly
            cron: "0 2 * * *"
            timezone: Europe/Berlin
            target: {pipeline: etl}
            wait: {key: "exports/{region}/{scheduled_for}", every: 6h}
          - id: gated
            cron: "0 3 * * *"
            params: {cust: acme}
            wait: {key: "exports/{date}/{cust}"}
            target: {url: "https://example.com/hook"}
          - id: mark
            every: 1h
            target: {wait: {key: "marks/{date}", until: "value == true", every: 30s, timeout: 30s}}
        """
)


def test_valid_waits_are_accepted_with_their_defaults(tmp_path: Path) -> None:
    code, out, err = _validate(tmp_path, VALID)
    assert (code, err) == (0, [])
    assert out == [f"ok: {tmp_path / 's.yaml'}: 3 schedules"]
    doc = parse_schedule_file(VALID)
    nightly, gated, mark = doc.schedules
    assert nightly.wait is not None
    assert nightly.wait.timeout == timedelta(hours=6)
    assert gated.wait is not None
    assert (gated.wait.until, gated.wait.every) == ("value != null", timedelta(seconds=30))
    assert mark.target.wait is not None
    assert mark.target.wait.until == "value == true"
    ready = doc.pipelines[0].task("ready")
    assert ready.wait is not None
    assert ready.wait.every == timedelta(minutes=1)


def test_a_pipeline_no_schedule_targets_has_its_templates_syntax_checked_only() -> None:
    # {tenant} is no param of the pipeline or the task, but no schedule runs it yet.
    unused = pipeline('{key: "orders/{tenant}"}', params="{}", schedules="")
    assert parse_schedule_file(unused).warnings == ["pipelines[0] (id=etl): no schedule targets it"]
    with pytest.raises(ScheduleFileError) as caught:
        parse_schedule_file(pipeline('{key: "orders/{tenant"}', params="{}", schedules=""))
    assert caught.value.errors == [
        f"{T}: wait.key: key 'orders/{{tenant': braces must enclose a param name, "
        "{date} or {scheduled_for}"
    ]


def test_an_until_that_errs_on_a_missing_key_is_a_warning(tmp_path: Path) -> None:
    text = (
        pipeline('{key: "orders/{date}", until: "value.rows > 0"}')
        + "  - id: gate\n    params: {cust: acme}\n"
        + "    wait: {key: 'e/{cust}', until: 'value.ready'}\n    target: {function: f}\n"
        + "  - {id: guarded, wait: {key: e, until: 'value != null && value.ready'},"
        + " target: {function: f}}\n"
    )
    code, out, err = _validate(tmp_path, text)
    assert (code, out) == (0, [f"ok: {tmp_path / 's.yaml'}: 3 schedules"])
    overload = "No such overload: the operation is not defined for the given operand types"
    assert err == [
        "warning: schedules[1] (id=gate): wait: until 'value.ready' fails the wait while the "
        f"key is missing (value is null: {overload}); test for null first, as in "
        "'value != null && ...'",
        f"warning: {T}: wait: until 'value.rows > 0' fails the wait while the key is missing "
        f"(value is null: {overload}); test for null first, as in 'value != null && ...'",
    ]
