"""Pin ``functions/requirements.txt``: the lock of pyproject.toml's runtime dependencies.

Cloud Functions installs the deployed folder's ``requirements.txt`` with pip; the ``firecron``
package itself is vendored, because ``functions/`` is the source root. Every line of that
file pins one distribution with ``==``, the transitive ones included, so a deploy installs
exactly the set the tests ran against instead of whatever is newest on the day.

``make requirements`` runs ``python -m firecron._requirements``, which runs ``uv pip compile``
(:data:`COMPILE_ARGS`) on pyproject.toml and writes the file behind :data:`HEADER`. uv keeps
the pins already in the file as long as they still satisfy pyproject.toml, so the command is
deterministic: rerunning it changes nothing until a range in pyproject.toml moves (delete the
file to take the newest versions). The resolution is universal for Python 3.11 and newer on
every platform (a pin that applies to some interpreters only carries a marker), which covers
the python312 runtime on Linux. This step needs the package registry.

``python -m firecron._requirements --check`` (and :func:`check`) verifies the file offline:
every requirement pinned with ``==``, and every dependency in pyproject.toml pinned to a
version inside its range. ``tests/test_requirements.py`` runs both and installs the file in a
bare virtualenv.

It reads ``pyproject.toml`` two levels above the package (``functions/firecron/../../``), so
it works only from a source checkout, with the dev extras (uv) installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

__all__ = [
    "COMPILE_ARGS",
    "HEADER",
    "PYPROJECT",
    "REQUIREMENTS",
    "check",
    "compile_requirements",
    "main",
    "pins",
    "runtime_dependencies",
]

ROOT = Path(__file__).resolve().parent.parent.parent
PYPROJECT = ROOT / "pyproject.toml"
"""The pyproject.toml of the checkout this package lives in."""

REQUIREMENTS = ROOT / "functions" / "requirements.txt"
"""The file Cloud Functions installs."""

COMPILE_ARGS = (
    "pip",
    "compile",
    "--universal",
    "--python-version",
    "3.11",
    "--no-header",
    "--quiet",
)
"""``uv`` arguments, before the input and output paths. ``--universal`` with the lowest
supported Python resolves once for every interpreter and platform firecron supports."""

HEADER = (
    "# Pinned from pyproject.toml's [project].dependencies by `make requirements`\n"
    "# (uv pip compile --universal --python-version 3.11: Python 3.11+, every platform).\n"
    "# Do not edit: change pyproject.toml and rerun; existing pins are kept while they fit.\n"
)
"""The first lines of the generated file."""


def runtime_dependencies(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """``[project].dependencies`` of ``pyproject``, parsed, in their order.

    Raises :class:`OSError` when the file cannot be read and :class:`ValueError` when it is
    not TOML or has no list of valid requirement strings.
    """
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data.get("project")
    deps = project.get("dependencies") if isinstance(project, dict) else None
    if not isinstance(deps, list) or not all(isinstance(d, str) and d.strip() for d in deps):
        raise ValueError("[project].dependencies must be a list of requirement strings")
    try:
        return [Requirement(d) for d in deps]
    except InvalidRequirement as exc:
        raise ValueError(f"[project].dependencies: {exc}") from None


def pins(text: str) -> tuple[list[Requirement], list[str]]:
    """The requirements of a requirements file, and one problem line per line that is not
    a plain ``name==version`` pin (an option, a URL, a range, a wildcard). Comments, blank
    lines and uv's ``# via`` annotations are skipped; a marker after ``;`` is allowed."""
    found: list[Requirement] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            problems.append(f"line {number}: {line!r} is not a requirement pinned with ==")
            continue
        specs = list(req.specifier)
        if req.url or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"line {number}: {line!r} is not pinned to one version with ==")
            continue
        found.append(req)
    return found, problems


