"""Mutated schedule files through ``firecron validate`` and ``firecron apply``, each in its own process.

Each file lists three schedules with ids of their own (``f{i}-a``, ``f{i}-b``,
``f{i}-c``), so that any write of an apply is visible. One seeded mutation per file:
a field of one entry set to an extreme or ill-typed value (huge durations, instants at
the end of time, lone surrogates, deep nesting...), or a byte-level change of the whole
file (invalid UTF-8, cut, flipped bytes). Counted: tracebacks on stderr, exit codes other
than 0 and 2, and partial applies: an apply that did not succeed (exit code not 0) but
changed the store (read before and after, in this process).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import yaml

from bench.chaos._count import Row, count_tracebacks
from bench.chaos._env import Lab, StoreRef

NAME = "schedule-file fuzzing"

_CLI = "import sys; from firecron.cli import main; sys.exit(main())"

EXTREMES: dict[str, list[Any]] = {
    "every": ["3000000d", "99999999d", "9" * 30 + "s", "0s", "-1m", "1e309s", 5, [], "1h1h"],
    "jitter": ["99999999d", "1d", "-5s", "9" * 25 + "d", {"a": 1}],
    "at": ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2030-02-30T00:00:00Z", 7],
    "start_at": ["9999-01-01T00:00:00Z", "0001-01-01T00:00:01Z", "9000-01-01T00:00:00Z"],
    "end_at": ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"],
    "cron": ["* * * * * * *", "99 99 * * *", "@reboot", "*/0 * * * *", "0 0 31 2 *", ""],
    "hourly": [{"minute": 10**30}, {"minute": -1}, 15, {"minute": "15"}, {}, [], "\ud800"],
    "daily": ["24:00", ["02:30"] * 1000, "\ud800", 870, [], "02:30:00", {"at": "02:30"}],
    "weekly": [
        {"days": ["fri"] * 1000, "at": "09:00"},
        {"days": "funday", "at": "9"},
        {"days": [], "at": "09:00"},
        {"days": [[["mon"]]], "at": ["09:00"]},
    ],
    "monthly": [
        {"day": -31, "at": "23:59"},
        {"day": 10**30, "at": "06:00"},
        {"day": "last", "at": "\x00"},
        {"day": 31, "at": "02:30"},
        {"day": None, "at": None},
    ],
    "timezone": ["Mars/Olympus", "", "UTC" * 100, "../../etc/passwd"],
    "description": ["\ud800", "x" * 100_000, "\x00", None, 42],
    "params": [{"k": "\udfff"}, "nested", {"k": 10**400}, {"k": float("nan")}, [1]],
    "timeout": ["99999999d", "0s", "1e9d"],
    "expected_duration": ["99999999d", "-1s"],
    "retention": ["99999999d", "0s"],
    "max_runs": [0, -1, 10**30, "many"],
    "retry": [{"max_attempts": 10**9}, {"backoff": "99999999d"}, {"multiplier": 1e308}, []],
    "misfire": [{"grace": "99999999d"}, {"policy": "explode"}, "skip"],
    "overlap": ["sometimes", None, 3],
    "labels": [{"k": ["v"]}, {"": "v"}, {"k" * 1000: "v"}],
    "target": [
        {"url": "ftp://x"},
        {"function": "../x"},
        {},
        {"url": "https://example.com/" + "a" * 10_000},
    ],
    "notify": [[{"url": "https://example.com/n", "on": ["nope"]}], "all"],
    "id": ["bad id", "", "x" * 1000, 5],
}


@dataclass(frozen=True)
class FilesConfig:
    files: int = 60
    budget_s: float = 100.0
    """No file is tried after this many seconds (the experiment stays under 2 minutes)."""


def mutated_file(i: int, rng: random.Random) -> bytes:
    """The ``i``-th fuzzed file: three entries, one mutation (seeded)."""
    entries: list[dict[str, Any]] = [
        {"id": f"f{i}-{c}", "every": "1h", "target": {"url": "https://example.com/hook"}}
        for c in "abc"
    ]
    victim = entries[rng.randrange(3)]
    kind = rng.random()
    if kind < 0.7:
        field = rng.choice(sorted(EXTREMES))
        value = rng.choice(EXTREMES[field])
        if field in ("at", "cron", "hourly", "daily", "weekly", "monthly"):
            victim.pop("every", None)
        victim[field] = value
    elif kind < 0.78:
        victim["params"] = "DEEP"
    text = yaml.safe_dump(entries, allow_unicode=True, width=10**9).encode("utf-8", "surrogatepass")
    if kind >= 0.7 and kind < 0.78:
        # Written as flow text: PyYAML's own dumper recurses once per level.
        levels = rng.choice([40, 200, 2_000])
        text = text.replace(b"DEEP", b"{k: " * levels + b"1" + b"}" * levels)
    if kind >= 0.78:
        data = bytearray(text)
        op = rng.randrange(4)
        if op == 0:
            data[rng.randrange(len(data))] = rng.choice([0xFF, 0xC3, 0x80, 0xED])
        elif op == 1:
            del data[rng.randrange(len(data)) :]
        elif op == 2:
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data = bytearray(b"\xef\xbb\xbf" + text.replace(b"  ", b"\t", 1))
        text = bytes(data)
    return text


def _cli(ref: StoreRef, *args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        env=ref.env(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
    )
    return proc.returncode, proc.stderr + proc.stdout


async def _snapshot(ref: StoreRef) -> dict[str, str]:
    store = ref.open()
    try:
        out: dict[str, str] = {}
        after: str | None = None
        while True:
            page = await store.list_schedules(after=after, limit=1_000)
            for s in page:
                out[s.id] = s.version
            if len(page) < 1_000:
                return out
            after = page[-1].id
    finally:
        await store.close()


def run(lab: Lab, backend: str, cfg: FilesConfig) -> Row:
    row = Row(NAME, backend, tracebacks=0, partial_applies=0, bad_exits=0)
    rng = random.Random(f"{lab.seed}-files")
    ref = lab.store(backend, "files")
    folder = lab.tmp / f"files-{backend}"
    folder.mkdir(parents=True, exist_ok=True)
    odd_codes: list[str] = []
    partial: list[str] = []
    first_tracebacks: list[str] = []
    started = time.monotonic()
    tried = 0
    for i in range(cfg.files):
        if time.monotonic() - started > cfg.budget_s:
            break
        tried += 1
        path = folder / f"fuzz-{i:03d}.yaml"
        path.write_bytes(mutated_file(i, rng))
        for command in ("validate", "apply"):
            before = asyncio.run(_snapshot(ref)) if command == "apply" else None
            args = [command, str(path)] + (["--store", ref.url] if command == "apply" else [])
            code, output = _cli(ref, *args)
            row.tries += 1
            found = count_tracebacks(output)
            row.add(tracebacks=found)
            if found and len(first_tracebacks) < 3:
                first_tracebacks.append(f"{command} {path.name}: {output.strip().splitlines()[-1]}")
            if code not in (0, 2):
                row.add(bad_exits=1)
                odd_codes.append(f"{command} {path.name}: exit {code}")
            if before is not None and code != 0 and asyncio.run(_snapshot(ref)) != before:
                row.add(partial_applies=1)
                partial.append(path.name)
    row.details = {
        "files": tried,
        "odd_exit_examples": odd_codes[:5],
        "traceback_examples": first_tracebacks,
        "partial_apply_files": partial[:10],
    }
    return row
