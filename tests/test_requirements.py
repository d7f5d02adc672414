"""functions/requirements.txt: pinned, inside pyproject.toml's ranges, deterministic, and
installable in a bare virtualenv from which ``functions/main.py`` imports.

The offline checks run everywhere. The ``network`` ones need the package registry: one
resolves again with uv, one installs the file with pip as Cloud Functions does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from firecron import _requirements
from firecron._requirements import HEADER, REQUIREMENTS, check, pins

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"


def _pyproject(folder: Path, *deps: str) -> Path:
    path = folder / "pyproject.toml"
    listed = ", ".join(repr(d) for d in deps)
    path.write_text(f'[project]\nname = "p"\nversion = "1"\ndependencies = [{listed}]\n')
    return path


# --- offline ---------------------------------------------------------------------------------


def test_requirements_txt_is_pinned_inside_pyproject_ranges() -> None:
    text = REQUIREMENTS.read_text(encoding="utf-8")
    assert check(text) == [], "functions/requirements.txt: run `make requirements`"
    found, problems = pins(text)
    assert problems == []
    assert len(found) > len(_requirements.runtime_dependencies()), "transitive pins missing"


def test_check_accepts_pins_with_markers_and_annotations(tmp_path: Path) -> None:
    pyproject = _pyproject(tmp_path, "a>=1", "B_c[x]>=2,<3; python_version >= '3.11'")
    text = (
        f"{HEADER}"
        "a==1.5\n    # via p (pyproject.toml)\n"
        "b-c==2.1 ; python_version >= '3.12'\n"
        "b-c==2.0 ; python_version < '3.12'\n"
        "colorama==0.4.6 ; sys_platform == 'win32'  # a trailing comment\n"
        "\n"
    )
    assert check(text, pyproject) == []


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("a>=1.5", "'a>=1.5' is not pinned to one version with =="),
        ("a", "'a' is not pinned"),
        ("a==1.*", "'a==1.*' is not pinned"),
        ("a==1.5,<2", "not pinned to one version"),
        ("a @ https://example.invalid/a-1.5.tar.gz", "not pinned"),
        ("-e .", "'-e .' is not a requirement pinned with =="),
        ("--index-url https://example.invalid/simple", "is not a requirement"),
    ],
)
def test_check_refuses_what_is_not_a_pin(tmp_path: Path, line: str, fragment: str) -> None:
    pyproject = _pyproject(tmp_path, "b>=1")
    problems = check(f"{HEADER}{line}\nb==1\n", pyproject)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"line {HEADER.count(chr(10)) + 1}: ")
    assert fragment in problems[0]


def test_check_refuses_stale_pins(tmp_path: Path) -> None:
    pyproject = _pyproject(tmp_path, "a>=2", "b>=1,<3", "c>=1")
    problems = check(f"{HEADER}a==1.9\nb==3.0\nunrelated==1\n", pyproject)
    assert problems == [
        "a==1.9 is outside pyproject.toml's range >=2",
        "b==3.0 is outside pyproject.toml's range <3,>=1",
        "c (pyproject.toml: c>=1) is not pinned",
    ]


def test_check_wants_the_header(tmp_path: Path) -> None:
    pyproject = _pyproject(tmp_path, "a>=1")
    assert check("a==1\n", pyproject) == ["does not start with the header of `make requirements`"]


def test_the_unpinned_file_of_before_fails_the_check() -> None:
    """The file as it was (ranges copied from pyproject.toml) is what the check refuses."""
    deps = [str(d) for d in _requirements.runtime_dependencies()]
    problems = check(HEADER + "\n".join(deps) + "\n")
    ranges = [p for p in problems if "is not pinned to one version with ==" in p]
    missing = [p for p in problems if p.endswith(") is not pinned")]
    assert (len(ranges), len(missing), len(problems)) == (len(deps), len(deps), 2 * len(deps))


def test_main_check_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pyproject = _pyproject(tmp_path, "a>=2", "b>=1")
    stale = tmp_path / "requirements.txt"
    stale.write_text(f"{HEADER}a==1\nb>=1\n")
    assert _requirements.main(["--check", str(stale)], pyproject=pyproject) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"error: {stale}: line 5: 'b>=1' is not pinned to one version with == (and 2 more); "
        "run `make requirements`\n"
    )
    stale.write_text(f"{HEADER}a==2\nb==1\n")
    assert _requirements.main(["--check", str(stale)], pyproject=pyproject) == 0


def test_main_check_of_the_committed_file_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "firecron._requirements", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_main_without_pyproject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = _requirements.main(["--check"], pyproject=tmp_path / "pyproject.toml")
    assert code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "pyproject.toml not found" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["--upgrade"], ["a.txt", "b.txt"]])
def test_main_usage_is_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _requirements.main(argv) == 2
    assert capsys.readouterr().err.startswith("usage: python -m firecron._requirements")


def test_a_failed_generation_keeps_the_old_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed generation (here: ranges nothing satisfies) keeps the old file as it was."""
    pyproject = _pyproject(tmp_path, "pyyaml>=6,<6")
    output = tmp_path / "requirements.txt"
    output.write_text("old\n")
    assert _requirements.main([str(output)], pyproject=pyproject) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {output}: uv pip compile failed: ")
    assert len(err.strip().splitlines()) == 1
    assert output.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyproject.toml", "requirements.txt"]


