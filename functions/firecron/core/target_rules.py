"""The SSRF guard's rules that need no DNS. Pure: no network, clock or environment.

One set of rules serves two callers: the runtime guard
(:mod:`firecron.transport.guard`), which applies :func:`check_static` and then
:func:`address_problem` to every address a host name resolves to, and schedule
validation, which applies :func:`check_static` alone so that a target the guard would
refuse at every occurrence is refused when the file is validated instead.

Contract of :func:`check_static`: it raises :class:`ValueError` with a one-line reason
(without the URL) when

- the URL does not split (bad port, bad IPv6 literal) or has no host;
- its scheme is not ``https`` (``http`` is accepted only with ``allow_private``);
- it carries userinfo (``https://user:pass@host``);
- its host is the metadata server by name (``metadata.google.internal``, ``metadata``);
- its host is a literal IP address that :func:`address_problem` refuses;
- its host is ``localhost`` or a ``*.localhost`` name (RFC 6761 reserves them for
  loopback), unless ``allow_private`` is set.

Otherwise it returns the split URL. A host name that is none of these passes: only DNS
can tell where it points, and that is the runtime guard's job.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

__all__ = [
    "METADATA_NAMES",
    "IPAddress",
    "StaticTarget",
    "address_problem",
    "check_static",
    "host_url",
    "redact_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_NAMES = frozenset({"metadata.google.internal", "metadata"})
"""Host names of the GCE metadata server, refused whatever the settings."""
_METADATA_ADDRESSES = frozenset(
    # 169.254.169.254 is link-local anyway; fd00:ec2::254 (the IPv6 instance metadata
    # address of AWS Nitro) sits in the private fc00::/7, so it is named to be refused
    # even where private targets are allowed.
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
# 100.64.0.0/10 (RFC 6598) is not "private" for the ipaddress module, but it is not
# reachable from the internet either: carrier-grade NAT, and in clouds often internal.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE_HINT = "(set FIRECRON_ALLOW_PRIVATE_TARGETS for dev)"


@dataclass(frozen=True)
class StaticTarget:
    """A URL that passed :func:`check_static`, split for the sender."""

    scheme: str
    """``http`` or ``https`` (lowercase)."""
    host: str
    """Host name as written (lowercase, no trailing dot, IPv6 without brackets)."""
    port: int
    """Explicit port, or the scheme's default."""
    target: str
    """Path and query to send in the request line (``/`` when the URL has no path)."""
    literal: IPAddress | None
    """The host as an IP address when it is one (then no DNS is needed)."""


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


def address_problem(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Why ``ip`` may not be a target, or None when it may.

    Metadata-server, link-local, unspecified, multicast and reserved addresses are
    always refused; loopback, private and CGNAT ones unless ``allow_private``.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # Always refused, even in dev: the metadata server lives at a link-local address.
    if ip in _METADATA_ADDRESSES and not ip.is_link_local:
        return f"{ip} is a metadata server address"
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
        return f"{ip} is loopback {_PRIVATE_HINT}"
    if ip in _CGNAT or ip.is_private or not ip.is_global:
        return f"{ip} is private {_PRIVATE_HINT}"
    return None


def host_url(host: str, port: int) -> str:
    """``https://host:port/``, the URL by which a server of another protocol (SMTP) is
    judged: an IPv6 literal is bracketed (once, whether or not ``host`` has brackets)."""
    bare = host.strip("[]")
    return f"https://[{bare}]:{port}/" if ":" in bare else f"https://{bare}:{port}/"


def check_static(url: str, *, allow_private: bool) -> StaticTarget:
    """Apply the rules that need no DNS (see the module docstring); raise ValueError if refused."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_private):
        allowed = "https or http" if allow_private else "https only"
        raise ValueError(f"scheme {scheme or '(none)'!r} not allowed ({allowed})")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("URLs with userinfo are not allowed")
    if not host:
        raise ValueError("no host")
    host = host.rstrip(".").lower()
    if host in METADATA_NAMES:
        raise ValueError(f"{host} is the metadata server")
    literal: IPAddress | None = None
    # Only an IPv4 literal ends with a digit and only an IPv6 one holds ':'; skipping the
    # failed parse of every host name halved this check's cost over a large file.
    if host[-1].isdigit() or ":" in host:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
    if literal is not None:
        problem = address_problem(literal, allow_private=allow_private)
        if problem is not None:
            raise ValueError(problem)
    elif not allow_private and (host == "localhost" or host.endswith(".localhost")):
        raise ValueError(f"{host} is loopback {_PRIVATE_HINT}")
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    if port is None:
        port = 443 if scheme == "https" else 80
    return StaticTarget(scheme, host, port, target, literal)
