"""The SSRF guard: which URLs firecron may POST to.

Contract of :func:`check_target` / :func:`resolve_target`: the URL is refused with a
:class:`~firecron.errors.TargetRefusedError` (one line naming the URL, without its
query or userinfo, and the reason) when

- its scheme is not ``https`` (``http`` is accepted only with ``allow_private``, for
  the dev stack and tests);
- it carries userinfo (``https://user:pass@host``), which would send credentials;
- its host is the metadata server by name (``metadata.google.internal``, ``metadata``);
- any address the host resolves to is link-local (169.254.0.0/16, which holds the
  metadata server 169.254.169.254, or fe80::/10), unspecified (0.0.0.0, ::),
  multicast, or reserved, whatever ``allow_private`` says;
- any address is loopback (127.0.0.0/8, ::1), private (10/8, 172.16/12, 192.168/16,
  fc00::/7 and the other non-global ranges) or CGNAT (100.64.0.0/10), unless
  ``allow_private`` is set.

Every resolved address is checked, so a name cannot hide one bad address among good
ones. IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are judged as their IPv4 address.
A name that does not resolve raises :class:`OSError` (``socket.gaierror``): that is a
network failure, worth retrying, not a refusal.

DNS is resolved with the running event loop's ``getaddrinfo`` and cached for
:data:`DNS_CACHE_SECONDS`, so a tick that fans out to one host resolves it once.

DNS rebinding: a check followed by a separate connect could be fooled by a name
that resolves to a public address for the check and to a private one for the connect.
:class:`~firecron.transport.sender.Sender` does not do that: it connects to the exact
address :func:`resolve_target` approved (with the original host name kept for the
``Host`` header, TLS SNI and certificate verification). :func:`check_target` alone
has the check-then-connect gap and is meant for validation and messages only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from firecron.errors import TargetRefusedError

__all__ = ["DNS_CACHE_SECONDS", "ResolvedTarget", "check_target", "redact_url", "resolve_target"]

DNS_CACHE_SECONDS = 30.0
"""How long a successful lookup is reused. Short: targets may move between ticks."""

_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata"})
# 100.64.0.0/10 (RFC 6598) is not "private" for the ipaddress module, but it is not
# reachable from the internet either: carrier-grade NAT, and in clouds often internal.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def redact_url(url: str) -> str:
    """``url`` without userinfo, query and fragment, safe for logs and error messages.

    Queries are dropped because they often carry tokens (``?key=...``).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return SplitResult(parts.scheme, netloc, parts.path, "", "").geturl()


def _refuse(url: str, why: str) -> TargetRefusedError:
    return TargetRefusedError(f"target {redact_url(url)} refused: {why}")


def _address_problem(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Why ``ip`` may not be a target, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # Always refused, even in dev: the metadata server lives at a link-local address.
    if ip.is_link_local:
        return f"{ip} is link-local (metadata server range)"
    if ip.is_unspecified:
        return f"{ip} is unspecified"
    if ip.is_multicast:
        return f"{ip} is multicast"
    if ip.is_reserved and not ip.is_loopback:  # ::1 sits in the reserved ::/8
        return f"{ip} is reserved"
    if allow_private:
        return None
    if ip.is_loopback:
        return f"{ip} is loopback (set FIRECRON_ALLOW_PRIVATE_TARGETS for dev)"
    if ip in _CGNAT or ip.is_private or not ip.is_global:
        return f"{ip} is private (set FIRECRON_ALLOW_PRIVATE_TARGETS for dev)"
    return None


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


async def resolve_target(url: str, *, allow_private: bool) -> ResolvedTarget:
    """Check ``url`` by the module rules and return it with its approved addresses.

    Raises :class:`TargetRefusedError` when refused, :class:`OSError` when the name
    does not resolve.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise _refuse(url, f"invalid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_private):
        allowed = "https or http" if allow_private else "https only"
        raise _refuse(url, f"scheme {scheme or '(none)'!r} not allowed ({allowed})")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _refuse(url, "URLs with userinfo are not allowed")
    if not host:
        raise _refuse(url, "no host")
    host = host.rstrip(".").lower()
    if host in _METADATA_NAMES:
        raise _refuse(url, f"{host} is the metadata server")
    if port is None:
        port = 443 if scheme == "https" else 80
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: tuple[str, ...] = (str(literal),)
    else:
        addresses = await _resolve(host, port)
        if not addresses:
            raise OSError(f"{host} resolved to no address")
    for address in addresses:
        problem = _address_problem(ipaddress.ip_address(address), allow_private=allow_private)
        if problem is not None:
            shown = problem if literal is not None else f"{host} resolves to {problem}"
            raise _refuse(url, shown)
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return ResolvedTarget(scheme, host, port, target, addresses)


async def check_target(url: str, *, allow_private: bool) -> None:
    """Raise :class:`TargetRefusedError` unless ``url`` may be POSTed to (module rules).

    This only checks; see the module docstring about DNS rebinding.
    """
    await resolve_target(url, allow_private=allow_private)
