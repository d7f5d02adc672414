"""Workers for the orchestration tests, served by functions-framework like ``functions/main.py``.

- ``step`` (and ``w0`` .. ``w7``, the same function under eight names, so eight processes
  can each serve one root of a join): returns what it was told (task, attempt, params,
  ``ctx.upstream``). Params drive it: ``wait_for`` (a path: it works until that file
  exists, or until cancelled: a barrier the test releases), ``fail_attempts`` (attempts
  up to this number raise).
- ``submitter``: ``ctx.submit`` of ``params["schedule"]`` twice with one key, once without.
- ``setter``: ``ctx.state.set(params["key"], params["value"])``.
- ``generation``: a continuous instance that logs what it does (see its docstring).

Two environment switches make a process misbehave where the tests need it:

- ``TEST_EXIT_AFTER_END=1``: the process exits (``os._exit``) right after it records
  a run's end that causes other runs, before it claims them: a recorder killed between
  the end and the claim.
- ``TEST_HOLD_BEFORE_SETTLE=PATH``: after recording such an end, the worker waits for
  ``PATH`` to exist before it settles, so a test can let ticks race it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import firecron
from firecron.core.lifecycle import Change
from firecron.core.runs import Run
from firecron.worker import on_change


def _work(ctx: firecron.RunContext) -> object:
    params = ctx.params
    barrier = params.get("wait_for")
    if isinstance(barrier, str):
        # The work: wait for the test's go (a heartbeat keeps the run alive meanwhile).
        while not Path(barrier).exists():
            if ctx.cancelled:
                return {"cancelled": True}
            time.sleep(0.01)
    fail_attempts = params.get("fail_attempts", 0)
    if isinstance(fail_attempts, int) and ctx.attempt <= fail_attempts:
        raise RuntimeError(f"failing attempt {ctx.attempt} on purpose")
    return {
        "task": ctx.task,
        "attempt": ctx.attempt,
        "params": ctx.params,
        "upstream": ctx.upstream,
        "rows": params.get("rows", 1),
    }


def _declare(name: str) -> None:
    def work(ctx: firecron.RunContext) -> object:
        return _work(ctx)

    work.__name__ = work.__qualname__ = name
    globals()[name] = firecron.worker(heartbeat_interval=_BEAT)(work)


_BEAT = __import__("datetime").timedelta(seconds=0.3)
for _name in ["step", *(f"w{i}" for i in range(8))]:
    _declare(_name)


@firecron.worker
def submitter(ctx: firecron.RunContext) -> object:
    """Submit ``params["schedule"]``: twice with one key (one run), once without."""
    schedule = str(ctx.params["schedule"])
    first = ctx.submit(schedule, params={"from": ctx.run_id}, key="k")
    again = ctx.submit(schedule, params={"from": ctx.run_id}, key="k")
    keyless = ctx.submit(schedule)
    return {"first": first, "again": again, "keyless": keyless}


@firecron.worker
def setter(ctx: firecron.RunContext) -> object:
    """``ctx.state.set(params["key"], params["value"])``: a worker releasing a wait."""
    entry = ctx.state.set(str(ctx.params["key"]), ctx.params.get("value"))
    return {"version": entry.version}


@firecron.worker(heartbeat_interval=_BEAT)
def looper(ctx: firecron.RunContext) -> object:
    """A continuous instance: works (a short sleep per step) while ``ctx.keep_going()``."""
    steps = 0
    while ctx.keep_going():
        steps += 1
        time.sleep(0.02)
    return {"generation": ctx.generation, "steps": steps}


@firecron.worker(heartbeat_interval=_BEAT)
def generation(ctx: firecron.RunContext) -> object:
    """A continuous instance that logs each thing it does as a JSON line appended to the
    file ``params["log"]``: ``{"gen", "event", "t", "pid", ...}`` with ``event`` one of
    ``start``, ``end`` (it returned at its window's end, or was asked to stop) and
    ``fenced`` (a fenced write was refused; ``going`` is what ``keep_going()`` said just
    before it, ``after`` what it says after). Each step writes ``params["key"]`` with ``fence=True``. Generations up to
    ``params["crash_until"]`` raise at once (a crash loop)."""
    log = Path(str(ctx.params["log"]))
    key = str(ctx.params["key"])
    gen = ctx.generation or 0
    _log_line(log, gen, "start")
    crash_until = ctx.params.get("crash_until", 0)
    if isinstance(crash_until, int) and gen <= crash_until:
        raise RuntimeError(f"generation {gen} crashes on purpose")
    step = 0
    while True:
        going = ctx.keep_going()
        try:
            ctx.state.set(key, {"generation": gen, "step": step}, fence=True)
        except firecron.Fenced as exc:
            after = ctx.keep_going()
            _log_line(log, gen, "fenced", going=going, after=after, step=step, error=str(exc))
            return {"generation": gen, "fenced": True}
        if not going:
            break
        step += 1
        time.sleep(0.02)
    _log_line(log, gen, "end", step=step)
    return {"generation": gen, "steps": step}


def _log_line(log: Path, gen: int, event: str, **more: object) -> None:
    line = {"gen": gen, "event": event, "t": time.time(), "pid": os.getpid(), **more}
    # One short O_APPEND write per line: lines from several processes never interleave.
    with log.open("a") as out:
        out.write(json.dumps(line) + "\n")


def _misbehave(before: Run, change: Change, after: Run) -> None:
    if not (after.is_terminal and after.settle_at is not None):
        return
    if os.environ.get("TEST_EXIT_AFTER_END") == "1":
        os._exit(17)
    hold = os.environ.get("TEST_HOLD_BEFORE_SETTLE")
    if hold:
        while not Path(hold).exists():
            time.sleep(0.01)


on_change.append(_misbehave)
