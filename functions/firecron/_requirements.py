"""Print ``functions/requirements.txt``: the runtime dependencies listed in pyproject.toml.

Cloud Functions installs the deployed folder's ``requirements.txt``; the ``firecron``
package itself is vendored, because ``functions/`` is the source root. ``make requirements``
runs ``python -m firecron._requirements > functions/requirements.txt``, and
``tests/test_infra.py`` fails when the file differs from this output.

It reads ``pyproject.toml`` two levels above the package (``functions/firecron/../../``), so
it works only from a source checkout. Without that file it exits 1 with one clear line.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

__all__ = ["HEADER", "PYPROJECT", "main", "render"]

PYPROJECT = Path(__file__).resolve().parent.parent.parent / "pyproject.toml"
"""The pyproject.toml of the checkout this package lives in."""

HEADER = "# Generated from pyproject.toml by `make requirements`; do not edit."
"""First line of the generated file."""


def render(pyproject: Path = PYPROJECT) -> str:
    """The requirements file for ``pyproject``'s ``[project].dependencies``, in their order.

    Raises :class:`OSError` when the file cannot be read and :class:`ValueError` when it is
    not TOML or has no list of dependency strings.
    """
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data.get("project")
    deps = project.get("dependencies") if isinstance(project, dict) else None
    if not isinstance(deps, list) or not all(isinstance(d, str) and d.strip() for d in deps):
        raise ValueError("[project].dependencies must be a list of requirement strings")
    return "\n".join([HEADER, *(d.strip() for d in deps)]) + "\n"


def main(pyproject: Path | None = None) -> int:
    """Write the requirements to stdout; return the exit code (0, or 1 with a message)."""
    path = PYPROJECT if pyproject is None else pyproject
    try:
        text = render(path)
    except FileNotFoundError:
        print(
            f"error: {path} not found: firecron._requirements runs from a source checkout, "
            "where pyproject.toml sits two levels above functions/firecron/",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
