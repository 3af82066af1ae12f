"""The API token a tool sends: one that cannot be sent (a space, a line break or a
character outside ASCII, pasted from a chat or an e-mail), or a credentials file that is
not text, ends the tool with one line naming where the token came from (never the token),
exit 2, before anything is sent. Such a token failed with a traceback over Connect and with
'Invalid metadata (INTERNAL)' over gRPC."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hakuriver_cli import client
from hakuriver_cli.connection import host_link
from hakuriver_common import commands as cli
from hakuriver_common.client_config import load_client_config
from hakuriver_common.credentials import TOKEN_ENV
from tests.unit.local_cluster import LocalCluster

BAD_TOKENS = ["hkrt_abc\u20ac", "hkrt_a\u00a0b", "hkrt_a\nhkrt_b", "hkrt_a b", "hkrt_\tx"]
ADVICE = "holds a space, a line break or a non-ASCII character, which no token has: copy it again"


def _refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], auth: str = "", dashboard: bool = True
) -> str:
    """The one line a tool ends with for the config made of ``auth`` ([auth] keys)."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[network]\nhost_reachable_address = "127.0.0.1"\nhost_port = 1\n'
        f"[dashboard]\nenabled = {str(dashboard).lower()}\nport = 2\nplaintext = true\n"
        f'[tls]\nplaintext = true\n[auth]\ncredentials_file = "{tmp_path / "token"}"\n{auth}'
    )
    with pytest.raises(cli.Exit) as ended, host_link(load_client_config(path)):
        pass
    assert ended.value.exit_code == 2
    (line,) = capsys.readouterr().err.splitlines()
    return line


@pytest.mark.parametrize("token", BAD_TOKENS)
@pytest.mark.parametrize("dashboard", [True, False], ids=["connect", "grpc"])
def test_a_token_that_cannot_be_sent_is_one_line_naming_where_it_is(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    token: str,
    dashboard: bool,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, token)
    line = _refusal(tmp_path, capsys, dashboard=dashboard)
    assert line == f"error: the API token in ${TOKEN_ENV} {ADVICE}"
    monkeypatch.delenv(TOKEN_ENV)
    line = _refusal(tmp_path, capsys, f"token = {json.dumps(token)}\n", dashboard)
    assert line == f"error: the API token in auth.token {ADVICE}"
    file = tmp_path / "token"
    file.write_text(token.replace("\n", " ") + "\n")
    file.chmod(0o600)
    assert _refusal(tmp_path, capsys, dashboard=dashboard) == (
        f"error: the API token in {file} {ADVICE}"
    )


def test_a_credentials_file_that_is_not_text_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    file = tmp_path / "token"
    file.write_bytes(b"\xff\xfe\x00hkrt_")
    file.chmod(0o600)
    assert _refusal(tmp_path, capsys) == f"error: {file} is not a text file holding a secret"


async def test_a_config_holding_the_token_that_others_can_read_is_warned_of_once(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ssh says of a private key others can read: the tool still works (the token may
    be needed now), and the line says the fix."""
    path = local_cluster.cli_config(tmp_path / "client.toml")
    token = f"[auth]\ntoken = {json.dumps(local_cluster.admin_token)}\n"
    path.write_text(path.read_text().replace("[auth]\n", token))
    path.chmod(0o644)
    await asyncio.to_thread(client.nodes, path, True)
    said = capsys.readouterr()
    assert json.loads(said.out) == []
    assert said.err.splitlines() == [
        f"warning: the config {path} holds auth.token and others can read it (mode 0644): "
        f"run chmod 600 {path}"
    ]
    path.chmod(0o600)
    await asyncio.to_thread(client.nodes, path, True)
    assert capsys.readouterr().err == ""
