"""hakuriver.init config, run as a user would (loading and overrides: tests/unit/test_config.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hakuriver_common.config import Config, load_config


def test_init_config_writes_a_loadable_commented_default(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "config.toml"
    run = [sys.executable, "-m", "hakuriver_cli.init", "config", "--output", str(target)]
    first = subprocess.run(run, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    text = target.read_text()
    assert "# Seconds between runner heartbeats." in text
    assert load_config(target) == Config()
    again = subprocess.run(run, capture_output=True, text=True)
    assert again.returncode == 1 and "exists" in again.stderr
