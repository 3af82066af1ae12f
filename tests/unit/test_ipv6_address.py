"""A Host reached at an IPv6 address, written ``::1`` or ``[::1]`` in
network.host_reachable_address: gRPC targets and URLs bracket it, sockets, TLS's name check
and certificates take it bare, so every tool reaches the Host either way."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest
from cryptography import x509

from hakuriver_cli import client, connection, direct, init, ssh
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb, task_pb2
from tests.fake_runner import HOLD, eventually
from tests.unit.cli_threads import exit_code, exit_code_later
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import LocalCluster
from tests.unit.test_cli_ssh import _Pipe
from tests.unit.test_ssh_tickets import SSH_KEY

WRITTEN = ["::1", "[::1]"]
ON_IPV6 = {"host_bind_ip": "::1", "metrics_bind_ip": "::1"}


def _client_config(cluster: LocalCluster, path: Path, written: str, over_connect: bool) -> Path:
    """The tools' config reaching ``cluster`` at ``written``, over gRPC or only over
    Connect (its gRPC port one where nothing listens: no falling back to gRPC)."""
    assert cluster.server is not None
    config = cluster.config
    grpc_port = config.network.host_port
    dashboard = "enabled = false"
    if over_connect:
        dashboard = f"port = {cluster.server.dashboard_port}"
        with socket.create_server(("::1", 0), family=socket.AF_INET6) as closed:
            grpc_port = closed.getsockname()[1]
    path.write_text(
        f'[network]\nhost_reachable_address = "{written}"\n'
        f"host_port = {grpc_port}\n"
        f"host_ssh_proxy_port = {cluster.server.ssh_proxy_port}\n"
        f'[tls]\nca_file = "{config.tls.ca_file}"\n'
        f'[auth]\ncredentials_file = "{config.auth.credentials_file}"\n'
        f"[dashboard]\n{dashboard}\n"
    )
    return path


@pytest.mark.parametrize("written", WRITTEN)
@pytest.mark.parametrize("over_connect", [False, True], ids=["grpc", "connect"])
async def test_the_tools_and_a_runner_reach_a_host_at_an_ipv6_address(
    make_local_cluster: MakeCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    written: str,
    over_connect: bool,
) -> None:
    """A bare ``::1`` made the gRPC target ``::1:PORT`` (no Runner or tool connected); a
    bracketed one made the Connect link dial ``[[::1]]``."""
    cluster = await make_local_cluster(network={**ON_IPV6, "host_reachable_address": written})
    await cluster.add_runner("a")
    config = _client_config(cluster, tmp_path / "client.toml", written, over_connect)
    nodes = ["nodes", "--json", "--config", str(config)]
    assert await asyncio.to_thread(exit_code, direct.run, client.app, "c", nodes) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    assert [node["hostname"] for node in json.loads(printed.out)] == ["a"]


@pytest.mark.parametrize("written", WRITTEN)
async def test_hakuriver_ssh_dials_the_proxy_at_an_ipv6_address(
    make_local_cluster: MakeCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    written: str,
) -> None:
    """``hakuriver.ssh`` dialled ``("[::1]", port)``, a name no resolver knows."""
    cluster = await make_local_cluster(network={**ON_IPV6, "host_reachable_address": written})
    runner = await cluster.add_runner("a", answer=HOLD)
    [vps] = await cluster.submit_running(kind=task_pb2.TASK_KIND_VPS, ssh_public_key=SSH_KEY)
    config = _client_config(cluster, tmp_path / "client.toml", written, False)
    monkeypatch.setattr(connection, "RPC_TIMEOUT_SECONDS", 3600.0)  # never the bound here
    stdin, ssh_writes = os.pipe()
    ssh_reads, stdout = os.pipe()
    monkeypatch.setattr(sys, "stdin", _Pipe(stdin))
    monkeypatch.setattr(sys, "stdout", _Pipe(stdout))
    args = (str(vps.task_id), None, "", 0, 0, "root", True, config, False)
    session = exit_code_later(ssh.main, *args)
    [opened] = await eventually(lambda: runner.tunnel_opens, what="the tunnel to open")
    runner.send(rpb.ConnectRequest(tunnel_opened=rpb.TunnelOpened(tunnel_id=opened.tunnel_id)))
    os.write(ssh_writes, b"SSH-2.0-test\r\n")
    await eventually(lambda: runner.tunnel_bytes, what="ssh's bytes to reach the runner")
    os.close(ssh_writes)  # ssh ends its side: a session that ended well
    code = await asyncio.wait_for(session, 60)
    for fd in (ssh_reads, stdout, stdin):
        os.close(fd)
    assert (code, capsys.readouterr().err) == (0, "")
    assert b"".join(runner.tunnel_bytes) == b"SSH-2.0-test\r\n"


def test_init_tls_names_an_ipv6_address_written_in_brackets(tmp_path: Path) -> None:
    """It refused ``[fd00::7]`` as no name a certificate can hold; the certificate holds
    the address as an IP SAN, without brackets."""
    config = tmp_path / "config.toml"
    config.write_text('[network]\nhost_reachable_address = "[fd00::7]"\n')
    output = tmp_path / "tls"
    init.tls(name=[], output_dir=output, force=False, config=config, json=True)
    cert = x509.load_pem_x509_certificate((output / "host.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "fd00::7" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
