"""The README's quickstart, run as written, in a temporary copy of the repository.

The quickstart tells the reader to edit ``functions/main.py`` and ``schedules.yaml`` and
to run commands against the default store ``.firecron/firecron.db``. The test does all
of that in a copy of the repository's files (the tracked ones, plus new files not yet
ignored), never in the checkout itself, so following the quickstart by hand and then
running the tests cannot collide (a reader's own ``count-words`` entry used to make the
test append a second one: "duplicate id 'count-words'"), and the tests never touch the
reader's schedules, workers or store.

In the copy the test adds the README's worker and schedule blocks (unless the files
already hold them verbatim, because the reader has followed the quickstart), starts
``firecron dev`` there (what ``make dev`` runs) on a free port, and runs the README's
command block with bash and ``set -e``, so a command that fails fails the test. The
copy's ``.venv`` is a link to the virtualenv running the tests: nothing is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from _poll import poll

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# The files the quickstart tells the reader to edit, and the store it uses.
EDITED = ("functions/main.py", "schedules.yaml")
STORE = Path(".firecron") / "firecron.db"
# Never copied: local state, caches and build output (the fallback copy without git).
_IGNORED = shutil.ignore_patterns(
    ".git", ".venv", ".firecron", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis"
)


def block(name: str, readme: Path = ROOT / "README.md") -> str:
    """The fenced code block that follows ``<!-- quickstart:NAME -->`` in the README."""
    match = re.search(rf"<!-- quickstart:{name} -->\n```\w+\n(.*?)```", readme.read_text(), re.S)
    assert match, f"README has no quickstart:{name} block"
    return match.group(1)


def copy_repository(src: Path, dest: Path) -> Path:
    """Copy the repository at ``src`` to ``dest``, without its local state; return ``dest``.

    In a git checkout the copy holds the tracked files and the untracked ones git does
    not ignore, as they are in the working tree (uncommitted work is what gets tested).
    Elsewhere (an unpacked archive) it is the whole tree minus ``_IGNORED``. The copy's
    ``.venv`` links to the virtualenv running the tests.
    """
    if (src / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=src,
            capture_output=True,
            check=True,
        ).stdout.decode()
        for name in filter(None, listed.split("\0")):
            path = src / name
            if path.is_file():  # a tracked file deleted in the working tree is skipped
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest / name)
    else:
        shutil.copytree(src, dest, ignore=_IGNORED, dirs_exist_ok=True)
    (dest / ".venv").symlink_to(BIN.parent)
    return dest


def follow_steps_2_and_3(checkout: Path, readme: Path = ROOT / "README.md") -> None:
    """Add the README's worker and schedule blocks to ``checkout``, as the reader does.

    A file that already holds its block verbatim is left as it is: the reader's copy
    was taken after they followed the quickstart themselves.
    """
    for path, name, sep in (
        (checkout / "functions" / "main.py", "worker", "\n\n"),
        (checkout / "schedules.yaml", "schedule", ""),
    ):
        text = path.read_text()
        if block(name, readme) not in text:
            path.write_text(text + sep + block(name, readme))


def fingerprint(root: Path) -> dict[str, str | None]:
    """SHA-256 of the files the quickstart edits and of the default store, in ``root``."""
    return {
        name: hashlib.sha256((root / name).read_bytes()).hexdigest()
        if (root / name).is_file()
        else None
        for name in (*EDITED, str(STORE))
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _firecron(checkout: Path, env: dict[str, str], *args: str) -> Any:
    """``firecron ARGS --json`` in ``checkout``, its JSON output parsed."""
    proc = subprocess.run(
        [str(BIN / "firecron"), *args, "--json"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


@contextmanager
def dev_stack(checkout: Path, env: dict[str, str], port: int) -> Iterator[subprocess.Popen[str]]:
    """``firecron dev`` in ``checkout``, as ``make dev`` runs it; SIGTERM at the end.

    ``--source`` names the copy's ``functions/main.py``: without it, dev would serve
    the ``main.py`` next to the installed package, the checkout's own.
    """
    dev = subprocess.Popen(
        [
            str(BIN / "firecron"),
            "dev",
            "--schedules",
            "schedules.yaml",
            "--port",
            str(port),
            "--source",
            "functions/main.py",
        ],
        cwd=checkout,
        env={**env, "FIRECRON_ALLOW_PRIVATE_TARGETS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield dev
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
    assert dev.returncode == 0, dev.stdout.read() if dev.stdout else ""


def test_make_dev_runs_the_dev_command() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "firecron dev --schedules schedules.yaml --port $(PORT)" in makefile


def test_the_copy_of_a_checkout_that_followed_the_quickstart_validates(tmp_path: Path) -> None:
    """A reader who followed the quickstart by hand, then runs the tests: no duplicate.

    The reader's checkout is a clone of this repository with steps 2 and 3 done in its
    working tree. The test's copy of it must hold each block once, so its schedules file
    validates, and the reader's files must be byte-identical afterwards.
    """
    reader = tmp_path / "reader"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(reader)], check=True)
    for name in EDITED:  # this checkout's versions, committed or not
        shutil.copy2(ROOT / name, reader / name)
    follow_steps_2_and_3(reader, ROOT / "README.md")
    before = fingerprint(reader)

    copy = copy_repository(reader, tmp_path / "copy")
    follow_steps_2_and_3(copy, ROOT / "README.md")

    assert fingerprint(reader) == before
    schedules = (copy / "schedules.yaml").read_text()
    assert schedules.count(block("schedule")) == 1
    assert (copy / "functions" / "main.py").read_text().count(block("worker")) == 1
    proc = subprocess.run(
        [str(BIN / "firecron"), "validate", "schedules.yaml"],
        cwd=copy,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_readme_quickstart(tmp_path: Path) -> None:
    """Steps 1 to 4 in order: the stack runs first, and picks up the new worker itself."""
    before = fingerprint(ROOT)
    checkout = copy_repository(ROOT, tmp_path / "firecron")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRECRON_")}
    port = _free_port()
    with dev_stack(checkout, env, port) as dev:

        def alive() -> None:
            assert dev.poll() is None, dev.stdout.read() if dev.stdout else ""

        def status(path: str) -> int:
            alive()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/{path}", timeout=5).status_code
            except httpx.TransportError:
                return 0

        # Step 1: the stack serves the example workers (the SDK answers GET with 405).
        poll(lambda: status("hello"), lambda code: code == 405, what="dev serving hello")
        assert status("word_count") == 404

        # Steps 2 and 3 while it runs; step 4 says it reloads the source by itself.
        follow_steps_2_and_3(checkout)
        poll(lambda: status("word_count"), lambda code: code == 405, what="word_count reloaded")

        script = "set -euo pipefail\n" + block("commands").replace(
            "127.0.0.1:8080", f"127.0.0.1:{port}"
        )
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        triggered = [
            line for line in result.stdout.splitlines() if re.fullmatch(r"count-words@m\S+", line)
        ]
        assert len(triggered) == 1

        def run_of(run_id: str) -> dict[str, Any]:
            alive()
            run: dict[str, Any] = _firecron(checkout, env, "run", run_id)
            return run

        run = poll(
            lambda: run_of(triggered[0]),
            lambda r: r["state"] == "succeeded",
            what=f"{triggered[0]} succeeded",
        )
        assert run["output"] == {"words": 3}

        def scheduled() -> list[dict[str, Any]]:
            alive()
            runs: list[dict[str, Any]] = _firecron(
                checkout, env, "runs", "--schedule", "count-words", "--state", "succeeded"
            )
            return [r for r in runs if r["trigger"] == "schedule"]

        # The scheduled runs of the new worker, applied by step 4, on their own.
        done = poll(scheduled, what="a scheduled count-words run succeeded")
        assert done[0]["output"] == {"words": 7}

    # Everything happened in the copy: its store holds the schedule, and the reader's
    # workers, schedules and store are as they were.
    assert (checkout / STORE).is_file()
    assert _firecron(checkout, env, "show", "count-words")["id"] == "count-words"
    assert fingerprint(ROOT) == before


# --- the repository stands on its own -------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_DESIGN = "docs/design.md"
# A docstring's pointer into the design: docs/design.md, "Section" or "Parent > Section".
_CITATION = re.compile(re.escape(_DESIGN) + r',? \(?"([^"]+)"')


def _tracked(*suffixes: str) -> list[Path]:
    """The repository's files (tracked, or not ignored) whose names end with ``suffixes``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    this = Path(__file__).resolve()  # its patterns would match themselves
    paths = [ROOT / n for n in listed if n.endswith(suffixes) and (ROOT / n).is_file()]
    return [p for p in paths if p.resolve() != this]


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _headings(path: Path) -> list[str]:
    """The headings of a Markdown file, outside code blocks."""
    found, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#+ (.*)", line)):
            found.append(match.group(1).strip())
    return found


