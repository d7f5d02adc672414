"""TLS session resumption in the :class:`Sender`, and ``FIRECRON_CA_FILE``.

The server is a real TLS server on 127.0.0.1 (asyncio, in the test's loop) whose
certificate a throwaway CA issued for the address 127.0.0.1 (``bench/scale_tls.py``'s
:func:`write_tls_files`). It accepts plain TCP and starts TLS with whichever server
context it holds at that moment, so a test can swap its certificate (and with it the
session-ticket keys) between connections, and it records per request whether the
handshake resumed a session (the server's ``SSLObject.session_reused``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bench.scale_tls import TlsFiles, full_handshake_context, write_tls_files

from firecron.core.lifecycle import SendOutcome
from firecron.dispatch import Dispatcher
from firecron.errors import InvalidInputError
from firecron.notify import Notifier
from firecron.settings import Settings
from firecron.store.sqlite import SQLiteStore
from firecron.transport import sender as sender_module
from firecron.transport.sender import Dispatch, ResumingTLSContext, Sender, tls_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and the certificate it issued for 127.0.0.1."""
    return write_tls_files(tmp_path_factory.mktemp("pki"), "ec")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Another CA's certificate for 127.0.0.1: valid, but not issued by ``pki``'s CA."""
    return write_tls_files(tmp_path_factory.mktemp("stranger"), "ec")


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    return context


class TlsServer:
    """Answers ``200`` to one request per connection, over TLS with :attr:`context`."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.resumed: list[bool] = []
        """Per answered request: did its handshake resume a session?"""
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self.context)
            await reader.readuntil(b"\r\n\r\n")
            tls = writer.get_extra_info("ssl_object")
            self.resumed.append(bool(tls.session_reused))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # a client that refused the certificate hangs up
        finally:
            writer.close()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def server(pki: TlsFiles) -> AsyncIterator[tuple[TlsServer, str]]:
    srv = TlsServer(server_context(pki))
    port = await srv.start()
    try:
        yield srv, f"https://127.0.0.1:{port}"
    finally:
        await srv.close()


def dispatch(url: str) -> Dispatch:
    return Dispatch(url=f"{url}/hook", body=b"{}", headers={}, key="r/1")


def make_sender(*, ca_file: str | None = None, ssl_context: ssl.SSLContext | None = None) -> Sender:
    return Sender(
        concurrency=4,
        max_open=4,
        ack_timeout=5.0,
        allow_private_targets=True,
        ca_file=ca_file,
        ssl_context=ssl_context,
    )


async def test_the_second_dispatch_to_the_same_host_resumes_the_tls_session(
    server: tuple[TlsServer, str], pki: TlsFiles
) -> None:
    srv, url = server
    sender = make_sender(ca_file=str(pki.ca))
    for _ in range(3):
        result = await sender.send(dispatch(url))
        assert result.outcome is SendOutcome.acknowledged, result
    # The first handshake is full (the certificate is verified); the next ones resume.
    assert srv.resumed == [False, True, True]


async def test_a_context_that_is_not_resuming_never_offers_a_session(
    server: tuple[TlsServer, str], pki: TlsFiles
) -> None:
    srv, url = server
    sender = make_sender(ssl_context=full_handshake_context(pki.ca))
    for _ in range(2):
        assert (await sender.send(dispatch(url))).outcome is SendOutcome.acknowledged
    assert srv.resumed == [False, False]


async def test_sessions_outlive_the_sender(server: tuple[TlsServer, str], pki: TlsFiles) -> None:
    # Deployed, dispatch makes a Sender per tick: the next tick's first dispatch to a
    # host resumes the session the previous tick kept (the process's, per CA file).
    srv, url = server
    for _ in range(2):
        sender = make_sender(ca_file=str(pki.ca))
        assert (await sender.send(dispatch(url))).outcome is SendOutcome.acknowledged
        await sender.aclose()
    assert srv.resumed == [False, True]
    # A sender given its own context keeps sessions of its own.
    own = make_sender(ssl_context=tls_context(str(pki.ca)))
    assert (await own.send(dispatch(url))).outcome is SendOutcome.acknowledged
    assert srv.resumed == [False, True, False]


async def test_sessions_are_kept_per_host_and_port(pki: TlsFiles) -> None:
    # Both servers share one context (and so its ticket keys): a session offered to the
    # wrong port would be resumed there.
    shared = server_context(pki)
    first, second = TlsServer(shared), TlsServer(shared)
    url1 = f"https://127.0.0.1:{await first.start()}"
    url2 = f"https://127.0.0.1:{await second.start()}"
    try:
        sender = make_sender(ca_file=str(pki.ca))
        for url in (url1, url2, url1, url2):
            assert (await sender.send(dispatch(url))).outcome is SendOutcome.acknowledged
        assert first.resumed == [False, True]
        assert second.resumed == [False, True]
    finally:
        await first.close()
        await second.close()


