"""``firecron apply`` and ``firecron list`` on both stores: no data loss, a plan that is always
printed, paging.

- A ``--prune`` that would delete every stored schedule, or more than half of them, is
  refused (exit 2, one line with the counts) unless ``--yes``; nothing is written.
- ``apply`` prints what it created, updated, left unchanged and deleted (``--json``: the
  four lists); ``--dry-run`` prints the same and writes nothing.
- The writes of a plan that lost a race with another writer converge one by one.
- ``list`` pages in id order with ``--limit`` and ``--after``, and says where the next
  page starts.

The CLI runs as the real ``firecron`` command in a subprocess; the service-level tests
run on the ``store`` fixture (SQLite and the Firestore emulator).
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from _factories import T0, make_spec
from conftest import STORE_BACKENDS
from firecron import admin
from firecron.core import planning
from firecron.core.models import ScheduleSpec, StoredSchedule
from firecron.store.base import Store

FIRECRON = str(Path(sys.executable).parent / "firecron")

PRUNE_REFUSED = "apply: --prune would delete {} of {} stored schedules; pass --yes to confirm"


def schedules_yaml(*ids: str, description: str = "") -> str:
    if not ids:
        return "# every schedule was removed\nschedules: []\n"
    entries = "".join(
        f"  - id: {i}\n    every: 1h\n    description: '{description}'\n"
        f"    target: {{url: 'https://example.com/{i}'}}\n"
        for i in ids
    )
    return f"schedules:\n{entries}"


# -- the CLI ----------------------------------------------------------------------------


class Cli:
    """``firecron`` against one store: SQLite in ``tmp_path`` or a fresh emulator namespace."""

    def __init__(self, store_url: str, env: dict[str, str], tmp_path: Path) -> None:
        self.store_url = store_url
        self.env = env
        self.tmp_path = tmp_path

    def __call__(self, *args: str, stderr: int | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIRECRON_")}
        env.update(self.env)
        return subprocess.run(
            [FIRECRON, *args, "--store", self.store_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr is None else stderr,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    def file(self, text: str) -> str:
        path = self.tmp_path / f"schedules-{uuid4().hex[:6]}.yaml"
        path.write_text(text)
        return str(path)

    def apply(self, text: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return self("apply", self.file(text), *flags)

    def listed(self) -> list[dict[str, object]]:
        proc = self("list", "--json", "--limit", "1000")
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert data["next_after"] is None
        schedules: list[dict[str, object]] = data["schedules"]
        return schedules


@pytest.fixture(params=STORE_BACKENDS)
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    if request.param == "sqlite":
        return Cli(f"sqlite:///{tmp_path / 'store' / 'firecron.db'}", {}, tmp_path)
    request.getfixturevalue("firestore_emulator")  # sets FIRESTORE_EMULATOR_HOST
    return Cli(
        "firestore://firecron-test", {"FIRECRON_NAMESPACE": f"t{uuid4().hex[:12]}"}, tmp_path
    )


def assert_one_line_refusal(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {message}"]
    assert proc.stdout == ""


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# nothing here yet\n",
        "schedules:\n",
        schedules_yaml(),
    ],
    ids=["empty", "comment-only", "empty-list", "no-entries"],
)
def test_a_prune_that_deletes_everything_is_refused(cli: Cli, text: str) -> None:
    assert cli.apply(schedules_yaml("a", "b")).returncode == 0
    before = cli.listed()

    assert_one_line_refusal(cli.apply(text, "--prune"), PRUNE_REFUSED.format(2, 2))
    assert cli.listed() == before

    proc = cli.apply(text, "--prune", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "- a",
        "- b",
        "0 created, 0 updated, 0 unchanged, 2 deleted",
    ]
    assert cli.listed() == []


def test_a_prune_of_more_than_half_is_refused_and_half_is_not(cli: Cli) -> None:
    assert cli.apply(schedules_yaml("a", "b", "c", "d")).returncode == 0
    before = cli.listed()
    assert_one_line_refusal(cli.apply(schedules_yaml("a"), "--prune"), PRUNE_REFUSED.format(3, 4))
    assert cli.listed() == before

    proc = cli.apply(schedules_yaml("a", "b"), "--prune")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "= a",
        "= b",
        "- c",
        "- d",
        "0 created, 0 updated, 2 unchanged, 2 deleted",
    ]
    assert [s["id"] for s in cli.listed()] == ["a", "b"]


def test_apply_prints_every_action_and_dry_run_prints_the_same_without_writing(
    cli: Cli,
) -> None:
    assert cli.apply(schedules_yaml("keep", "old", "gone")).returncode == 0
    before = cli.listed()
    text = (
        schedules_yaml("keep", "new")
        + schedules_yaml("old", description="changed").split("schedules:\n")[1]
    )
    expected = [
        "= keep",
        "+ new",
        "~ old  (description)",
        "- gone",
        "1 created, 1 updated, 1 unchanged, 1 deleted",
    ]

    dry = cli.apply(text, "--prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [*expected[:-1], expected[-1] + " (dry run: nothing written)"]
    assert dry.stderr == ""
    assert cli.listed() == before  # versions, next fire times, everything

    dry_json = json.loads(cli.apply(text, "--prune", "--dry-run", "--json").stdout)
    assert dry_json == {
        "created": ["new"],
        "updated": ["old"],
        "unchanged": ["keep"],
        "deleted": ["gone"],
        "changed_fields": {"old": ["description"]},
        "dry_run": True,
    }
    assert cli.listed() == before

    real = cli.apply(text, "--prune", "--json")
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout) == {**dry_json, "dry_run": False}
    after = {str(s["id"]): s for s in cli.listed()}
    assert sorted(after) == ["keep", "new", "old"]
    assert after["keep"] == next(s for s in before if s["id"] == "keep")
    assert after["old"]["description"] == "changed"

    again = cli.apply(text, "--prune")
    assert again.stdout.splitlines() == [
        "= keep",
        "= new",
        "= old",
        "0 created, 0 updated, 3 unchanged, 0 deleted",
    ]


def test_a_dry_run_of_a_refused_prune_shows_the_plan_and_says_it_needs_yes(cli: Cli) -> None:
    assert cli.apply(schedules_yaml("a", "b")).returncode == 0
    before = cli.listed()
    proc = cli.apply("", "--prune", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "- a",
        "- b",
        "0 created, 0 updated, 0 unchanged, 2 deleted (dry run: nothing written)",
    ]
    assert proc.stderr.strip().splitlines() == [
        "note: --prune would delete 2 of 2 stored schedules; without --dry-run it needs --yes"
    ]
    assert cli.listed() == before


def test_list_pages_in_id_order(cli: Cli) -> None:
    ids = ["a", "b", "c", "d", "e"]
    assert cli.apply(schedules_yaml(*reversed(ids))).returncode == 0

    first = json.loads(cli("list", "--json", "--limit", "2").stdout)
    assert [s["id"] for s in first["schedules"]] == ["a", "b"]
    assert first["next_after"] == "b"
    second = json.loads(cli("list", "--json", "--limit", "2", "--after", "b").stdout)
    assert [s["id"] for s in second["schedules"]] == ["c", "d"]
    last = json.loads(cli("list", "--json", "--limit", "2", "--after", "d").stdout)
    assert ([s["id"] for s in last["schedules"]], last["next_after"]) == (["e"], None)
    # A page that ends exactly at the last schedule has no next page either.
    exact = json.loads(cli("list", "--json", "--limit", "3", "--after", "b").stdout)
    assert ([s["id"] for s in exact["schedules"]], exact["next_after"]) == (["c", "d", "e"], None)

    table = cli("list", "--limit", "2", "--after", "a").stdout.splitlines()
    assert [line.split()[0] for line in table[1:3]] == ["b", "c"]
    assert table[-1] == "more: firecron list --limit 2 --after c"
    assert "more:" not in cli("list", "--after", "c").stdout
    assert cli("list", "--after", "e").stdout.strip() == "no schedules after e"

    proc = cli("list", "--after", "../x")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --after: invalid schedule id '../x'"]


def test_list_shows_100_by_default(cli: Cli) -> None:
    ids = [f"s{i:03d}" for i in range(101)]
    assert cli.apply(schedules_yaml(*ids)).returncode == 0
    page = json.loads(cli("list", "--json").stdout)
    assert [s["id"] for s in page["schedules"]] == ids[:100]
    assert page["next_after"] == "s099"


# -- progress ---------------------------------------------------------------------------


@pytest.fixture
def sqlite_cli(tmp_path: Path) -> Cli:
    return Cli(f"sqlite:///{tmp_path / 'store' / 'firecron.db'}", {}, tmp_path)


def test_apply_shows_no_progress_when_stderr_is_not_a_terminal(sqlite_cli: Cli) -> None:
    proc = sqlite_cli.apply(schedules_yaml(*(f"s{i:04d}" for i in range(1_500))))
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[-1] == "1500 created, 0 updated, 0 unchanged, 0 deleted"


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    controller, terminal_end = pty.openpty()
    yield controller, terminal_end
    os.close(controller)


def read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_apply_shows_progress_on_a_terminal(sqlite_cli: Cli, terminal: tuple[int, int]) -> None:
    controller, terminal_end = terminal
    text = schedules_yaml(*(f"s{i:04d}" for i in range(1_500)))
    shown = sqlite_cli("apply", sqlite_cli.file(text), stderr=terminal_end)
    os.close(terminal_end)
    progress = read_all(controller)
    assert shown.returncode == 0
    assert "planning" in progress
    assert "1500/1500" in progress
    # The plan itself still goes to stdout, untouched.
    assert shown.stdout.splitlines()[-1] == "1500 created, 0 updated, 0 unchanged, 0 deleted"


# -- the service ------------------------------------------------------------------------


async def stored_ids(store: Store) -> list[str]:
    return [s.id for s in await store.list_schedules()]


async def test_service_refuses_a_mass_prune_and_writes_nothing(store: Store) -> None:
    specs = [make_spec(i) for i in ("a", "b", "c")]
    await admin.apply_schedules(store, specs, T0, prune=False, dry_run=False)
    before = await store.list_schedules()
    with pytest.raises(admin.PruneRefused) as refused:
        await admin.apply_schedules(
            store, [make_spec("a"), make_spec("new")], T0, prune=True, dry_run=False
        )
    assert (refused.value.deleting, refused.value.stored) == (2, 3)
    assert await store.list_schedules() == before  # "new" was not created either
    lines = await admin.apply_schedules(
        store, [make_spec("a"), make_spec("new")], T0, prune=True, dry_run=False, confirmed=True
    )
    assert [(ln.action, ln.schedule_id) for ln in lines] == [
        (admin.ApplyAction.unchanged, "a"),
        (admin.ApplyAction.create, "new"),
        (admin.ApplyAction.delete, "b"),
        (admin.ApplyAction.delete, "c"),
    ]
    assert await stored_ids(store) == ["a", "new"]


@pytest.mark.parametrize(
    ("deleting", "stored", "refused"),
    [(0, 0, False), (0, 5, False), (1, 1, True), (1, 2, False), (2, 3, True), (2, 4, False)],
)
def test_prune_needs_confirmation(deleting: int, stored: int, refused: bool) -> None:
    assert admin.prune_needs_confirmation(deleting, stored) is refused


class RacingStore:
    """A real store on which another writer acts right after ``apply`` has read everything.

    It stands for a dispatcher claiming a schedule (or another ``apply``) between the
    read and the write of a plan, which no real timing can produce on demand.
    """

    def __init__(self, store: Store, race: list[tuple[ScheduleSpec, bool]]) -> None:
        self._store = store
        self._race = race

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def list_schedules(
        self, *, after: str | None = None, limit: int | None = None
    ) -> list[StoredSchedule]:
        listed = await self._store.list_schedules(after=after, limit=limit)
        for spec, exists in self._race:
            if exists:  # a claim: new state, new version
                stored = await self._store.get_schedule(spec.id)
                assert stored is not None
                state = stored.state.model_copy(update={"run_count": 7})
                await self._store.put_schedule(spec, state, expect_version=stored.version)
            else:  # created by someone else meanwhile
                await self._store.put_schedule(
                    spec, planning.initial_state(spec, T0), expect_version=None
                )
        self._race = []
        return listed


async def test_writes_that_lose_a_race_converge(store: Store) -> None:
    claimed = make_spec("claimed")
    await admin.apply_schedules(store, [claimed], T0, prune=False, dry_run=False)
    wanted = [
        make_spec("claimed", description="new text"),
        make_spec("twin", description="from the file"),
        make_spec("plain"),
    ]
    racing = RacingStore(store, [(claimed, True), (make_spec("twin", every="5m"), False)])
    lines = await admin.apply_schedules(
        racing,  # type: ignore[arg-type]
        wanted,
        T0 + timedelta(minutes=1),
        prune=False,
        dry_run=False,
    )
    assert [(ln.action, ln.schedule_id) for ln in lines] == [
        (admin.ApplyAction.update, "claimed"),
        (admin.ApplyAction.create, "twin"),
        (admin.ApplyAction.create, "plain"),
    ]
    stored = {s.id: s for s in await store.list_schedules()}
    assert {i: s.spec for i, s in stored.items()} == {s.id: s for s in wanted}
    # The claim's state was kept: the update was recomputed from what was there.
    assert stored["claimed"].state.run_count == 7