def test_the_license_is_the_one_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "Copyright 2026 the firecron authors" in text


@pytest.mark.parametrize("doc", ["README.md", _DESIGN])
def test_relative_links_resolve(doc: str) -> None:
    """Every relative link of the document names a file that exists, and a heading there."""
    source = ROOT / doc
    broken = []
    for link in _LINK.findall(source.read_text()):
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:
        path, _, anchor = link.partition("#")
        target = (source.parent / path).resolve() if path else source
        unknown_anchor = (
            bool(anchor) and target.suffix == ".md" and anchor not in map(_slug, _headings(target))
        )
        if not target.exists() or unknown_anchor:
            broken.append(link)
    assert not broken, f"{doc}: broken links {broken}"


def test_the_readme_links_the_design() -> None:
    how = (ROOT / "README.md").read_text().split("## How it works", 1)[1]
    assert f"]({_DESIGN})" in how.split("\n## ", 1)[0]


def test_citations_of_the_design_name_its_sections() -> None:
    """``docs/design.md, "A > B"`` in any file names headings that docs/design.md has."""
    headings = set(_headings(ROOT / _DESIGN))
    missing = [
        f"{path.relative_to(ROOT)}: {section!r}"
        for path in _tracked(".py", ".md", ".tf")
        for section in _CITATION.findall(path.read_text())
        if not set(section.split(" > ")) <= headings
    ]
    assert not missing, f"sections not in {_DESIGN}: {missing}"


