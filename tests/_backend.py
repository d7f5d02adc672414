"""One store for tests whose workers run in other processes: its URL, namespace and a client.

The ``backend`` fixture (``tests/conftest.py``) gives a :class:`Backend` over each store
in turn: SQLite (a file shared with the worker processes) and Firestore (the emulator,
a fresh namespace per test).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from _workers import worker_env
from firecron.dispatch import Dispatcher
from firecron.settings import Settings
from firecron.store import Store, open_store

__all__ = ["SECRET", "Backend", "open_backend"]

SECRET = "whsec_ZTJlLXNlY3JldA=="
"""The signing secret the dispatcher and the workers share."""


@dataclass
class Backend:
    """A store as the worker processes see it (``url``, ``namespace``) and a client of it."""

    url: str
    namespace: str
    store: Store

    def env(self, **extra: str) -> dict[str, str]:
        """A worker process's environment for this store (plus ``extra`` variables)."""
        return worker_env(self.url, secrets=[SECRET], namespace=self.namespace, extra=extra)

    def dispatcher(self, **overrides: Any) -> Dispatcher:
        """A dispatcher on this store, signing with :data:`SECRET`, private targets allowed."""
        fields: dict[str, Any] = {
            "store_url": self.url,
            "namespace": self.namespace,
            "signing_secrets": (SECRET,),
            "allow_private_targets": True,
            "ack_timeout": timedelta(seconds=5),
        }
        fields.update(overrides)
        return Dispatcher(self.store, Settings(**fields))


def open_backend(kind: str, tmp_path: Path) -> Backend:
    """A :class:`Backend` on ``kind`` (``sqlite`` or ``firestore``; the emulator must run)."""
    if kind == "sqlite":
        url, namespace = f"sqlite:///{tmp_path / 'e2e.db'}", "firecron"
    else:
        url, namespace = "firestore://firecron-test", f"e{uuid.uuid4().hex[:10]}"
    return Backend(url, namespace, open_store(url, namespace))
