"""The cluster's small CA and the Host's certificate, made with ``cryptography``.

ECDSA P-256 keys (fast to make, small handshakes). The CA signs only the Host's
certificate: Runners and clients trust the CA and check the Host's name against the
certificate's subject alternative names; they prove who they are with their secrets.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hakuriver_common.credentials import write_secret

CA_YEARS = 10
HOST_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    host_cert: Path
    host_key: Path

    @classmethod
    def in_folder(cls, folder: Path) -> TlsFiles:
        return cls(folder / "ca.pem", folder / "ca.key", folder / "host.pem", folder / "host.key")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_public(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(pem)
    tmp.replace(path)


def make_ca(files: TlsFiles, name: str = "HakuRiver cluster CA") -> None:
    """A new CA: its key (0600) and self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    write_secret(files.ca_key, _key_pem(key).strip())
    _write_public(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM))


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_host_certificate(files: TlsFiles, names: Iterable[str]) -> list[str]:
    """A Host certificate signed by the CA, valid for ``names`` (DNS names or IP addresses)
    and always for localhost, 127.0.0.1 and ::1; returns the names it holds."""
    wanted = list(dict.fromkeys([*names, "localhost", "127.0.0.1", "::1"]))
    try:
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
    except ValueError:
        ca_key = None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{files.ca_key} is not an EC key made by hakuriver.init tls")
    try:
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    except ValueError:
        raise ValueError(
            f"{files.ca_cert} is not a PEM certificate made by hakuriver.init tls"
        ) from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, wanted[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=HOST_DAYS))
        .add_extension(x509.SubjectAlternativeName([_alt_name(n) for n in wanted]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_secret(files.host_key, _key_pem(key).strip())
    _write_public(files.host_cert, cert.public_bytes(serialization.Encoding.PEM))
    return wanted
