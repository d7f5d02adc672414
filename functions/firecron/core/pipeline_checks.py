"""What makes a well-formed pipeline unusable: its graph, conditions, sinks and targets. Pure.

:func:`problems` judges a :class:`~firecron.core.models.PipelineSpec` that the model
accepted, so that ``firecron validate`` refuses it up front (exit 2) instead of it
failing at run time. It returns one line per problem, every problem at once, each
beginning with the pipeline's label (``pipelines[0] (id=etl)``) and, for a task's
problem, the task (``.tasks[2] (id=load)``), then ``field: reason``:

- a task id used twice (the later ones are named);
- an ``after`` naming no task of the pipeline;
- a cycle of ``after`` (``tasks form a cycle: a -> b -> a``, upstream first), one line
  per strongly connected group of tasks;
- ``when: any_failed`` on a task without ``after``: it starts with the pipeline, and
  no upstream task could fail;
- an ``if`` that does not compile, that names a variable other than ``params`` and
  ``tasks``, or that names a task (``tasks["x"]``, ``tasks.x``) not in its ``after``:
  ``tasks`` holds its upstream tasks only;
- a ``notify`` task naming a sink that ``notifications.sinks`` does not define;
- a ``url`` target that the SSRF guard always refuses (the rules schedules follow,
  :func:`~firecron.core.refusals.unworkable_target`);
- a ``wait`` task whose wait can never end well
  (:func:`~firecron.core.refusals.unworkable_wait`): a key template that is not valid
  syntax, an ``until`` that does not compile, an ``every`` longer than its ``timeout``.
  Whether the template's params exist depends on the schedules that run the pipeline;
  :func:`wait_param_problems` judges that once they are known.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from firecron.core.conditions import ConditionError, compile_condition, referenced_tasks
from firecron.core.events import SinkConfig
from firecron.core.models import PipelineSpec, ScheduleSpec, TaskRule
from firecron.core.refusals import unworkable_target, unworkable_wait
from firecron.core.waits import template_problem

__all__ = ["cycles", "problems", "task_label", "wait_param_problems"]


def task_label(index: int, task_id: object) -> str:
    """``tasks[2] (id=load)``: how a line names a task (the id only when it is a string)."""
    return f"tasks[{index}] (id={task_id})" if isinstance(task_id, str) else f"tasks[{index}]"


def problems(
    spec: PipelineSpec,
    label: str,
    *,
    sinks: Mapping[str, SinkConfig] | None,
    allow_private_targets: bool,
    positions: Sequence[int] | None = None,
    refused: Collection[str] = (),
) -> list[str]:
    """Every problem of ``spec`` (see the module docstring), one line each; empty if none.

    ``label`` names the pipeline (``pipelines[0] (id=etl)``). ``sinks`` are the file's
    ``notifications.sinks``, or None when that section is invalid (its own errors are
    reported, so a notify task's sink is not judged). ``allow_private_targets`` is the
    deployment's ``FIRECRON_ALLOW_PRIVATE_TARGETS``.

    When the model refused some tasks of the file's pipeline, ``spec`` holds the others:
    ``positions`` gives each one's index in the file (for its label) and ``refused`` the
    ids of the refused ones, which an ``after`` may still name without an error here.
    """
    where_of = list(range(len(spec.tasks))) if positions is None else list(positions)
    lines: list[str] = []
    first: dict[str, int] = {}
    for index, task in enumerate(spec.tasks):
        where = f"{label}.{task_label(where_of[index], task.id)}"
        seen = first.setdefault(task.id, index)
        if seen != index:
            lines.append(
                f"{where}: duplicate task id {task.id!r} (first at tasks[{where_of[seen]}])"
            )
    # The graph and the task checks below see each id once: the first task that has it.
    for index, task in enumerate(spec.tasks):
        if first[task.id] != index:
            continue
        where = f"{label}.{task_label(where_of[index], task.id)}"
        lines.extend(
            f"{where}: after: unknown task {name!r}"
            for name in task.after
            if name not in first and name not in refused
        )
        if task.when is TaskRule.any_failed and not task.after:
            lines.append(
                f"{where}: when: any_failed never holds for a task without 'after' "
                "(it starts with the pipeline: no upstream task can fail)"
            )
        if task.if_ is not None:
            lines.extend(
                f"{where}: if: {line}" for line in _condition_problems(task.if_, task.after)
            )
        if task.notify is not None and sinks is not None and task.notify.sink not in sinks:
            lines.append(f"{where}: notify.sink: unknown sink {task.notify.sink!r}")
        if task.target is not None:
            lines.extend(
                f"{where}: target.{line}"
                for line in unworkable_target(
                    task.target, allow_private_targets=allow_private_targets
                )
            )
        if task.wait is not None:
            lines.extend(f"{where}: wait.{line}" for line in unworkable_wait(task.wait, None))
    edges = {task.id: [a for a in task.after if a in first] for task in spec.tasks}
    lines.extend(
        f"{label}: tasks form a cycle: {' -> '.join(cycle)}"
        for cycle in cycles(list(first), _downstream(edges))
    )
    return lines


def wait_param_problems(
    spec: PipelineSpec, label: str, schedules: Sequence[ScheduleSpec]
) -> list[str]:
    """The params a wait task's key template names that its runs will not have, one line
    per task and param: ``{label}.tasks[1] (id=ready): wait.key: ... in the runs of
    schedule 'nightly')``.

    A task run's params are the pipeline's, under the schedule's, under the task's own;
    each of ``schedules`` (those that run ``spec``) is judged on its own, and the
    schedules that lack the same param share one line. Templates whose syntax is wrong
    are left to :func:`problems`, which reports them.
    """
    lines: list[str] = []
    seen: set[str] = set()
    for index, task in enumerate(spec.tasks):
        if task.wait is None or task.id in seen:
            continue
        seen.add(task.id)  # a duplicate id is reported by problems(); judge the first
        if template_problem(task.wait.key) is not None:
            continue
        missing: dict[str, list[str]] = {}
        for schedule in schedules:
            params = {**spec.params, **schedule.params, **task.params}
            problem = template_problem(task.wait.key, params)
            if problem is not None:
                missing.setdefault(problem, []).append(schedule.id)
        for problem, ids in missing.items():
            noun = "schedule" if len(ids) == 1 else "schedules"
            names = ", ".join(repr(i) for i in ids)
            lines.append(
                f"{label}.{task_label(index, task.id)}: wait.key: {problem} "
                f"in the runs of {noun} {names}"
            )
    return lines


def _condition_problems(text: str, after: Iterable[str]) -> list[str]:
    try:
        compile_condition(text)
    except ConditionError as exc:
        return [str(exc)]
    upstream = set(after)
    return [
        f"names task {name!r}, which is not in its 'after' ('tasks' holds its upstream tasks only)"
        for name in sorted(referenced_tasks(text) - upstream)
    ]


def _downstream(upstream_of: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Edges from each task to the tasks that run after it."""
    below: dict[str, list[str]] = {node: [] for node in upstream_of}
    for node, ups in upstream_of.items():
        for up in ups:
            if node not in below[up]:
                below[up].append(node)
    return below


