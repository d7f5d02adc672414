"""CEL conditions (firecron.core.conditions): compile, evaluate, and one-line errors.

These also pin the behaviour of the CEL library that firecron relies on (it is 0.x:
a new minor may change it), such as numbers compared across int and double.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firecron.core.conditions import (
    TASK_VARIABLES,
    ConditionError,
    compile_condition,
    referenced_tasks,
)
from firecron.core.models import JsonValue

TYPICAL = 'params.region == "eu" && tasks["extract"].output.rows > 0'


def _vars(
    region: str = "eu", rows: JsonValue = 12, state: str = "succeeded"
) -> dict[str, JsonValue]:
    return {
        "params": {"region": region, "n": 3},
        "tasks": {"extract": {"state": state, "output": {"rows": rows, "tags": ["a", "b"]}}},
    }


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (_vars(), True),
        (_vars(region="us"), False),
        (_vars(rows=0), False),
        # JSON does not tell 12 from 12.0: both must compare with an int literal.
        (_vars(rows=12.0), True),
        (_vars(rows=0.0), False),
    ],
)
def test_the_typical_condition(variables: dict[str, JsonValue], expected: bool) -> None:
    assert compile_condition(TYPICAL).evaluate(variables) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('params["region"] == "eu"', True),
        ("params.n == 3.0", True),
        ("params.n > 2.5", True),
        ('tasks.extract.state == "succeeded"', True),
        ("has(params.region)", True),
        ("has(params.missing)", False),
        ('"extract" in tasks', True),
        ('"c" in tasks["extract"].output.tags', False),
        ("size(tasks) == 1", True),
        ('tasks.exists(t, tasks[t].state == "failed")', False),
        ('tasks.all(t, tasks[t].state == "succeeded")', True),
        ("tasks.extract.output.tags.map(x, x + x) == ['aa', 'bb']", True),
        ('params.region.startsWith("e") && params.region.matches("^[a-z]+$")', True),
        ("type(params.n) == int", True),
        ("!(params.n < 3) ? true : false", True),
    ],
)
def test_maps_fields_and_macros(text: str, expected: bool) -> None:
    assert compile_condition(text).evaluate(_vars()) is expected


def test_null_outputs_and_values() -> None:
    condition = compile_condition("tasks.extract.output == null")
    assert condition.evaluate({"tasks": {"extract": {"state": "skipped", "output": None}}})
    assert not condition.evaluate(_vars())


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("params.region == ", "syntax error at column 18: unexpected end of expression"),
        ('params.region === "eu"', "syntax error at column 17: token recognition error at: '= '"),
        ("a b", "syntax error at column 3: extraneous input 'b' expecting <EOF>"),
        ("params.x ==\n", "syntax error at line 2, column 1: unexpected end of expression"),
        ("", "syntax error at column 1: unexpected end of expression"),
        ("param.region == 1", "unknown variable 'param' (the variables are params and tasks)"),
        (
            "now > 1 && x == 2",
            "unknown variables 'now', 'x' (the variables are params and tasks)",
        ),
    ],
)
def test_compile_errors_are_one_line(text: str, line: str) -> None:
    with pytest.raises(ConditionError) as info:
        compile_condition(text)
    assert str(info.value) == line
    assert isinstance(info.value, ValueError)


def test_variables_bound_by_macros_and_type_names_are_not_unknown() -> None:
    compile_condition("tasks.exists(t, tasks[t].state == 'failed')")
    compile_condition("[1, 2].all(i, v, v > 0) || type(params) == map")
    with pytest.raises(ConditionError, match="unknown variable 'params'"):
        compile_condition("params.size() > 0", frozenset({"tasks"}))


@pytest.mark.parametrize(
    ("text", "variables", "line"),
    [
        ("params.missing == 1", _vars(), "no such key 'missing'"),
        ('tasks["load"].state == "x"', _vars(), "no such key 'load'"),
        (
            "params.region > 1",
            _vars(),
            "No such overload: the operation is not defined for the given operand types",
        ),
        ("params.n / 0 == 1", _vars(), "division by zero in CEL expression"),
        ("tasks.extract.output.tags[5] == 'x'", _vars(), "index out of bounds: 5"),
        ("params.n", _vars(), "the condition must be true or false, got int 3"),
        ("params.region", _vars(), "the condition must be true or false, got string 'eu'"),
        ("tasks.extract.output", _vars(), "the condition must be true or false, got map "),
        (
            "params.none",
            {"params": {"none": None}},
            "the condition must be true or false, got null None",
        ),
    ],
)
def test_runtime_errors_and_non_bool_results_are_one_line(
    text: str, variables: dict[str, JsonValue], line: str
) -> None:
    with pytest.raises(ConditionError) as info:
        compile_condition(text).evaluate(variables)
    message = str(info.value)
    assert message.startswith(line)
    assert "\n" not in message
    assert len(message) <= 200


def test_compiled_conditions_are_cached_by_text() -> None:
    assert compile_condition(TYPICAL) is compile_condition(TYPICAL)
    assert compile_condition(TYPICAL, TASK_VARIABLES) is compile_condition(TYPICAL, TASK_VARIABLES)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (TYPICAL, {"extract"}),
        ("tasks['a'].state == 'x' || tasks.b.output == null", {"a", "b"}),
        ('tasks["we\\"ird"].state == "x"', {'we\\"ird'}),
        # Inside a string, a method call, or a computed key: not a reference.
        ('params.msg == "tasks.c" && params.m == \'tasks["d"]\'', set()),
        ("tasks.exists(t, tasks[t].state == 'ok') && tasks.size() > 0", set()),
        ("params.x == 1", set()),
    ],
)
def test_referenced_tasks(text: str, names: set[str]) -> None:
    assert referenced_tasks(text) == names


def _outcome(text: str) -> str:
    """``ok``, or the one line of the ConditionError that compiling or evaluating raised."""
    try:
        result = compile_condition(text).evaluate(_vars())
    except ConditionError as exc:
        return str(exc)
    assert isinstance(result, bool)
    return "ok"


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab.()[]{}\"' 019+-*/<>=!&|?:,tasksparm\n")), max_size=40)
)
def test_any_text_compiles_or_fails_with_one_line(text: str) -> None:
    """Whatever a user writes: a bool or one ConditionError line, never another exception."""
    line = _outcome(text)
    assert line
    assert "\n" not in line


def test_an_expression_nested_too_deeply_is_one_line() -> None:
    with pytest.raises(ConditionError) as info:
        compile_condition("(" * 900 + "true" + ")" * 900)
    assert str(info.value) == "syntax error: nested too deeply"
