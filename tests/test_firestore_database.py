"""A named Firestore database (``firestore://PROJECT/DATABASE``) end to end on the emulator.

The deployed functions get ``FIRECRON_STORE=firestore://PROJECT/DATABASE`` when
``firestore_database`` is not ``(default)`` (infra/firestore.tf); the emulator keeps
each database id apart, as Firestore does, so a store on a named database must neither
see nor touch the ``(default)`` one, even under the same namespace.
"""

from __future__ import annotations

from uuid import uuid4

import pytest

from _factories import T0, make_run, make_spec, make_state
from conftest import FIRESTORE_TEST_PROJECT
from firecron.store import open_store

pytestmark = pytest.mark.emulator


async def test_a_named_database_is_isolated_from_the_default_one(firestore_emulator: str) -> None:
    namespace = f"d{uuid4().hex[:12]}"
    database = f"named-{uuid4().hex[:8]}"
    named = open_store(f"firestore://{FIRESTORE_TEST_PROJECT}/{database}", namespace)
    default = open_store(f"firestore://{FIRESTORE_TEST_PROJECT}", namespace)
    try:
        await named.put_schedule(make_spec("only-named"), make_state(), expect_version=None)
        assert await named.create_run(make_run("only-named", T0))
        await default.put_schedule(make_spec("only-default"), make_state(), expect_version=None)

        assert [s.spec.id for s in await named.list_schedules()] == ["only-named"]
        assert [s.spec.id for s in await default.list_schedules()] == ["only-default"]
        assert [r.schedule_id for r in await named.list_runs()] == ["only-named"]
        assert await default.list_runs() == []
        assert [s.spec.id for s in await named.due_schedules(T0, 10)] == ["only-named"]
    finally:
        await named.close()
        await default.close()
