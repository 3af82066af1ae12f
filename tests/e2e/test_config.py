"""hakuriver.init config, run as a user would (loading and overrides: tests/unit/test_config.py)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from hakuriver_common.config import Config, load_config
from hakuriver_common.roles import JOIN_TOKEN_PREFIX


def test_init_config_writes_a_loadable_commented_default(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "config.toml"
    run = [sys.executable, "-m", "hakuriver_cli.init", "config", "--output", str(target)]
    first = subprocess.run(run, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    text = target.read_text()
    assert "# Seconds between runner heartbeats." in text
    # It holds a secret: the join token Runners present, random, readable by its owner only.
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    loaded = load_config(target)
    token = loaded.auth.join_token
    assert token.startswith(JOIN_TOKEN_PREFIX) and len(token) >= len(JOIN_TOKEN_PREFIX) + 43
    defaults = Config()
    assert loaded.model_copy(update={"auth": defaults.auth}) == defaults
    assert loaded.auth.model_copy(update={"join_token": ""}) == defaults.auth
    again = subprocess.run(run, capture_output=True, text=True)
    assert again.returncode == 1 and "exists" in again.stderr
    forced = subprocess.run([*run, "--force"], capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr
    assert load_config(target).auth.join_token not in ("", token)
