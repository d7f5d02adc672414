"""Self-signed keys and certificates for tests.

- :func:`rsa_key_and_cert`: an RS256 key and certificate, as Google publishes its
  token-signing certs. For OIDC tests and the chaos suite: tokens signed with the key
  verify against a local certs endpoint serving the certificate (``{kid: PEM}``,
  Google's v1 format), :class:`CertsServer`.
- :func:`tls_files`: a server certificate for TLS tests, its own CA, written to files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

__all__ = ["CertsServer", "rsa_key_and_cert", "tls_files"]


_Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _self_signed(key: _Key, common_name: str, *extensions: x509.ExtensionType) -> bytes:
    """A certificate of ``key`` signed by itself, valid from a day ago to a day from
    now, with ``extensions`` (critical: BasicConstraints only), as PEM."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    for extension in extensions:
        builder = builder.add_extension(
            extension, critical=isinstance(extension, x509.BasicConstraints)
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _pem_key(key: _Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def tls_files(
    directory: Path, *, names: Sequence[str] = (), ips: Sequence[str] = ()
) -> tuple[Path, Path]:
    """A new P-256 key and a certificate for the DNS ``names`` and the addresses ``ips``
    (subjectAltName), written to ``directory`` as ``cert.pem`` and ``key.pem`` (PKCS#8):
    (certificate, key). The certificate is its own CA: a client trusts it by loading
    ``cert.pem`` as its CA file. Valid from a day ago to a day from now."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = _self_signed(
        key,
        (*names, *ips, "firecron")[0],
        x509.SubjectAlternativeName(alt),
        x509.BasicConstraints(ca=True, path_length=None),
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert)
    key_path.write_bytes(_pem_key(key))
    return cert_path, key_path


def rsa_key_and_cert(common_name: str = "firecron-test") -> tuple[bytes, bytes]:
    """A new 2048-bit RSA key (PKCS#8 PEM) and its self-signed certificate (PEM), valid
    from a day ago to a day from now."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _pem_key(key), _self_signed(key, common_name)


class CertsServer:
    """A certs endpoint whose document can change, counting the fetches it answers."""

    def __init__(self, document: dict[str, str]) -> None:
        self.document = document
        self.fetches = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """Serve on 127.0.0.1 and give the certs URL."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.fetches += 1
                    payload = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}/oauth2/v1/certs"
        finally:
            server.shutdown()
            server.server_close()