async def test_the_session_cache_is_bounded(pki: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sender_module, "MAX_TLS_SESSIONS", 1)
    shared = server_context(pki)
    first, second = TlsServer(shared), TlsServer(shared)
    url1 = f"https://127.0.0.1:{await first.start()}"
    url2 = f"https://127.0.0.1:{await second.start()}"
    try:
        sender = make_sender(ca_file=str(pki.ca))
        for url in (url1, url2, url1):
            assert (await sender.send(dispatch(url))).outcome is SendOutcome.acknowledged
        # url2's session evicted url1's: the third dispatch is a full handshake again.
        assert first.resumed == [False, False]
    finally:
        await first.close()
        await second.close()


async def test_verification_still_refuses_an_untrusted_certificate(
    server: tuple[TlsServer, str], pki: TlsFiles, stranger: TlsFiles
) -> None:
    srv, url = server
    sender = make_sender(ca_file=str(pki.ca))
    assert (await sender.send(dispatch(url))).outcome is SendOutcome.acknowledged
    assert (await sender.send(dispatch(url))).outcome is SendOutcome.acknowledged
    assert srv.resumed == [False, True]
    # Same host and port, now another CA's certificate and other ticket keys: the
    # cached session is offered, cannot be resumed, and the full handshake's
    # verification refuses the certificate.
    srv.context = server_context(stranger)
    refused = await sender.send(dispatch(url))
    assert refused.outcome is SendOutcome.retryable
    assert "CERTIFICATE_VERIFY_FAILED" in (refused.error or "")
    assert srv.resumed == [False, True]
    # The default trust store alone (no CA file) refuses the CA's certificate too.
    srv.context = server_context(pki)
    untrusted = await make_sender().send(dispatch(url))
    assert untrusted.outcome is SendOutcome.retryable
    assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.error or "")
    assert srv.resumed == [False, True]


def test_the_default_context_verifies_and_resumes(pki: TlsFiles) -> None:
    context = tls_context(str(pki.ca))
    assert isinstance(context, ResumingTLSContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    # The CA file is added to the default store, not instead of it.
    assert context.cert_store_stats()["x509_ca"] > 1


# -- FIRECRON_CA_FILE --------------------------------------------------------------------


async def test_firecron_ca_file_is_trusted_by_the_dispatchers_sender(
    server: tuple[TlsServer, str], pki: TlsFiles, tmp_path: Path
) -> None:
    srv, url = server
    settings = Settings.from_env(
        {"FIRECRON_CA_FILE": str(pki.ca), "FIRECRON_ALLOW_PRIVATE_TARGETS": "1"}
    )
    assert settings.ca_file == str(pki.ca)
    store = SQLiteStore(tmp_path / "ca.db")
    dispatcher = Dispatcher(store, settings)
    try:
        result = await dispatcher.sender.send(dispatch(url))
        assert result.outcome is SendOutcome.acknowledged, result
        assert srv.resumed == [False]
    finally:
        await dispatcher.aclose()
        await store.close()


async def test_firecron_ca_file_is_trusted_by_the_webhook_notifier_too(
    server: tuple[TlsServer, str], pki: TlsFiles
) -> None:
    _, url = server
    env = {"FIRECRON_ALLOW_PRIVATE_TARGETS": "1"}
    trusting = Notifier(Settings.from_env({**env, "FIRECRON_CA_FILE": str(pki.ca)}))
    default = Notifier(Settings.from_env(env))
    try:
        ok = await trusting._sender.send(dispatch(url))
        refused = await default._sender.send(dispatch(url))
    finally:
        await trusting.aclose()
        await default.aclose()
    assert ok.outcome is SendOutcome.acknowledged, ok
    assert refused.outcome is not SendOutcome.acknowledged
    assert "CERTIFICATE_VERIFY_FAILED" in (refused.error or "")


def test_firecron_ca_file_unset_is_none() -> None:
    assert Settings.from_env({}).ca_file is None
    assert Settings.from_env({"FIRECRON_CA_FILE": "  "}).ca_file is None


def _refusal(value: str) -> str:
    with pytest.raises(InvalidInputError) as caught:
        Settings.from_env({"FIRECRON_CA_FILE": value})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"FIRECRON_CA_FILE={value!r}: ")
    return message


def test_firecron_ca_file_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    assert "cannot read it" in _refusal(str(tmp_path / "missing.pem"))
    assert "cannot read it" in _refusal(str(tmp_path))  # a directory


def test_firecron_ca_file_that_is_not_pem_certificates_is_refused(
    tmp_path: Path, pki: TlsFiles
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\x00\x01not a certificate\xff")
    assert "not a PEM bundle" in _refusal(str(garbage))
    # A key is PEM, but not a certificate.
    assert "not a PEM bundle" in _refusal(str(pki.key))
    # The right markers around a body that does not parse.
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    assert "not a PEM bundle" in _refusal(str(broken))
