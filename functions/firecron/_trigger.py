"""``firecron.trigger``: start a run of a schedule from any Python program."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from firecron.core.models import JsonValue

__all__ = ["trigger"]


def trigger(
    schedule_id: str,
    params: Mapping[str, JsonValue] | None = None,
    *,
    store_url: str | None = None,
) -> str:
    """Run ``schedule_id`` now, as ``firecron trigger`` does, and return the run's id.

    For on-demand schedules (no ``cron``, ``every`` or ``at``) this is how code starts
    them outside a worker (inside one, use ``ctx.submit``, which is exactly once per
    key). The run is ``manual``: ``params`` go over the schedule's, the overlap policy
    does not apply, and it is claimed and sent one-way before this returns (its
    acknowledgement is waited for, never its work). Settings come from the
    ``FIRECRON_*`` environment (``store_url`` overrides ``FIRECRON_STORE``), so the
    process needs what ``dispatch`` needs to send (``FIRECRON_FUNCTIONS_BASE_URL``, the
    signing secret; against a ``firecron dev`` store, its own secret is used as
    ``firecron trigger`` uses it). Blocking: call it from synchronous code, not from a running event
    loop. Raises :class:`~firecron.errors.NotFoundError` for an unknown schedule.
    (:class:`firecron.Client` does the same, ``Client().trigger(id, params=...)``, and
    returns the whole run.)
    """
    from firecron import service
    from firecron._dev_secret import program_settings
    from firecron.dispatch import Dispatcher
    from firecron.store import open_store

    settings = program_settings(store_url)

    async def run() -> str:
        store = open_store(settings.store_url, settings.namespace)
        dispatcher = Dispatcher(store, settings)
        try:
            return (await service.trigger(dispatcher, schedule_id, params)).id
        finally:
            await dispatcher.aclose()
            await store.close()

    return asyncio.run(run())