def check(text: str, pyproject: Path = PYPROJECT) -> list[str]:
    """Every problem of the requirements ``text`` against ``pyproject``, one line each.

    Empty when the text starts with :data:`HEADER`, pins every line with ``==``, and pins
    each dependency of pyproject.toml to a version inside its range (for every marker
    variant it lists). Whether the transitive pins are complete needs an install: see
    ``tests/test_requirements.py``. Raises like :func:`runtime_dependencies`.
    """
    problems: list[str] = []
    if not text.startswith(HEADER):
        problems.append("does not start with the header of `make requirements`")
    found, unpinned = pins(text)
    problems += unpinned
    versions: dict[str, list[str]] = {}
    for req in found:
        (version,) = (spec.version for spec in req.specifier)
        versions.setdefault(canonicalize_name(req.name), []).append(version)
    for dep in runtime_dependencies(pyproject):
        pinned = versions.get(canonicalize_name(dep.name))
        if not pinned:
            problems.append(f"{dep.name} (pyproject.toml: {dep}) is not pinned")
        for version in pinned or ():
            if not dep.specifier.contains(version, prereleases=True):
                problems.append(
                    f"{dep.name}=={version} is outside pyproject.toml's range {dep.specifier}"
                )
    return problems


def _uv() -> str:
    """The uv executable of the dev extras (the ``uv`` package), else the one on PATH."""
    try:
        from uv import find_uv_bin
    except ImportError:
        found = shutil.which("uv")
        if found is None:
            raise FileNotFoundError(
                "uv not found: install the dev extras (pip install -e '.[dev]')"
            ) from None
        return found
    return find_uv_bin()


def compile_requirements(output: Path = REQUIREMENTS, pyproject: Path = PYPROJECT) -> None:
    """Write ``output``: :data:`HEADER` and uv's lock of ``pyproject``, keeping the pins
    already in ``output`` while they satisfy it.

    The file is replaced only when uv succeeds and the result passes :func:`check`. Raises
    :class:`FileNotFoundError` without uv, :class:`RuntimeError` with uv's last error line
    when it fails (the registry unreachable, ranges that cannot be met), and
    :class:`ValueError` with the first problem when the result fails the check.
    """
    fd, name = tempfile.mkstemp(prefix=".requirements-", suffix=".txt", dir=output.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            # uv reads the current pins from its output file: start from them.
            if output.exists():
                handle.write(output.read_bytes())
        result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [_uv(), *COMPILE_ARGS, str(pyproject), "--output-file", str(tmp)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "UV_NO_PROGRESS": "1"},
        )
        if result.returncode != 0:
            lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
            detail = lines[-1] if lines else f"exit code {result.returncode}"
            raise RuntimeError(f"uv pip compile failed: {detail}")
        text = HEADER + tmp.read_text(encoding="utf-8")
        problems = check(text, pyproject)
        if problems:
            raise ValueError(problems[0])
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None, *, pyproject: Path | None = None) -> int:
    """``[--check] [OUTPUT]``: regenerate (or only check) ``OUTPUT``, by default
    ``functions/requirements.txt``. Returns the exit code: 0; 1 with one line on stderr when
    the file fails the check or cannot be made; 2 for an unknown option."""
    args = sys.argv[1:] if argv is None else argv
    only_check = "--check" in args
    rest = [a for a in args if a != "--check"]
    if len(rest) > 1 or any(a.startswith("-") for a in rest):
        print("usage: python -m firecron._requirements [--check] [OUTPUT]", file=sys.stderr)
        return 2
    output = Path(rest[0]) if rest else REQUIREMENTS
    path = PYPROJECT if pyproject is None else pyproject
    if not path.exists():
        print(
            f"error: {path} not found: firecron._requirements runs from a source checkout, "
            "where pyproject.toml sits two levels above functions/firecron/",
            file=sys.stderr,
        )
        return 1
    try:
        if only_check:
            problems = check(output.read_text(encoding="utf-8"), path)
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                print(
                    f"error: {output}: {problems[0]}{more}; run `make requirements`",
                    file=sys.stderr,
                )
                return 1
        else:
            compile_requirements(output, path)
    except (OSError, ValueError, RuntimeError) as exc:  # TOMLDecodeError is a ValueError
        print(f"error: {output}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