# --- network: uv and pip against the registry ------------------------------------------------


@pytest.mark.network
def test_make_requirements_is_deterministic_and_keeps_pins(tmp_path: Path) -> None:
    """Regenerating the committed file changes nothing; an older pin that still fits stays."""
    output = tmp_path / "requirements.txt"
    committed = REQUIREMENTS.read_text(encoding="utf-8")
    output.write_text(committed, encoding="utf-8")
    _requirements.compile_requirements(output)
    assert output.read_text(encoding="utf-8") == committed

    found, _ = pins(committed)
    (pyyaml,) = (r for r in found if canonicalize_name(r.name) == "pyyaml")
    older = "pyyaml==6.0.1"
    assert str(pyyaml) != older, "pick another older pin for this test"
    output.write_text(committed.replace(f"{pyyaml}\n", f"{older}\n"), encoding="utf-8")
    _requirements.compile_requirements(output)
    assert f"\n{older}\n" in output.read_text(encoding="utf-8")


@pytest.mark.network
@pytest.mark.timeout(180)
def test_requirements_install_in_a_bare_virtualenv(tmp_path: Path) -> None:
    """pip installs exactly the pins (nothing unpinned is pulled in), they are consistent,
    and ``main`` imports from functions/ with its entry points, as on Cloud Functions."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # This machine's pip configuration (a local mirror) applies; the developer's doesn't leak.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}

    def run(*args: str, cwd: Path = ROOT) -> str:
        result = subprocess.run(
            [str(python), *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    run("-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS))
    run("-m", "pip", "check")
    frozen = {
        canonicalize_name(name): version
        for name, _, version in (
            line.partition("==") for line in run("-m", "pip", "freeze").splitlines()
        )
    }
    found, _ = pins(REQUIREMENTS.read_text(encoding="utf-8"))
    expected = {
        canonicalize_name(r.name): str(next(iter(r.specifier)).version)
        for r in found
        if r.marker is None or r.marker.evaluate()
    }
    assert frozen == expected

    shutil.copytree(FUNCTIONS, tmp_path / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    out = run(
        "-c",
        "import main; print(sorted(n for n in ('dispatch', 'hello', 'sleep', 'fail') "
        "if callable(getattr(main, n, None))))",
        cwd=tmp_path / "functions",
    )
    assert out.strip() == "['dispatch', 'fail', 'hello', 'sleep']"
