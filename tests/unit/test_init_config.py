"""hakuriver.init config writes a config that loads, every unset key with an example that
loads too once uncommented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hakuriver_cli import init
from hakuriver_common.config import load_config


def test_every_unset_key_can_be_uncommented(tmp_path: Path) -> None:
    """An unset key was written "# host_log_file = ": uncommented, the file was no TOML
    ("invalid config ...: Invalid value (at line 27, column 17)")."""
    path = tmp_path / "config.toml"
    init.config(output=path, force=False, json=False)
    keys, _ = path.read_text().split("\n# Webhooks:")  # an example table follows
    unset = re.findall(r"^# (\w+) = ", keys, re.MULTILINE)
    assert unset == ["host_log_file", "runner_log_file", "assets_dir"]
    path.write_text(re.sub(r"^# (\w+ = .+)$", r"\1", keys, flags=re.MULTILINE))
    config = load_config(path)
    assert config.paths.host_log_file == Path("/var/log/hakuriver/host.log")
    assert config.paths.runner_log_file == Path("/var/log/hakuriver/runner.log")
    assert config.dashboard.assets_dir == Path("/opt/hakuriver/dashboard")


def test_a_config_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--output -` wrote a file named "-" in the working directory."""
    monkeypatch.chdir(tmp_path)
    init.config(output=Path("-"), force=False, json=False)
    assert not (tmp_path / "-").exists()
    written = tmp_path / "c.toml"
    written.write_text(capsys.readouterr().out)
    assert load_config(written).auth.join_token.startswith("hkrj_")
