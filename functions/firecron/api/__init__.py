"""The admin HTTP API: ``/api/v1`` (JSON), and the web console at ``/`` in the same app.

:func:`make_app` builds the WSGI app; ``firecron dev`` serves it beside the workers and
the deployed ``admin`` function (``functions/main.py``) serves it behind IAM. The API is
one face of the admin service, with the CLI, the console and :class:`firecron.Client`:
every route calls the same functions (:mod:`firecron.service`, :mod:`firecron.admin`,
:mod:`firecron.operations`) and only translates their errors into problem documents.

Contract:

- Resources: ``schedules`` (list, get, put, delete, ``:pause``, ``:resume``,
  ``:trigger``, ``:backfill``), ``runs`` (list, get, ``:cancel``, ``:rerun``),
  ``pipelines`` (list, get with the DAG), ``state`` (list, get, put, delete), and
  ``openapi.json``, generated from the pydantic models. Each module's docstring states
  its routes (``_schedules``, ``_runs``, ``_pipelines``, ``_state``).
- Errors are ``application/problem+json`` (RFC 9457) with the ``field`` at fault
  (:mod:`firecron.api._problem`): 400 malformed request, 401 unauthenticated, 403
  refused (not a member, not loopback, no ``X-Requested-By``), 404 unknown, 409 a race
  lost, 412 ``If-Match`` not the current version, 422 invalid input (the same
  validation as a schedules file), 503 the store failed.
- Schedules and state entries carry their version as ``ETag``; ``If-Match`` makes a
  put or delete conditional on it.
- Who may call, on every path of the app (the console's too): :mod:`firecron.api._auth`
  (Google ID tokens of ``FIRECRON_ADMIN_MEMBERS`` when ``FIRECRON_ADMIN_AUDIENCE`` is
  set; else loopback callers only), and state-changing requests need
  ``X-Requested-By: firecron``.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any

import flask

from firecron.api._auth import Authenticate, check_request
from firecron.api._problem import PROBLEM_JSON, Problem, problem_of
from firecron.api._service import Service
from firecron.errors import FirecronError
from firecron.settings import Settings

__all__ = ["PREFIX", "Problem", "Service", "close", "make_app", "serve_request", "service_of"]

PREFIX = "/api/v1"
"""Where the API answers in the app."""

log = logging.getLogger("firecron.api")


def make_app(
    settings: Settings,
    *,
    authenticate: Authenticate | None = None,
    console: bool = True,
) -> flask.Flask:
    """The admin app: the API under :data:`PREFIX` and (``console=True``) the console.

    ``authenticate(request)`` returns the caller or None (401); by default it is
    :func:`firecron.api._auth.check_request`'s (Google ID tokens of the members, or
    loopback only). Nothing is opened here: the store and its loop start on the first
    request (:class:`Service`); :func:`close` releases them.
    """
    from firecron.api import _openapi, _pipelines, _runs, _schedules, _state

    app = flask.Flask("firecron.api")
    service = Service(settings)
    app.extensions["firecron.api"] = service
    api = flask.Blueprint("firecron_api", __name__, url_prefix=PREFIX)
    for part in (_schedules, _runs, _pipelines, _state):
        api.register_blueprint(part.blueprint)

    @api.get("/openapi.json")
    def _openapi_json() -> flask.Response:
        return flask.jsonify(_openapi.document())

    app.register_blueprint(api)

    @app.before_request
    def _authenticated() -> None:
        # Every path of the app, the console's pages included: they show every run.
        flask.g.firecron_caller = check_request(flask.request, settings, authenticate)

    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> flask.Response:
        return _problem_response(exc)

    @app.errorhandler(FirecronError)
    def _firecron_error(exc: FirecronError) -> flask.Response:
        precondition = flask.request.headers.get("If-Match") is not None
        problem = problem_of(exc, precondition=precondition)
        if problem.status >= 500:
            log.error("admin API %s %s: %s", flask.request.method, flask.request.path, exc)
        return _problem_response(problem)

    @app.errorhandler(404)
    @app.errorhandler(405)
    def _http_error(exc: Any) -> Any:
        if not flask.request.path.startswith(PREFIX + "/"):
            return exc  # the console's own pages answer as it wants
        status = getattr(exc, "code", 404) or 404
        detail = (
            f"no such resource: {flask.request.path}"
            if status == 404
            else f"{flask.request.method} is not allowed on {flask.request.path}"
        )
        return _problem_response(Problem(status, detail))

    if console:
        from firecron.console import register

        register(app, settings)
    return app


def _problem_response(problem: Problem) -> flask.Response:
    response = flask.Response(problem.body(), status=problem.status, mimetype=PROBLEM_JSON)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


def service_of(app: flask.Flask) -> Service:
    """The :class:`Service` (store, dispatcher, clock) the app's routes run on."""
    service: Service = app.extensions["firecron.api"]
    return service


def close(app: flask.Flask) -> None:
    """Close the app's store and stop its loop (idempotent)."""
    service_of(app).close()


_served: flask.Flask | None = None
_served_lock = threading.Lock()


def serve_request(request: flask.Request) -> flask.Response:
    """Answer one request of the deployed ``admin`` function (``functions/main.py``).

    The app is made once per process from ``Settings.from_env()`` (a bad setting is a
    500 problem naming it, every time) and dispatches the request as its own: the API,
    the console, their static files. Cloud Run already let only the IAM invoker members
    through; the app checks the caller's token again (see :mod:`firecron.api._auth`).
    """
    global _served
    app = _served
    if app is None:
        with _served_lock:
            if _served is None:
                try:
                    settings = Settings.from_env()
                except FirecronError as exc:
                    log.error("admin: bad configuration: %s", exc)
                    return _problem_response(Problem(500, f"bad configuration: {exc}"))
                _served = make_app(settings)
            app = _served
    # The body is read once, by the outer (functions-framework) request, which keeps it
    # and reads it again after the answer: the app reads its own copy.
    body = request.get_data(cache=True)
    environ = {**request.environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
    with app.request_context(environ):
        response: flask.Response = app.full_dispatch_request()
        return response
