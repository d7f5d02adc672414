"""One real tick in its own process, for the chaos suite to SIGKILL or starve.

``python -m bench.chaos._driver [--concurrency N]`` reads the store from
``FIRECRON_STORE``/``FIRECRON_NAMESPACE`` (and the rest of ``FIRECRON_*``), prints
``ticking`` once the store is open, runs one tick at the clock's ``now`` and prints its
summary as one JSON line. Logs (and any traceback) go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import replace

from firecron.dispatch import run_tick
from firecron.settings import Settings
from firecron.store import open_store


async def _main(concurrency: int) -> None:
    settings = replace(Settings.from_env(), concurrency=concurrency)
    store = open_store(settings.store_url, settings.namespace)
    try:
        print("ticking", flush=True)
        summary = await run_tick(settings, store)
    finally:
        await store.close()
    print(json.dumps(summary.as_dict()), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(_main(parser.parse_args().concurrency))
