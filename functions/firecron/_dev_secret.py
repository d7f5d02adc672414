"""The signing secret of a local (SQLite) store: where it lives, made once, read by the CLI.

``firecron dev`` signs every dispatch and its workers refuse unsigned requests, so a
forged POST to a local worker cannot run anything. With no ``FIRECRON_SIGNING_SECRET``
in the environment, the secret of a store ``sqlite:///PATH`` is kept in the file
``PATH.signing-secret`` beside the database (:func:`secret_path`):

- ``firecron dev`` creates it on first start (:func:`with_dev_secret` with
  ``create=True``): a fresh ``whsec_<base64>`` of 32 random bytes, written to a file of
  mode 0600 that appears complete or not at all, and reused on every later start;
- ``firecron trigger`` only reads it (``create=False``), so it signs like the stack it
  sends to, and never leaves a secret behind for a stack that does not exist.

``FIRECRON_SIGNING_SECRET``, when set, wins over the file and the file is not touched.
Other stores (Firestore) have no local secret: their secret is configured. The secret
is never logged or put in an error message.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from dataclasses import replace
from pathlib import Path

from firecron.errors import InvalidInputError
from firecron.settings import Settings
from firecron.transport.signing import signing_key

__all__ = ["SECRET_SUFFIX", "new_secret", "secret_path", "with_dev_secret"]

SECRET_SUFFIX = ".signing-secret"  # noqa: S105 (a file name suffix, not a secret)
"""Appended to the database path to name its secret file."""


def secret_path(store_url: str) -> Path | None:
    """The secret file of a ``sqlite:///PATH`` store, ``PATH.signing-secret``; None otherwise."""
    if not store_url.startswith("sqlite:///"):
        return None
    database = store_url.removeprefix("sqlite:///")
    if not database or database == ":memory:":
        return None
    return Path(database + SECRET_SUFFIX)


def new_secret() -> str:
    """A new Standard Webhooks secret: ``whsec_`` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _read(path: Path) -> str:
    try:
        secret = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not ASCII text"
        raise InvalidInputError(f"{path}: cannot read the signing secret: {reason}") from None
    try:
        signing_key(secret)
    except InvalidInputError:
        # The message must not quote the file: it holds a (possibly half-valid) secret.
        raise InvalidInputError(
            f"{path}: not a whsec_<base64> signing secret; delete it and `firecron dev` makes a new one"
        ) from None
    return secret


def _create(path: Path) -> None:
    """Write a new secret to ``path`` unless the file exists; it appears whole or not at all.

    The secret goes to a private temporary file first (``O_CREAT | O_EXCL``, mode
    0600, so it is never readable by others, whatever the umask), then is hard-linked
    to ``path``: linking fails if ``path`` exists, so of two stacks starting at once on
    one store, exactly one secret wins and neither reads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(new_secret() + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def with_dev_secret(settings: Settings, *, create: bool) -> Settings:
    """``settings`` signing with its store's secret file when no secret is configured.

    Unchanged when ``settings.signing_secrets`` is set (``FIRECRON_SIGNING_SECRET``) or
    the store is not a SQLite file. Otherwise the file of :func:`secret_path` is read;
    when it does not exist it is created if ``create`` (``firecron dev``), else the
    settings stay unsigned (``firecron trigger`` on a store no dev stack has used).
    Raises :class:`InvalidInputError` (one line, naming the file, never the secret) when
    the file cannot be read or does not hold a ``whsec_`` secret.
    """
    if settings.signing_secrets:
        return settings
    path = secret_path(settings.store_url)
    if path is None:
        return settings
    if create and not path.exists():
        try:
            _create(path)
        except OSError as exc:
            raise InvalidInputError(
                f"{path}: cannot create the signing secret: {exc.strerror or exc}"
            ) from None
    elif not path.exists():
        return settings
    return replace(settings, signing_secrets=(_read(path),))


def program_settings(store_url: str | None = None, namespace: str | None = None) -> Settings:
    """The settings of a program using firecron as a library (``firecron.trigger``,
    ``firecron.State``): the ``FIRECRON_*`` environment, overridden by ``store_url`` and
    ``namespace`` when given, and, against a ``firecron dev`` store without a configured
    secret, that store's own secret (read, never created), as the CLI signs."""
    import dataclasses

    from firecron.settings import Settings

    settings = Settings.from_env()
    settings = dataclasses.replace(
        settings,
        store_url=settings.store_url if store_url is None else store_url,
        namespace=settings.namespace if namespace is None else namespace,
    )
    return with_dev_secret(settings, create=False)
