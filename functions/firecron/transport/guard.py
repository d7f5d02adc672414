"""The SSRF guard: which URLs firecron may POST to.

Contract of :func:`resolve_target`: the URL is refused with a
:class:`~firecron.errors.TargetRefusedError` (one line naming the URL, without its
query or userinfo, and the reason) when

- its scheme is not ``https`` (``http`` is accepted only with ``allow_private``, for
  the dev stack and tests);
- it carries userinfo (``https://user:pass@host``), which would send credentials;
- its host is the metadata server by name (``metadata.google.internal``, ``metadata``)
  or any address it resolves to is a metadata address (``fd00:ec2::254``);
- any address the host resolves to is link-local (169.254.0.0/16, which holds the
  metadata server 169.254.169.254, or fe80::/10), unspecified (0.0.0.0, ::),
  multicast, or reserved, whatever ``allow_private`` says;
- any address is loopback (127.0.0.0/8, ::1), private (10/8, 172.16/12, 192.168/16,
  fc00::/7 and the other non-global ranges) or CGNAT (100.64.0.0/10), or the host is
  ``localhost`` or a ``*.localhost`` name, unless ``allow_private`` is set.

Every resolved address is checked, so a name cannot hide one bad address among good
ones. IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are judged as their IPv4 address.
A name that does not resolve raises :class:`OSError` (``socket.gaierror``): that is a
network failure, worth retrying, not a refusal.

The rules live in :mod:`firecron.core.target_rules`, once: the part that needs no DNS
(:func:`~firecron.core.target_rules.check_static`) is also what schedule validation
applies, so a target refused here at every occurrence is refused at ``validate``.

DNS is resolved with the running event loop's ``getaddrinfo`` and cached for
:data:`DNS_CACHE_SECONDS`, so a tick that fans out to one host resolves it once.

DNS rebinding: a check followed by a separate connect could be fooled by a name
that resolves to a public address for the check and to a private one for the connect.
:class:`~firecron.transport.sender.Sender` (which sends dispatches and notification
webhooks alike) does not do that: it connects to the exact address
:func:`resolve_target` approved (with the original host name kept for the ``Host``
header, TLS SNI and certificate verification).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass

from firecron.core.target_rules import address_problem, check_static, host_url, redact_url
from firecron.errors import TargetRefusedError

__all__ = [
    "DNS_CACHE_SECONDS",
    "ResolvedTarget",
    "redact_url",
    "resolve_host",
    "resolve_target",
]

DNS_CACHE_SECONDS = 30.0
"""How long a successful lookup is reused. Short: targets may move between ticks."""


@dataclass(frozen=True)
class ResolvedTarget:
    """A URL that passed the guard, with the addresses it was approved for."""

    scheme: str
    """``http`` or ``https``."""
    host: str
    """Host name as written (lowercase, IPv6 without brackets), for ``Host`` and SNI."""
    port: int
    """Explicit port, or the scheme's default."""
    target: str
    """Path and query to send in the request line (``/`` when the URL has no path)."""
    addresses: tuple[str, ...]
    """Every approved address, in resolver order; the sender connects to the first."""

    @property
    def host_header(self) -> str:
        """The ``Host`` header value: ``host`` plus ``:port`` when not the default port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _refuse(url: str, why: str, name: str | None) -> TargetRefusedError:
    return TargetRefusedError(f"{name or f'target {redact_url(url)}'} refused: {why}")


_dns_cache: dict[tuple[str, int], tuple[float, tuple[str, ...]]] = {}


async def _resolve(host: str, port: int) -> tuple[str, ...]:
    key = (host, port)
    now = time.monotonic()
    hit = _dns_cache.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # Keep resolver order (it encodes the system's address preference), without duplicates.
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if len(_dns_cache) > 1024:  # bounded: targets are few, but never grow without limit
        _dns_cache.clear()
    _dns_cache[key] = (now + DNS_CACHE_SECONDS, addresses)
    return addresses


async def resolve_target(
    url: str, *, allow_private: bool, name: str | None = None
) -> ResolvedTarget:
    """Check ``url`` by the module rules and return it with its approved addresses.

    Raises :class:`TargetRefusedError` when refused (its line names ``name``, by default
    ``target`` and the redacted URL), :class:`OSError` when the name does not resolve.
    """
    try:
        static = check_static(url, allow_private=allow_private)
    except ValueError as exc:
        raise _refuse(url, str(exc), name) from None
    host = static.host
    if static.literal is not None:
        # check_static has judged the literal address already.
        return ResolvedTarget(
            static.scheme, host, static.port, static.target, (str(static.literal),)
        )
    addresses = await _resolve(host, static.port)
    if not addresses:
        raise OSError(f"{host} resolved to no address")
    for address in addresses:
        problem = address_problem(ipaddress.ip_address(address), allow_private=allow_private)
        if problem is not None:
            raise _refuse(url, f"{host} resolves to {problem}", name)
    return ResolvedTarget(static.scheme, host, static.port, static.target, addresses)


async def resolve_host(host: str, port: int, *, allow_private: bool) -> tuple[str, ...]:
    """The approved addresses of a server firecron speaks another protocol to (the SMTP
    server of an email sink), by the same rules as an ``https`` URL on that host and port.

    Raises :class:`TargetRefusedError` naming ``host:port`` when refused, :class:`OSError`
    when the name does not resolve. Connect to one of the returned addresses, not to the
    name again: a second lookup could be rebound.
    """
    url = host_url(host, port)
    name = f"host {url.removeprefix('https://').removesuffix('/')}"
    return (await resolve_target(url, allow_private=allow_private, name=name)).addresses
