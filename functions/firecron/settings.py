"""Configuration from ``FIRECRON_*`` environment variables, read once at the edges.

Entry points (``functions/main.py``, the CLI, the dev stack) call
:meth:`Settings.from_env` once and pass the result down; nothing else reads the
environment. A bad value raises :class:`InvalidInputError` naming the variable.
Secrets are excluded from ``repr`` so they never reach logs.
"""

from __future__ import annotations

import json
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta

from firecron.core.durations import parse_duration
from firecron.core.models import TargetAuth, TargetDelivery
from firecron.core.shards import MAX_SHARDS
from firecron.errors import InvalidInputError
from firecron.store._common import NAMESPACE_RULE, valid_namespace
from firecron.transport.sender import FUNCTION_PLACEHOLDER
from firecron.transport.signing import check_signing_secrets, parse_signing_secrets

__all__ = ["ENV_VARS", "Settings"]

ENV_VARS: dict[str, str] = {
    "FIRECRON_STORE": "store URL: sqlite:///PATH or firestore://PROJECT[/DATABASE]",
    "FIRECRON_NAMESPACE": "prefix of the collections/tables (default firecron)",
    "FIRECRON_FUNCTIONS_BASE_URL": "base URL that 'function' targets are resolved against ({base}/NAME), or a template holding {function} once (https://{function}-PROJECT_NUMBER.REGION.run.app)",
    "FIRECRON_SIGNING_SECRET": "comma-separated whsec_<base64> secrets (Standard Webhooks); all sign, the first first, any verifies",
    "FIRECRON_DISPATCH_AUDIENCE": "when set, dispatch verifies the caller's OIDC token",
    "FIRECRON_CONCURRENCY": "requests being sent at once (default 64)",
    "FIRECRON_MAX_OPEN": "requests open at once, sent or waiting for an ack (default 1000)",
    "FIRECRON_ACK_TIMEOUT": "how long a dispatch waits for its acknowledgement (default 5s)",
    "FIRECRON_TICK_BUDGET": "how long one tick may keep claiming due work (default 50s)",
    "FIRECRON_MAX_CONTINUATIONS": "how many continuations one tick may chain when its budget runs out with work still due (default 10; 0: none)",
    "FIRECRON_SHARDS": f"how many shard ticks share the due work, 1 to {MAX_SHARDS} (default 1); a schedule's shard is a stable hash of its id modulo it",
    "FIRECRON_ALLOW_PRIVATE_TARGETS": "allow loopback/private target addresses (dev and tests)",
    "FIRECRON_CA_FILE": "a PEM bundle of CA certificates trusted for https targets in addition to the default trust store (targets behind a private CA)",
    "FIRECRON_DISPATCH_CALLER": "when set, dispatch accepts only OIDC tokens of these service account emails (comma-separated: the scheduler's, and dispatch's own for its shard ticks and continuations)",
    "FIRECRON_OIDC_CERTS_URL": "where Google's OIDC signing certificates are fetched (change only for tests)",
    "FIRECRON_FUNCTION_AUTH": "auth of 'function' targets that set none: none (default) or oidc",
    "FIRECRON_EVENT_LOG": "write every event as a structured JSON log line (default true)",
    "FIRECRON_RUN_RETENTION": "how long finished runs are kept before the store may delete them (default 30d)",
    "FIRECRON_ADMIN_MEMBERS": "who may call the admin API: comma-separated emails (user:EMAIL and serviceAccount:EMAIL as IAM writes them are accepted); each request's Google ID token must carry one",
    "FIRECRON_ADMIN_AUDIENCE": "the admin function's URL, the audience its callers' ID tokens must name; unset, the admin API answers only unauthenticated loopback requests (firecron dev)",
    "FIRECRON_DELIVERY": "how url and function targets that set none are reached: direct (default: the dispatcher POSTs) or cloud_tasks (one Cloud Tasks task per send)",
    "FIRECRON_TASKS_QUEUE": "the Cloud Tasks queue of cloud_tasks delivery: projects/P/locations/L/queues/Q",
    "FIRECRON_TASKS_SERVICE_ACCOUNT": "the service account Cloud Tasks mints auth: oidc targets' ID tokens as",
    "CLOUD_TASKS_EMULATOR_HOST": "host:port of a Cloud Tasks emulator to enqueue to instead of Google (tests, dev)",
    "FIRECRON_CONSOLE_URL": "the web console's base URL, for the run links in notifications (default: FIRECRON_ADMIN_AUDIENCE, the admin function that serves it)",
    "FIRECRON_FUNCTION_TIMEOUTS": "the deployed functions' timeouts, a JSON object of seconds by name ({\"tail\": 540}); validate and apply refuse a continuous window that does not fit its function's",
}
"""Every variable firecron reads, with its meaning (the README and infra tests use this)."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"{name}={raw!r}: expected an integer") from None
    if not lo <= value <= hi:
        raise InvalidInputError(f"{name}={value}: must be between {lo} and {hi}")
    return value


def _duration(env: Mapping[str, str], name: str, default: timedelta) -> timedelta:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse_duration(raw)
    except ValueError as exc:
        raise InvalidInputError(f"{name}: {exc}") from None
    if value <= timedelta(0):
        raise InvalidInputError(f"{name}={raw!r}: must be positive")
    return value


def _bool(env: Mapping[str, str], name: str, *, default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InvalidInputError(f"{name}={raw!r}: expected true or false")


def _delivery(env: Mapping[str, str]) -> TargetDelivery:
    raw = env.get("FIRECRON_DELIVERY", "").strip().lower() or "direct"
    try:
        return TargetDelivery(raw)
    except ValueError:
        raise InvalidInputError(
            f"FIRECRON_DELIVERY={raw!r}: expected direct or cloud_tasks"
        ) from None


_QUEUE_PATH = re.compile(r"^projects/[^/\s]+/locations/[^/\s]+/queues/[A-Za-z0-9-]{1,100}$")


def _tasks_queue(env: Mapping[str, str]) -> str | None:
    """The queue path, or several comma-separated (normalised: no blanks, no repeats)."""
    raw = env.get("FIRECRON_TASKS_QUEUE", "").strip()
    if not raw:
        return None
    paths: list[str] = []
    for part in raw.split(","):
        path = part.strip()
        if not _QUEUE_PATH.match(path):
            raise InvalidInputError(
                f"FIRECRON_TASKS_QUEUE: {path!r} is not a queue path: expected "
                "projects/PROJECT/locations/LOCATION/queues/QUEUE (several: comma-separated)"
            )
        if path not in paths:
            paths.append(path)
    return ",".join(paths)


def _function_auth(env: Mapping[str, str]) -> TargetAuth:
    raw = env.get("FIRECRON_FUNCTION_AUTH", "").strip().lower() or "none"
    try:
        return TargetAuth(raw)
    except ValueError:
        raise InvalidInputError(
            f"FIRECRON_FUNCTION_AUTH={raw!r}: expected none, oidc or hmac"
        ) from None


_MEMBER_PREFIXES = ("user:", "serviceAccount:")


def _admin_members(env: Mapping[str, str]) -> frozenset[str]:
    """``FIRECRON_ADMIN_MEMBERS``: the emails allowed to call the admin API, lowercased."""
    name = "FIRECRON_ADMIN_MEMBERS"
    members: set[str] = set()
    for raw in env.get(name, "").split(","):
        member = raw.strip()
        if not member:
            continue
        for prefix in _MEMBER_PREFIXES:
            if member.startswith(prefix):
                member = member[len(prefix) :]
                break
        else:
            if ":" in member:
                # group: and domain: members cannot be checked against a token's email.
                raise InvalidInputError(
                    f"{name}: {raw.strip()!r}: expected an email, user:EMAIL or serviceAccount:EMAIL"
                )
        if "@" not in member or any(c.isspace() for c in member):
            raise InvalidInputError(f"{name}: {raw.strip()!r} is not an email")
        members.add(member.lower())
    return frozenset(members)


def _console_url(env: Mapping[str, str]) -> str | None:
    """``FIRECRON_CONSOLE_URL`` (an absolute http(s) URL), else ``FIRECRON_ADMIN_AUDIENCE``
    when it is one (the admin function serves the console at ``/``); no trailing slash."""
    raw = env.get("FIRECRON_CONSOLE_URL", "").strip()
    if raw and not raw.startswith(("https://", "http://")):
        raise InvalidInputError(f"FIRECRON_CONSOLE_URL={raw!r}: expected an absolute http(s) URL")
    if not raw:
        # The audience is checked by the admin API, not here: one that is no URL only
        # means there is no link to give.
        audience = env.get("FIRECRON_ADMIN_AUDIENCE", "").strip()
        raw = audience if audience.startswith(("https://", "http://")) else ""
    return raw.rstrip("/") or None


def _ca_file(env: Mapping[str, str]) -> str | None:
    """``FIRECRON_CA_FILE``: a readable PEM bundle of at least one CA certificate."""
    name = "FIRECRON_CA_FILE"
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        with open(raw, encoding="ascii", errors="replace") as file:
            pem = file.read()
    except OSError as exc:
        raise InvalidInputError(f"{name}={raw!r}: cannot read it: {exc.strerror or exc}") from None
    # Checked here, at startup, so that a bad bundle is one line now instead of every
    # https dispatch failing later: parse it as the sender will load it.
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise InvalidInputError(f"{name}={raw!r}: not a PEM bundle of CA certificates")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError):
        raise InvalidInputError(f"{name}={raw!r}: not a PEM bundle of CA certificates") from None
    return raw


def _functions_base_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("FIRECRON_FUNCTIONS_BASE_URL", "").strip()
    if not raw:
        return None
    name = "FIRECRON_FUNCTIONS_BASE_URL"
    if not raw.startswith(("https://", "http://")):
        raise InvalidInputError(f"{name}={raw!r}: expected an http:// or https:// URL")
    rest = raw.replace(FUNCTION_PLACEHOLDER, "", 1)
    if "{" in rest or "}" in rest:
        raise InvalidInputError(
            f"{name}={raw!r}: the only placeholder allowed is {FUNCTION_PLACEHOLDER}, once"
        )
    return raw.rstrip("/")


def _function_timeouts(env: Mapping[str, str]) -> dict[str, timedelta]:
    """``FIRECRON_FUNCTION_TIMEOUTS``: ``{"tail": 540, ...}``, seconds by function name."""
    name = "FIRECRON_FUNCTION_TIMEOUTS"
    raw = env.get(name, "").strip()
    if not raw:
        return {}
    try:
        decoded = json.loads(raw)
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):
        raise InvalidInputError(
            f'{name}: expected a JSON object of seconds by function name, e.g. {{"tail": 540}}'
        )
    timeouts = {}
    for function, seconds in decoded.items():
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
            raise InvalidInputError(
                f"{name}: {function!r} must be a positive number of seconds, got {seconds!r}"
            )
        timeouts[str(function)] = timedelta(seconds=seconds)
    return timeouts


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the documented defaults."""

    store_url: str = "sqlite:///.firecron/firecron.db"
    namespace: str = "firecron"
    functions_base_url: str | None = None
    signing_secrets: tuple[str, ...] = field(default=(), repr=False)
    dispatch_audience: str | None = None
    concurrency: int = 64
    max_open: int = 1000
    ack_timeout: timedelta = timedelta(seconds=5)
    tick_budget: timedelta = timedelta(seconds=50)
    max_continuations: int = 10
    """Continuations a tick may chain, the next page at once (``FIRECRON_MAX_CONTINUATIONS``)."""
    shards: int = 1
    """How many shard ticks share the due work (``FIRECRON_SHARDS``, :mod:`firecron.core.shards`)."""
    allow_private_targets: bool = False
    ca_file: str | None = None
    """A PEM bundle trusted for https targets besides the default store (``FIRECRON_CA_FILE``)."""
    run_retention: timedelta = timedelta(days=30)
    dispatch_caller: str | None = None
    oidc_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    function_auth: TargetAuth = TargetAuth.none
    event_log: bool = True
    deployed: bool = False
    """True on Cloud Run / Cloud Functions (``K_SERVICE`` is set by the platform)."""
    admin_members: frozenset[str] = frozenset()
    """Emails (lowercase) allowed to call the admin API (``FIRECRON_ADMIN_MEMBERS``)."""
    admin_audience: str | None = None
    """The audience the admin API's callers' ID tokens must name (``FIRECRON_ADMIN_AUDIENCE``):
    the admin function's URL. None: only unauthenticated loopback calls (``firecron dev``)."""
    delivery: TargetDelivery = TargetDelivery.direct
    """How ``url`` and ``function`` targets that set no ``delivery`` are reached
    (``FIRECRON_DELIVERY``)."""
    tasks_queue: str | None = None
    """The Cloud Tasks queue path of ``cloud_tasks`` delivery (``FIRECRON_TASKS_QUEUE``)."""
    tasks_service_account: str | None = None
    """The email Cloud Tasks mints ``auth: oidc`` ID tokens as (``FIRECRON_TASKS_SERVICE_ACCOUNT``)."""
    tasks_emulator_host: str | None = None
    """``host:port`` of a Cloud Tasks emulator (``CLOUD_TASKS_EMULATOR_HOST``)."""
    function_timeouts: Mapping[str, timedelta] = field(default_factory=dict)
    """The deployed worker functions' timeouts by name (``FIRECRON_FUNCTION_TIMEOUTS``, a
    JSON object of seconds, as ``terraform output -json function_timeouts`` prints it):
    a continuous schedule's window must fit its function's."""

    console_url: str | None = None
    """The web console's base URL (``FIRECRON_CONSOLE_URL``, else ``FIRECRON_ADMIN_AUDIENCE``),
    without a trailing slash: notifications link a run as ``{console_url}/runs/{id}``.
    None: they name the ``firecron run`` command instead."""
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The environment as read at startup, where sinks find the secrets they name
    (``routing_key_env``, ``password_env``): read once here like every other variable,
    and kept out of ``repr`` because it holds them."""

    def __post_init__(self) -> None:
        # Every secret is checked where Settings are made, so a bad one fails at startup
        # with one line instead of failing every signature later.
        check_signing_secrets(self.signing_secrets)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the ``FIRECRON_*`` variables from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        namespace = env.get("FIRECRON_NAMESPACE", "").strip() or "firecron"
        if not valid_namespace(namespace):
            raise InvalidInputError(f"FIRECRON_NAMESPACE={namespace!r}: {NAMESPACE_RULE}")
        settings = cls(
            store_url=env.get("FIRECRON_STORE", "").strip() or cls.store_url,
            namespace=namespace,
            functions_base_url=_functions_base_url(env),
            signing_secrets=parse_signing_secrets(env.get("FIRECRON_SIGNING_SECRET", "")),
            dispatch_audience=env.get("FIRECRON_DISPATCH_AUDIENCE", "").strip() or None,
            concurrency=_int(env, "FIRECRON_CONCURRENCY", 64, 1, 10_000),
            max_open=_int(env, "FIRECRON_MAX_OPEN", 1000, 1, 100_000),
            ack_timeout=_duration(env, "FIRECRON_ACK_TIMEOUT", timedelta(seconds=5)),
            tick_budget=_duration(env, "FIRECRON_TICK_BUDGET", timedelta(seconds=50)),
            max_continuations=_int(env, "FIRECRON_MAX_CONTINUATIONS", 10, 0, 1000),
            shards=_int(env, "FIRECRON_SHARDS", 1, 1, MAX_SHARDS),
            allow_private_targets=_bool(env, "FIRECRON_ALLOW_PRIVATE_TARGETS"),
            ca_file=_ca_file(env),
            run_retention=_duration(env, "FIRECRON_RUN_RETENTION", timedelta(days=30)),
            dispatch_caller=env.get("FIRECRON_DISPATCH_CALLER", "").strip() or None,
            oidc_certs_url=env.get("FIRECRON_OIDC_CERTS_URL", "").strip() or cls.oidc_certs_url,
            function_auth=_function_auth(env),
            event_log=_bool(env, "FIRECRON_EVENT_LOG", default=True),
            deployed=bool(env.get("K_SERVICE", "").strip()),
            function_timeouts=_function_timeouts(env),
            delivery=_delivery(env),
            tasks_queue=_tasks_queue(env),
            tasks_service_account=env.get("FIRECRON_TASKS_SERVICE_ACCOUNT", "").strip() or None,
            tasks_emulator_host=env.get("CLOUD_TASKS_EMULATOR_HOST", "").strip() or None,
            admin_members=_admin_members(env),
            admin_audience=env.get("FIRECRON_ADMIN_AUDIENCE", "").strip() or None,
            console_url=_console_url(env),
            secret_env=dict(env),
        )
        if settings.delivery is TargetDelivery.cloud_tasks and settings.tasks_queue is None:
            raise InvalidInputError(
                "FIRECRON_TASKS_QUEUE: required when FIRECRON_DELIVERY=cloud_tasks"
            )
        if settings.max_open < settings.concurrency:
            raise InvalidInputError(
                f"FIRECRON_MAX_OPEN={settings.max_open} is below "
                f"FIRECRON_CONCURRENCY={settings.concurrency}"
            )
        return settings

    def with_store(self, store_url: str | None) -> Settings:
        """A copy using ``store_url`` when given (the CLI's ``--store``)."""
        return replace(self, store_url=store_url) if store_url else self
