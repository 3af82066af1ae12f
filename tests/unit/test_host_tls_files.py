"""A Host whose certificate and key are no pair stops with one line naming the files; gRPC
refused the credentials, and the Host said "cannot listen on ...: address in use or not
available" (after two lines of gRPC's own), sending the admin after a free port."""

from __future__ import annotations

from pathlib import Path

import pytest

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
