"""Key material of the Advanced Trade test server: CDP API keys, the self-signed TLS certificate, JWT checks.

A CDP key is a name and an EC P-256 private key, as Coinbase issues them; the server keeps only the public half and
accepts a request when its bearer JWT is what the SDK signs with that key (`jwt_problem`). Private key files are
written readable by the owner only (mode 0600). The Authorization header and key material are never logged or kept.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

JWT_CLOCK_SKEW = 5  # seconds a token's nbf may be ahead of the server clock


@dataclass(frozen=True)
class CdpKey:
    """A CDP API key shaped like the ones Coinbase issues: a key name and an EC P-256 private key in SEC1 PEM."""

    name: str
    private_key_pem: str = field(repr=False)
    public_key_pem: bytes = field(repr=False)

    def write_key_file(self, path: Path) -> Path:
        """Write the CDP JSON key file {"name", "privateKey"}, readable by the owner only (mode 0600)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"name": self.name, "privateKey": self.private_key_pem}, indent=2) + "\n"
        _write_private(target, text.encode("utf-8"))
        return target


def generate_cdp_key(name: str) -> CdpKey:
    """A fresh key pair for `name`; the private key is "-----BEGIN EC PRIVATE KEY-----" PEM, as CDP hands out."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode("ascii")
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CdpKey(name=name, private_key_pem=private_pem, public_key_pem=public_pem)


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write cert.pem and cert-key.pem for 127.0.0.1 and localhost, valid from a day ago for 30 days.

    The certificate is its own CA (BasicConstraints ca=True), so a client trusts the server with
    `session.verify = cert_path`.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trader Advanced Trade test server"),
        ]
    )
    now = datetime.now(UTC)
    subject_key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    alt_names = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(alt_names, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(subject_key_id, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(subject_key_id), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "cert-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_bytes)
    return cert_path, key_path


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def load_public_key(public_key_pem: bytes | str) -> PublicKeyTypes:
    """The public key a CDP key's JWTs are verified with, from its SubjectPublicKeyInfo PEM."""
    pem = public_key_pem.encode("ascii") if isinstance(public_key_pem, str) else public_key_pem
    return serialization.load_pem_public_key(pem)


def jwt_problem(
    authorization: str | None, public_key: PublicKeyTypes, key_name: str, uri: str | None, now: float
) -> str | None:
    """Why the bearer JWT in `authorization` is not acceptable for `uri` ("METHOD host:port/path"; None for a
    WebSocket subscribe, whose JWT carries no uri), or None."""
    if not authorization or not authorization.startswith("Bearer "):
        return "missing bearer token"
    token = authorization.removeprefix("Bearer ").strip()
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(
            token,
            cast(Any, public_key),
            algorithms=["ES256"],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
        )
    except jwt.InvalidSignatureError:
        return "invalid jwt signature"
    except jwt.InvalidTokenError as error:
        return f"invalid jwt: {error}"
    if header.get("alg") != "ES256":
        return "jwt alg must be ES256"
    if header.get("kid") != key_name:
        return "jwt kid is not a known key"
    if claims.get("sub") != key_name:
        return "jwt sub does not match the key"
    if claims.get("iss") != "cdp":
        return 'jwt iss must be "cdp"'
    nbf, exp = claims.get("nbf"), claims.get("exp")
    if not isinstance(nbf, int | float) or not isinstance(exp, int | float):
        return "jwt nbf and exp are required"
    if nbf > now + JWT_CLOCK_SKEW:
        return "jwt not yet valid"
    if exp <= now:
        return "jwt expired"
    if claims.get("uri") != uri:
        return "jwt uri does not match the request"
    return None