def cycles(nodes: list[str], edges: Mapping[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of ``nodes`` that holds one, as the path
    ``[a, b, ..., a]`` following ``edges`` (node -> its successors; a successor need not
    be in ``nodes``).

    Deterministic: groups in the order of their first node in ``nodes``, each cycle the
    shortest one from that node. A node with an edge to itself is the cycle ``[a, a]``.
    Iterative, so a long chain cannot exhaust the recursion limit.
    """
    order = {node: i for i, node in enumerate(nodes)}

    def rank(node: str) -> int:
        # A node only reached through ``edges`` (outside ``nodes``) comes last; it has no
        # successor of its own, so it is never part of a cycle.
        return order.get(node, len(order))

    groups = _strongly_connected(nodes, edges)
    found: list[list[str]] = []
    for group in sorted(groups, key=lambda g: min(rank(n) for n in g)):
        start = min(group, key=rank)
        if len(group) == 1 and start not in edges.get(start, []):
            continue
        found.append(_shortest_cycle(start, group, edges))
    return found


def _shortest_cycle(start: str, group: set[str], edges: Mapping[str, list[str]]) -> list[str]:
    """The shortest path from ``start`` back to itself inside ``group`` (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in edges.get(node, []):
                if succ not in group:
                    continue
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if succ not in parent:
                    parent[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected group without a cycle")


def _strongly_connected(nodes: list[str], edges: Mapping[str, list[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components, without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            successors = edges.get(node, [])
            if position < len(successors):
                work.append((node, position + 1))
                succ = successors[position]
                if succ not in index:
                    work.append((succ, 0))
                elif succ in on_stack:
                    low[node] = min(low[node], index[succ])
                continue
            if low[node] == index[node]:
                group: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return groups
