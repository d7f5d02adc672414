"""The SSRF guard: schemes, userinfo, metadata, link-local and private addresses, DNS."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from firecron.core.target_rules import check_static
from firecron.errors import TargetRefusedError
from firecron.transport import guard
from firecron.transport.guard import redact_url, resolve_target


@pytest.fixture(autouse=True)
def _fresh_dns_cache() -> Iterator[None]:
    guard._dns_cache.clear()
    yield
    guard._dns_cache.clear()


def fake_dns(table: dict[str, list[str]]) -> tuple[Any, list[str]]:
    """A ``loop.getaddrinfo`` replacement answering from ``table``, and its call log."""
    calls: list[str] = []

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in table[host]
        ]

    return getaddrinfo, calls


async def refused(url: str, *, allow_private: bool) -> str:
    with pytest.raises(TargetRefusedError) as info:
        await resolve_target(url, allow_private=allow_private)
    return str(info.value)


async def test_public_https_address_is_allowed() -> None:
    target = await resolve_target("https://8.8.8.8/hook?x=1", allow_private=False)
    assert target.addresses == ("8.8.8.8",)
    assert target.target == "/hook?x=1"
    assert target.host_header == "8.8.8.8"


async def test_http_is_refused_without_allow_private() -> None:
    message = await refused("http://8.8.8.8/hook", allow_private=False)
    assert "scheme 'http' not allowed" in message


async def test_http_is_allowed_with_allow_private() -> None:
    await resolve_target("http://8.8.8.8/hook", allow_private=True)


@pytest.mark.parametrize("scheme", ["ftp", "file", "gopher"])
async def test_other_schemes_are_always_refused(scheme: str) -> None:
    await refused(f"{scheme}://8.8.8.8/x", allow_private=True)


async def test_loopback_is_refused_without_allow_private() -> None:
    message = await refused("https://127.0.0.1:8443/x", allow_private=False)
    assert "loopback" in message


async def test_loopback_is_allowed_with_allow_private() -> None:
    await resolve_target("https://127.0.0.1:8443/x", allow_private=True)
    await resolve_target("http://[::1]:8080/x", allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/computeMetadata/v1/",
        "http://169.254.169.254/computeMetadata/v1/",
        "https://169.254.1.1/",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://METADATA.google.internal./x",
        "http://metadata/computeMetadata/v1/",
        "https://[fe80::1]/",
        "https://0.0.0.0/",
        "https://[::]/",
        "https://224.0.0.1/",
        "https://[ff02::1]/",
        "https://[::ffff:169.254.169.254]/",
        "https://240.0.0.1/",
        "https://user:pass@example.com/",
        "https://user@127.0.0.1/",
        "https://token@8.8.8.8/",
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_always_refused(url: str, allow_private: bool) -> None:
    await refused(url, allow_private=allow_private)


@pytest.mark.parametrize(
    "url",
    [
        "https://10.1.2.3/",
        "https://172.16.0.1/",
        "https://172.31.255.255/",
        "https://192.168.1.1/",
        "https://100.64.0.1/",
        "https://100.127.255.254/",
        "https://[fc00::1]/",
        "https://[fd12:3456::1]/",
        "https://[::1]/",
        "https://127.8.9.10/",
        "https://[::ffff:10.0.0.1]/",
    ],
)
async def test_private_follows_allow_private(url: str) -> None:
    assert "private" in await refused(url, allow_private=False) or "loopback" in await refused(
        url, allow_private=False
    )
    await resolve_target(url, allow_private=True)


async def test_localhost_name_follows_the_private_rule_without_dns() -> None:
    loop = asyncio.get_running_loop()
    fake, calls = fake_dns({"localhost": ["127.0.0.1"], "api.localhost": ["127.0.0.1"]})
    loop.getaddrinfo = fake  # type: ignore[method-assign]
    message = await refused("https://localhost:9/x", allow_private=False)
    assert message.endswith("localhost is loopback (set FIRECRON_ALLOW_PRIVATE_TARGETS for dev)")
    assert "api.localhost is loopback" in await refused(
        "https://API.localhost./x", allow_private=False
    )
    assert calls == []  # refused by name: RFC 6761 reserves localhost for loopback
    await resolve_target("https://localhost:9/x", allow_private=True)
    await resolve_target("http://api.localhost/x", allow_private=True)


# Hosts that need no DNS: the static rules alone decide, for validation and runtime alike.
_STATIC_CASES = [
    "https://8.8.8.8/hook",
    "http://8.8.8.8/hook",
    "ftp://8.8.8.8/x",
    "https://169.254.169.254/computeMetadata/v1/",
    "https://[fd00:ec2::254]/latest",
    "https://[fe80::1]/",
    "https://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/x",
    "https://10.1.2.3/",
    "https://100.64.0.1/",
    "https://[::1]/",
    "https://localhost/x",
    "https://user@8.8.8.8/",
    "https://8.8.8.8:99999/",
    "https:///nohost",
]


@pytest.mark.parametrize("url", _STATIC_CASES)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_static_rules_are_the_runtime_rules(url: str, allow_private: bool) -> None:
    loop = asyncio.get_running_loop()
    fake, calls = fake_dns({"localhost": ["127.0.0.1"]})
    loop.getaddrinfo = fake  # type: ignore[method-assign]
    try:
        check_static(url, allow_private=allow_private)
    except ValueError as exc:
        static: str | None = f"target {redact_url(url)} refused: {exc}"
    else:
        static = None
    try:
        await resolve_target(url, allow_private=allow_private)
    except TargetRefusedError as exc:
        runtime: str | None = str(exc)
    else:
        runtime = None
    assert static == runtime
    assert calls == ([] if runtime is not None or "localhost" not in url else ["localhost"])


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/computeMetadata/v1/",
        "https://[fd00:ec2::254]/",
        "https://[fe80::1%25eth0]/",
        "https://metadata/x",
    ],
)
def test_metadata_and_link_local_are_refused_statically_even_when_private_is_allowed(
    url: str,
) -> None:
    with pytest.raises(ValueError, match=r"metadata|link-local"):
        check_static(url, allow_private=True)


async def test_every_resolved_address_is_checked() -> None:
    loop = asyncio.get_running_loop()
    fake, _ = fake_dns({"mixed.test": ["8.8.8.8", "169.254.169.254"]})
    loop.getaddrinfo = fake  # type: ignore[method-assign]
    message = await refused("https://mixed.test/x", allow_private=True)
    assert "mixed.test resolves to 169.254.169.254" in message


async def test_a_name_that_resolves_to_a_public_address_is_allowed_and_cached() -> None:
    loop = asyncio.get_running_loop()
    fake, calls = fake_dns({"worker.test": ["8.8.4.4", "2001:4860:4860::8844"]})
    loop.getaddrinfo = fake  # type: ignore[method-assign]
    first = await resolve_target("https://worker.test/a", allow_private=False)
    second = await resolve_target("https://worker.test/b", allow_private=False)
    assert first.addresses == ("8.8.4.4", "2001:4860:4860::8844")
    assert second.target == "/b"
    assert calls == ["worker.test"]


async def test_an_unknown_name_is_an_os_error_not_a_refusal() -> None:
    loop = asyncio.get_running_loop()
    fake, _ = fake_dns({})
    loop.getaddrinfo = fake  # type: ignore[method-assign]
    with pytest.raises(OSError, match="not known"):
        await resolve_target("https://nowhere.test/x", allow_private=False)


async def test_refusals_are_one_line_without_query_or_userinfo() -> None:
    message = await refused("https://user:hunter2@10.0.0.1/x?key=SECRETKEY", allow_private=False)
    assert "\n" not in message
    assert "hunter2" not in message
    assert "SECRETKEY" not in message
    assert message.startswith("target https://10.0.0.1/x refused:")


def test_redact_url_drops_userinfo_query_and_fragment() -> None:
    assert (
        redact_url("https://u:p@Example.com:8443/a/b?token=t#frag")
        == "https://example.com:8443/a/b"
    )
    assert redact_url("http://[::1]:80/x?q") == "http://[::1]:80/x"
