"""A Host whose certificate and key are no pair stops with one line naming the files; gRPC
refused the credentials, and the Host said "cannot listen on ...: address in use or not
available" (after two lines of gRPC's own), sending the admin after a free port."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import KeySerializationEncryption

from hakuriver_common.certificates import TlsFiles, issue_host_certificate, make_ca
from hakuriver_host.server import HostServer, SecurityConfigError
from tests.tls import tls_files
from tests.unit.local_cluster import local_config


async def _refusal(tmp_path: Path, **tls: Path) -> str:
    config = local_config(tmp_path / "host", tls=tls)
    with pytest.raises(SecurityConfigError) as raised:
        await HostServer(config, prepare_default_environment=False).serve_forever()
    return str(raised.value)


async def test_a_key_of_another_certificate_is_named(tmp_path: Path) -> None:
    other = TlsFiles.in_folder(tmp_path / "other")
    other.ca_cert.parent.mkdir()
    make_ca(other)
    issue_host_certificate(other, ["127.0.0.1"])
    said = await _refusal(tmp_path, key_file=other.host_key)
    assert said == (
        f"tls.key_file {other.host_key} is not the key of tls.cert_file "
        f"{tls_files().host_cert}: give the pair hakuriver.init tls wrote"
    )


async def test_a_certificate_that_is_not_pem_is_named(tmp_path: Path) -> None:
    damaged = tmp_path / "host.pem"
    damaged.write_text("not PEM\n")
    said = await _refusal(tmp_path, cert_file=damaged)
    assert (
        said == f"tls.cert_file {damaged} is not a PEM certificate (hakuriver.init tls makes one)"
    )


def _write_key(path: Path, key: PrivateKeyTypes, encryption: KeySerializationEncryption) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


def _host_key() -> PrivateKeyTypes:
    return serialization.load_pem_private_key(tls_files().host_key.read_bytes(), None)


async def test_a_key_encrypted_with_a_passphrase_is_named_without_asking_for_it(
    tmp_path: Path,
) -> None:
    """The certificate's own key, encrypted: OpenSSL asks for the passphrase, and the
    Host says why it cannot give one instead of prompting."""
    locked = _write_key(
        tmp_path / "host.key", _host_key(), serialization.BestAvailableEncryption(b"secret")
    )
    said = await _refusal(tmp_path, key_file=locked)
    assert (
        said == f"tls.key_file {locked} is encrypted with a passphrase, which the Host cannot give"
    )


async def test_a_key_that_is_not_pem_is_named(tmp_path: Path) -> None:
    """The certificate's own key, DER-encoded: gRPC takes PEM only."""
    der = tmp_path / "host.key"
    der.write_bytes(
        _host_key().private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    said = await _refusal(tmp_path, key_file=der)
    assert said == f"tls.key_file {der} is not a PEM private key (hakuriver.init tls makes one)"


async def test_a_key_of_another_type_than_the_certificate_is_named(tmp_path: Path) -> None:
    """An RSA key beside the EC certificate (OpenSSL says so differently from another EC key)."""
    other = _write_key(
        tmp_path / "rsa.key", rsa.generate_private_key(65537, 2048), serialization.NoEncryption()
    )
    said = await _refusal(tmp_path, key_file=other)
    assert said == (
        f"tls.key_file {other} is not the key of tls.cert_file {tls_files().host_cert}: "
        "give the pair hakuriver.init tls wrote"
    )