def test_nothing_cites_a_design_note_the_repository_lacks() -> None:
    """The design is docs/design.md; a bare "DESIGN" or "DESIGN.md" points nowhere."""
    stale = re.compile(r"\bDESIGN\b")
    citing = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _tracked(".py", ".md", ".tf", ".toml", "Makefile")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if stale.search(line)
    ]
    assert not citing, f"cite {_DESIGN} instead: {citing}"


def test_the_pipeline_drawn_in_the_readme_is_the_example_file_s() -> None:
    """The mermaid diagram is what ``firecron graph --format mermaid`` draws of schedules.yaml."""
    from firecron.core.pipeline_graph import render_mermaid
    from firecron.core.schedule_file import parse_schedule_file

    parsed = parse_schedule_file((ROOT / "schedules.yaml").read_text(), "schedules.yaml")
    [pipeline] = [p for p in parsed.pipelines if p.id == "daily-etl"]
    assert block("pipeline-graph").rstrip("\n") == render_mermaid(pipeline).rstrip("\n")


def test_readme_client_example(tmp_path: Path) -> None:
    """The README's client example, run as written in a fresh directory: its default store
    is that directory's ``.firecron/firecron.db``, and ``hello`` a real HTTP server."""
    from _sinks import serve

    code = block("client")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRECRON_")}
    with serve() as sink:
        env.update(FIRECRON_FUNCTIONS_BASE_URL=sink.url, FIRECRON_ALLOW_PRIVATE_TARGETS="1")
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        paths = [r.path for r in sink.requests]
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5, lines
    assert re.fullmatch(r"nightly-report active 20\d\d-\d\d-\d\d 0[01]:30:00\+00:00", lines[0])
    run_id, state = lines[1].split()
    assert re.fullmatch(r"nightly-report@m\S+", run_id)
    assert state in ("dispatched", "delivered", "running", "succeeded")
    assert lines[2] == repr([run_id])
    assert lines[3] == repr({"name": "now"})
    assert lines[4].startswith("refused: cron: invalid cron expression '61 * * * *'")
    assert paths == ["/hello"]
    shown = _firecron(tmp_path, env, "show", "nightly-report")
    assert shown["status"] == "paused"
    assert shown["spec"]["managed_by"] == "api"
