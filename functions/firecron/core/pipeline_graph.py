"""A pipeline's task graph as text and as a Mermaid flowchart (``firecron graph``). Pure.

Both list the tasks in topological order (:func:`topological_order`) and show, on the
way into a task, its rule (``when``) and its condition (``if``). The default rule,
``all_succeeded``, is not shown: it is what an unlabelled dependency means, and most
edges have it, so showing it everywhere would hide the edges that differ (the error
paths). A condition belongs to a task, not to one edge, so every edge into the task
carries it; a root task's condition (no edge comes in) is shown on the task itself.

The graph is drawn as it is written: an ``after`` id that names no task is left out
(``validate`` refuses it with its own message), and tasks on a cycle come last, in file
order, instead of failing to draw.
"""

from __future__ import annotations

from firecron.core.durations import format_duration
from firecron.core.models import PipelineSpec, TaskRule, TaskSpec

__all__ = [
    "depths",
    "mermaid_escape",
    "render_mermaid",
    "render_text",
    "task_kind",
    "topological_order",
]


def topological_order(spec: PipelineSpec) -> list[str]:
    """Task ids, each after every task in its ``after``; ties in file order.

    Kahn's algorithm, always taking the earliest ready task of the file, so the order
    is stable and reads like the file. Tasks on a cycle (refused by ``validate``) are
    appended in file order.
    """
    ids = [task.id for task in spec.tasks]
    known = set(ids)
    waiting = {task.id: {u for u in task.after if u in known} for task in spec.tasks}
    order: list[str] = []
    done: set[str] = set()
    while True:
        ready = next((t for t in ids if t not in done and not waiting[t] - done), None)
        if ready is None:
            break
        order.append(ready)
        done.add(ready)
    return order + [t for t in ids if t not in done]


def depths(spec: PipelineSpec) -> dict[str, int]:
    """For each task, the length of the longest ``after`` path from a root (roots: 0)."""
    by_id = {task.id: task for task in spec.tasks}
    depth: dict[str, int] = {}
    for task_id in topological_order(spec):
        # An upstream not yet placed is on a cycle: it does not deepen the task.
        above = [depth[u] + 1 for u in by_id[task_id].after if u in depth]
        depth[task_id] = max(above, default=0)
    return depth


def task_kind(task: TaskSpec) -> str:
    """What the task runs: ``function:x``, the URL, or ``notify:SINK``."""
    return task.run_target.describe()


def _edge_notes(task: TaskSpec) -> list[str]:
    """What an edge into ``task`` is labelled with: a rule other than the default, its
    condition."""
    notes = []
    if task.when is not TaskRule.all_succeeded:
        notes.append(f"when: {task.when.value}")
    if task.if_ is not None:
        notes.append(f"if: {_one_line(task.if_)}")
    return notes


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_text(spec: PipelineSpec) -> str:
    """The pipeline as lines of text, ending with a newline.

    A header (id, task count, ``max_parallel``, ``timeout``; then the description), then one
    line per task in topological order, indented two spaces per level of depth: its id,
    what it runs, ``<- upstream ids`` and, when set, ``when: RULE`` and ``if: EXPR``.
    Example::

        etl: 4 tasks, max_parallel 2, timeout 1h
          extract_a  function:extract
          extract_b  function:extract
            join     function:join      <- extract_a, extract_b
              alert  notify:ops         <- join  when: any_failed
    """
    by_id = {task.id: task for task in spec.tasks}
    known = set(by_id)
    order = topological_order(spec)
    depth = depths(spec)
    header = [f"{spec.id}: {len(spec.tasks)} task{'s' if len(spec.tasks) != 1 else ''}"]
    if spec.max_parallel is not None:
        header.append(f"max_parallel {spec.max_parallel}")
    if spec.timeout is not None:
        header.append(f"timeout {format_duration(spec.timeout)}")
    lines = [", ".join(header)]
    if spec.description:
        lines.append(f"description: {_one_line(spec.description)}")
    names = {t: "  " * (depth[t] + 1) + t for t in order}
    kinds = {t: task_kind(by_id[t]) for t in order}
    name_width = max(len(n) for n in names.values())
    kind_width = max(len(k) for k in kinds.values())
    for task_id in order:
        task = by_id[task_id]
        upstream = [u for u in task.after if u in known]
        notes = _edge_notes(task)
        parts = [names[task_id].ljust(name_width), kinds[task_id].ljust(kind_width)]
        if upstream:
            parts.append("<- " + ", ".join(upstream))
        parts.extend(notes)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


# Mermaid reads entity codes (``#quot;``, ``#35;``) inside labels. Written as codes:
# what could end a quoted label or an edge label (``"``, ``|``), open a tag or a
# shape (``<``, ``[``), start a code (``#``, ``&``) or markdown (a backtick). Parentheses
# and braces are plain text inside quotes, so CEL such as ``size(x) > 0`` stays readable.
_MERMAID_ESCAPES = {
    "#": "#35;",
    '"': "#quot;",
    "<": "#lt;",
    ">": "#gt;",
    "&": "#amp;",
    "|": "#124;",
    "[": "#91;",
    "]": "#93;",
    "`": "#96;",
}


def mermaid_escape(text: str) -> str:
    """``text`` safe inside a quoted Mermaid label: one line, special characters as
    entity codes (the renderer shows them as the characters)."""
    return "".join(_MERMAID_ESCAPES.get(ch, ch) for ch in _one_line(text))


def render_mermaid(spec: PipelineSpec) -> str:
    """The pipeline as a Mermaid ``flowchart TD``, ending with a newline.

    One node per task, in topological order, named ``t1``, ``t2``... (task ids such as
    ``end`` are Mermaid keywords), labelled ``"ID<br/>KIND"`` (plus ``if: EXPR`` on a
    root task with a condition); a ``notify`` task is drawn as a stadium. One edge per
    ``after`` entry, ``tA --> tB``, labelled ``-->|"when: RULE, if: EXPR"|`` when the
    task has a rule other than ``all_succeeded`` or a condition. Every label is quoted
    and escaped (:func:`mermaid_escape`), so no user text can break the chart.
    """
    by_id = {task.id: task for task in spec.tasks}
    order = topological_order(spec)
    node = {task_id: f"t{n}" for n, task_id in enumerate(order, start=1)}
    lines = ["flowchart TD"]
    for task_id in order:
        task = by_id[task_id]
        label = [mermaid_escape(task_id), mermaid_escape(task_kind(task))]
        if task.if_ is not None and not any(u in by_id for u in task.after):
            label.append(mermaid_escape(f"if: {task.if_}"))
        text = "<br/>".join(label)
        if task.notify is not None:
            lines.append(f'    {node[task_id]}(["{text}"])')
        else:
            lines.append(f'    {node[task_id]}["{text}"]')
    for task_id in order:
        task = by_id[task_id]
        notes = _edge_notes(task)
        arrow = f'-->|"{mermaid_escape(", ".join(notes))}"|' if notes else "-->"
        for upstream in task.after:
            if upstream in node:
                lines.append(f"    {node[upstream]} {arrow} {node[task_id]}")
    return "\n".join(lines) + "\n"
