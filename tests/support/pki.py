"""Certificates made in the test: a CA, a server certificate for loopback, a client certificate.

Usage::

    pki = Pki.create(tmp_path / "pki")
    pki.ca, pki.server_cert, pki.server_key, pki.client_cert, pki.client_key  # PEM files
    rogue = Pki.create(tmp_path / "rogue")  # another CA, which nothing trusts

The server certificate is for ``127.0.0.1`` and ``localhost`` (and ``extra_names``);
the client certificate is for ``rollbackd``. Keys are EC P-256: quick to make.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID = timedelta(days=2)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass(frozen=True)
class Pki:
    """PEM files of one CA and the two certificates it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path, extra_names: tuple[str, ...] = ()) -> Pki:
        """Make a CA and sign a server and a client certificate with it, in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC) - timedelta(minutes=5)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name(f"rollbackd test CA {directory.name}")
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(
            common: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
        ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(_name(common))
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(now + VALID)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    critical=False,
                )
            )
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            return builder.sign(ca_key, hashes.SHA256()), key

        server, server_key = leaf(
            "rollbackd test server",
            ExtendedKeyUsageOID.SERVER_AUTH,
            [
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("localhost"),
                *(x509.DNSName(name) for name in extra_names),
            ],
        )
        client, client_key = leaf("rollbackd", ExtendedKeyUsageOID.CLIENT_AUTH, [])
        return cls(
            ca=_write_cert(ca, directory / "ca.pem"),
            server_cert=_write_cert(server, directory / "server.pem"),
            server_key=_write_key(server_key, directory / "server.key"),
            client_cert=_write_cert(client, directory / "client.pem"),
            client_key=_write_key(client_key, directory / "client.key"),
        )

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA and shows the client certificate."""
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def server_context(self, *, require_client_cert: bool) -> ssl.SSLContext:
        """A server context with the server certificate, verifying clients against this CA."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.load_verify_locations(self.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def bcrypt_hash(password: str) -> str:
    """The bcrypt hash Prometheus' ``basic_auth_users`` takes (cost 4: quick, still bcrypt)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode("ascii")


def guarded_web_config(pki: Pki, user: str, password: str) -> dict[str, Any]:
    """A ``--web.config.file`` (Prometheus, Alertmanager) serving HTTPS with ``pki``'s server
    certificate, wanting a client certificate of its CA and ``user``'s password."""
    return {
        "tls_server_config": {
            "cert_file": str(pki.server_cert),
            "key_file": str(pki.server_key),
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": str(pki.ca),
        },
        "basic_auth_users": {user: bcrypt_hash(password)},
    }
