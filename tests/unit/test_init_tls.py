"""hakuriver.init tls refuses what a certificate cannot name before it writes anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakuriver_cli import init
from hakuriver_common import commands as cli


def _tls(config: Path, output: Path, names: list[str]) -> None:
    init.tls(name=names, output_dir=output, force=False, config=config, json=False)


def test_a_name_no_certificate_can_hold_is_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL or a name with a port went into the certificate as a DNS name (every Runner
    dialling it then failed TLS); a non-ASCII one made the CA, then stopped with
    cryptography's "DNSName values should be passed as an A-label string"."""
    config = tmp_path / "config.toml"
    config.write_text('[network]\nhost_reachable_address = "river:8000"\n')
    output = tmp_path / "tls"
    with pytest.raises(cli.Exit) as stopped:
        _tls(config, output, [])
    assert stopped.value.exit_code == 2
    assert capsys.readouterr().err == (  # as every tool, Host and Runner says it
        f"error: invalid config {config}: network.host_reachable_address: 'river:8000' is "
        "not a host name or IP address to dial (give names like river.lab.example and "
        "addresses like 10.1.0.10, without a scheme, port or spaces)\n"
    )
    config.write_text('[network]\nhost_reachable_address = "river.lab"\n')
    with pytest.raises(cli.Exit) as stopped:
        _tls(config, output, ["https://river.lab", "rivér", "river.lab", "10.1.0.10"])
    assert stopped.value.exit_code == 2
    assert capsys.readouterr().err == (
        "error: not a DNS name or IP address to dial: --name 'https://river.lab', --name "
        "'rivér' (give names like river.lab.example and addresses like 10.1.0.10, without a "
        "scheme or port; 0.0.0.0 is for network.host_bind_ip)\n"
    )
    assert not output.exists()


def test_an_address_that_means_every_address_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """network.host_reachable_address = "0.0.0.0" (host_bind_ip's value, copied) went into
    the certificate: Runners on other machines cannot dial it."""
    config = tmp_path / "config.toml"
    config.write_text('[network]\nhost_reachable_address = "0.0.0.0"\n')
    with pytest.raises(cli.Exit):
        _tls(config, tmp_path / "tls", ["::"])
    said = capsys.readouterr().err
    assert said.startswith(
        "error: not a DNS name or IP address to dial: network.host_reachable_address "
        "'0.0.0.0', --name '::' ("
    )
    assert not (tmp_path / "tls").exists()


def test_names_a_certificate_can_hold_are_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[network]\nhost_reachable_address = "river.lab.example"\n')
    _tls(config, tmp_path / "tls", ["*.lab.example", "node_7", "10.1.0.10", "fe80::1"])
    [valid] = [line for line in capsys.readouterr().out.splitlines() if "valid for" in line]
    for name in ("river.lab.example", "*.lab.example", "node_7", "10.1.0.10", "fe80::1"):
        assert f" {name}," in f"{valid},"


def test_a_folder_it_cannot_write_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed "error: [Errno 20] Not a directory: '...'"."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tmp_path / "config.toml"
    config.write_text("")
    with pytest.raises(cli.Exit):
        _tls(config, blocker / "tls", [])
    assert capsys.readouterr().err == f"error: cannot write {blocker / 'tls'}: Not a directory\n"


def test_a_ca_key_without_its_certificate_is_not_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ca.pem gone (moved, deleted by mistake) it made a new CA over ca.key, without
    --force: every copy of the old ca.pem on the Runners then refused the Host."""
    config = tmp_path / "config.toml"
    config.write_text("")
    folder = tmp_path / "tls"
    _tls(config, folder, [])
    key = (folder / "ca.key").read_bytes()
    (folder / "ca.pem").unlink()
    capsys.readouterr()
    with pytest.raises(cli.Exit):
        _tls(config, folder, [])
    assert capsys.readouterr().err == (
        f"error: {folder / 'ca.key'} exists without its certificate {folder / 'ca.pem'}: copy "
        "ca.pem back from a Runner or client, or use --force to make a new CA (every copy of "
        "ca.pem must then be replaced)\n"
    )
    assert (folder / "ca.key").read_bytes() == key
    assert not (folder / "ca.pem").exists()


@pytest.mark.parametrize("broken", ["ca.pem", "ca.key"])
def test_a_ca_file_that_is_not_pem_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], broken: str
) -> None:
    """A damaged ca.pem said "Unable to load PEM file. See https://cryptography.io/...
    MalformedFraming", naming no file."""
    config = tmp_path / "config.toml"
    config.write_text("")
    folder = tmp_path / "tls"
    _tls(config, folder, [])
    (folder / broken).write_text("not PEM\n")
    capsys.readouterr()
    with pytest.raises(cli.Exit):
        _tls(config, folder, [])
    what = "a PEM certificate" if broken == "ca.pem" else "an EC key"
    assert capsys.readouterr().err == (
        f"error: {folder / broken} is not {what} made by hakuriver.init tls\n"
    )
