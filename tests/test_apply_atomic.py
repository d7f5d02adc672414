"""``apply`` is all or nothing: nothing is written unless every entry is prepared.

- On SQLite the writes are one transaction: a write that fails midway (a trigger on
  the real database refuses one row) leaves the store exactly as it was.
- On both stores, a schedule that no store can encode (a lone surrogate, which a YAML
  loader without libyaml produces from ``"\\ud800"``) fails the apply before the first
  write, with one line naming the entry and the field.
- A Firestore apply larger than one batch is not atomic across batches; after a failure
  midway (injected by a store wrapper, a fault the emulator cannot produce on demand)
  the same apply again converges.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from _factories import T0, make_spec
from firecron import admin
from firecron.cli import main
from firecron.core.models import StoredSchedule
from firecron.errors import StoreError
from firecron.store import open_store
from firecron.store.base import ScheduleWrite, Store


def _file(*ids: str, description: str = "") -> str:
    return "schedules:\n" + "".join(
        f"  - id: {i}\n    every: 1h\n    description: '{description}'\n"
        f"    target: {{url: 'https://example.com/{i}'}}\n"
        for i in ids
    )


def _firecron(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    code = info.value.code
    return (code if isinstance(code, int) else 0), capsys.readouterr().err.splitlines()


async def _stored(url: str) -> dict[str, str]:
    store = open_store(url)
    try:
        return {s.id: s.spec.description for s in await store.list_schedules()}
    finally:
        await store.close()


@pytest.mark.parametrize("when", ["INSERT", "UPDATE"])
def test_a_sqlite_write_failing_midway_leaves_the_store_as_it_was(
    when: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "firecron.db"
    url = f"sqlite:///{db}"
    path = tmp_path / "s.yaml"
    before: dict[str, str] = {}
    if when == "UPDATE":
        path.write_text(_file("ok-1", "ok-2", "ok-3", description="old"))
        assert _firecron(capsys, "apply", str(path), "--store", url)[0] == 0
        before = asyncio.run(_stored(url))
    else:
        path.write_text(_file())
        assert _firecron(capsys, "apply", str(path), "--store", url)[0] == 0  # the schema
    with sqlite3.connect(db) as conn:
        conn.execute(
            f"CREATE TRIGGER refuse_ok_3 BEFORE {when} ON firecron_schedules"
            " WHEN NEW.id = 'ok-3' BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )
    path.write_text(_file("ok-1", "ok-2", "ok-3", "ok-4", description="new"))
    code, err = _firecron(capsys, "apply", str(path), "--store", url)
    assert code == 1
    assert len(err) == 1
    assert err[0].startswith("error: ")
    assert "injected fault" in err[0]
    # ok-1 and ok-2 came before the failing row, ok-4 after: none of them was written.
    assert asyncio.run(_stored(url)) == before


async def test_a_value_no_store_can_encode_fails_the_apply_before_any_write(store: Store) -> None:
    specs = [
        make_spec("ok-1"),
        make_spec("bad", description="caf\ud800", params={"k": ["x", "\udfff"]}),
        make_spec("worse", labels={"team": "a\ud800"}),
        make_spec("ok-3"),
    ]
    with pytest.raises(admin.UnpreparedSchedules) as info:
        await admin.apply_schedules(store, specs, T0, prune=False, dry_run=False)
    assert info.value.errors == [
        "schedules[1] (id=bad): description: '\\ud800' is not valid Unicode text"
        " (a lone surrogate)",
        "schedules[2] (id=worse): labels.team: '\\ud800' is not valid Unicode text"
        " (a lone surrogate)",
    ]
    assert await store.list_schedules() == []
    # validate's check says the same without a store.
    assert admin.unwritable(specs, T0) == info.value.errors


class _FailsMidway:
    """A store whose ``write_schedules`` writes the first half of the writes, then fails:
    a Firestore apply whose later batches were lost."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def write_schedules(
        self, writes: Sequence[ScheduleWrite], deletes: Sequence[str] = ()
    ) -> list[StoredSchedule | None]:
        await self._store.write_schedules(writes[: len(writes) // 2])
        raise StoreError("write_schedules: injected failure after the first batch")


async def test_an_apply_that_failed_midway_converges_when_run_again(store: Store) -> None:
    await admin.apply_schedules(store, [make_spec("kept")], T0, prune=False, dry_run=False)
    specs = [make_spec("kept")] + [make_spec(f"new-{i}") for i in range(6)]
    broken: Store = _FailsMidway(store)  # type: ignore[assignment]
    with pytest.raises(StoreError, match="injected"):
        await admin.apply_schedules(broken, specs, T0, prune=False, dry_run=False)
    assert len(await store.list_schedules()) == 1 + 3  # a partial apply
    lines = await admin.apply_schedules(store, specs, T0, prune=False, dry_run=False)
    assert [ln.action for ln in lines] == [admin.ApplyAction.unchanged] * 4 + [
        admin.ApplyAction.create
    ] * 3
    assert [s.id for s in await store.list_schedules()] == [s.id for s in specs]
