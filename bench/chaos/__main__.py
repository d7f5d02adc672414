"""Run the chaos suite: ``python -m bench.chaos`` (``make chaos``).

Experiments (each module's docstring says what it does and counts):

- ``kill``: the dispatcher SIGKILLed at random points of its tick (``kill.py``);
- ``freeze``: the store frozen mid-tick, then healed by later ticks (``freeze.py``);
- ``workers``: a worker killed, frozen and resumed, timed out; and a dispatcher clock
  100 s ahead judging healthy runs (``workers.py``);
- ``endpoints``: mutated requests to a served worker and to dispatch with an audience
  (``endpoints.py``);
- ``files``: mutated schedule files through ``firecron validate`` and ``apply``
  (``files.py``);
- ``skew``: a dispatcher clock 150 s ahead firing early (``skew.py``).

Options: ``--only NAME`` (repeatable), ``--backends sqlite,firestore`` (default both
when ``gcloud`` is on PATH), ``--seed``, size overrides (``--quick`` for a small run),
``--results-dir``. Findings never make the exit status non-zero; an experiment that
crashes does (its row says so).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench._common import (
    RESULTS_DIR,
    Backends,
    backend_names,
    machine_info,
    print_table,
    sink_process,
    write_json,
)
from bench.chaos import endpoints, files, freeze, kill, skew, workers
from bench.chaos._count import COLUMNS, Row
from bench.chaos._env import Lab

NAMES = ("kill", "freeze", "workers", "endpoints", "files", "skew")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description="firecron chaos suite")
    p.add_argument("--only", action="append", choices=NAMES, help="run only this (repeatable)")
    p.add_argument("--backends", default=None, help="comma-separated: sqlite,firestore")
    p.add_argument("--seed", type=int, default=10, help="seed of every random choice")
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--rounds", type=int, help="kill: rounds")
    p.add_argument("--due", type=int, help="kill: due occurrences per round")
    p.add_argument("--freeze-due", type=int, help="freeze: due occurrences")
    p.add_argument("--freeze-seconds", type=float, help="freeze: how long the store is frozen")
    p.add_argument("--requests", type=int, help="endpoints: mutated requests per endpoint")
    p.add_argument("--files", type=int, help="files: mutated schedule files")
    p.add_argument("--skew-due", type=int, help="skew: occurrences due in the next minutes")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Thousands of expected warnings (re-sends after kills) would bury the table; errors
    # still show, and every count comes from the records, not from these logs.
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("firecron").setLevel(logging.ERROR)
    names = backend_names(args.backends)
    if names is None:
        return 2
    k_cfg, f_cfg = kill.KillConfig(), freeze.FreezeConfig()
    e_cfg, s_cfg, sk_cfg = endpoints.EndpointsConfig(), files.FilesConfig(), skew.SkewConfig()
    if args.quick:
        k_cfg = replace(k_cfg, rounds=4, due=200)
        f_cfg = replace(f_cfg, due=100, freeze_s=35.0)
        e_cfg = replace(e_cfg, requests=200)
        s_cfg = replace(s_cfg, files=30)
        sk_cfg = replace(sk_cfg, due=60)
    overrides: list[tuple[str, Any, str]] = [
        ("rounds", args.rounds, "k"),
        ("due", args.due, "k"),
        ("due", args.freeze_due, "f"),
        ("freeze_s", args.freeze_seconds, "f"),
        ("requests", args.requests, "e"),
        ("files", args.files, "s"),
        ("due", args.skew_due, "sk"),
    ]
    for field, value, which in overrides:
        if value is None:
            continue
        if which == "k":
            k_cfg = replace(k_cfg, **{field: value})
        elif which == "f":
            f_cfg = replace(f_cfg, **{field: value})
        elif which == "e":
            e_cfg = replace(e_cfg, **{field: value})
        elif which == "s":
            s_cfg = replace(s_cfg, **{field: value})
        else:
            sk_cfg = replace(sk_cfg, **{field: value})
    runners: dict[str, Callable[[Lab, str], list[Row]]] = {
        "kill": lambda lab, b: [kill.run(lab, b, k_cfg)],
        "freeze": lambda lab, b: [freeze.run(lab, b, f_cfg)],
        "workers": lambda lab, b: workers.run(lab, b),
        "endpoints": lambda lab, b: endpoints.run(lab, b, e_cfg),
        "files": lambda lab, b: [files.run(lab, b, s_cfg)],
        "skew": lambda lab, b: [skew.run(lab, b, sk_cfg)],
    }
    only = args.only or list(NAMES)
    machine = machine_info()
    print(
        f"firecron chaos suite on {machine['cpus']} cores, backends {', '.join(names)}, "
        f"seed {args.seed}",
        flush=True,
    )
    rows: list[Row] = []
    crashed = False
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="firecron-chaos-") as tmp:
        backends = Backends(Path(tmp))
        try:
            with sink_process() as sink:
                lab = Lab(Path(tmp), backends, sink, args.seed)
                for name in NAMES:
                    if name not in only:
                        continue
                    for backend in names:
                        print(f"[{name}] {backend}...", flush=True)
                        t0 = time.perf_counter()
                        try:
                            got = runners[name](lab, backend)
                        except Exception as exc:
                            crashed = True
                            traceback.print_exc()
                            got = [Row(name, backend, details={"crashed": f"{exc!r}"})]
                        elapsed = round(time.perf_counter() - t0, 1)
                        for row in got:
                            row.details.setdefault("elapsed_s", elapsed)
                        rows += got
        finally:
            backends.close()
    print_table(
        "Chaos suite (- = not measured by this experiment)",
        ["experiment", "store", *COLUMNS],
        [[r.experiment, r.backend, *(getattr(r, c) for c in COLUMNS)] for r in rows],
    )
    total = round(time.perf_counter() - started, 1)
    print(f"\ntotal {total}s", flush=True)
    data = {
        "benchmark": "chaos",
        "columns": list(COLUMNS),
        "rows": [r.as_dict() for r in rows],
        "elapsed_s": total,
        "options": {"only": only, "backends": names, "seed": args.seed, "quick": args.quick},
        "machine": machine,
    }
    print(f"wrote {write_json(args.results_dir, 'chaos', data)}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
