"""The web console: server-rendered pages over the store, at ``/`` of the admin app.

:func:`register` adds the ``console`` blueprint to a Flask app. Pages read through the
store (never through HTTP) and render without JavaScript; with it, htmx (vendored in
``static/htmx.min.js``) refreshes the live parts every 2 s and the buttons POST to the
admin API (``/api/v1/...``) with the header ``X-Requested-By: firecron``, which the API
requires of every state-changing request.

Pages: ``/`` (schedules), ``/timeline``, ``/runs/<id>``, ``/pipelines``, ``/state``.
"""

from __future__ import annotations

from flask import Flask

from firecron.console._bridge import StoreBridge
from firecron.console.views import EXTENSION, make_blueprint
from firecron.settings import Settings

__all__ = ["register"]


def register(app: Flask, settings: Settings) -> None:
    """Serve the console at ``/`` of ``app``, reading the store ``settings`` name.

    The store is opened at the first page request, on the console's own loop thread
    (:class:`firecron.console._bridge.StoreBridge`), and kept for the app's life; it is
    reachable as ``app.extensions["firecron_console"]`` (tests close it). Registering
    twice on one app raises ``ValueError`` (Flask refuses a second blueprint of one name).
    """
    bridge = StoreBridge(settings)
    app.extensions[EXTENSION] = bridge
    app.register_blueprint(make_blueprint(bridge))
