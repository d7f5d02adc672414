"""A self-signed RS256 key and certificate, as Google publishes its token-signing certs.

For OIDC tests and the chaos suite: tokens signed with the key verify against a local
certs endpoint serving the certificate (``{kid: PEM}``, Google's v1 format).
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

__all__ = ["rsa_key_and_cert"]


def rsa_key_and_cert(common_name: str = "firecron-test") -> tuple[bytes, bytes]:
    """A new 2048-bit RSA key (PKCS#8 PEM) and its self-signed certificate (PEM), valid
    from a day ago to a day from now."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem_key, cert.public_bytes(serialization.Encoding.PEM)
