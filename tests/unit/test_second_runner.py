"""A second Runner on a state directory another Runner is using (the same config started
twice on a node) stops at once with one line naming the folder and the Runner that has it;
it connected with the same credential, and the two took each other's place at the Host
several times a second for as long as both ran."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from hakuriver_common import commands as cli
from hakuriver_common.locks import hold_lock
from hakuriver_runner.main import main


def test_a_second_runner_on_the_same_state_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    state_dir = tmp_path / "runner"
    config = tmp_path / "config.toml"
    config.write_text(f'[runner]\nname = "a"\nstate_dir = "{state_dir}"\n')
    state_dir.mkdir()
    first = hold_lock(state_dir / "runner.lock")  # as the Runner that runs holds it
    try:
        with pytest.raises(cli.Exit) as stopped:
            main(config=config)
    finally:
        os.close(first)
    assert stopped.value.exit_code == 1
    logging.getLogger().handlers[0].flush()  # written by the log's thread (as at exit)
    # Logged as the Runner's other refusals at start (here to the terminal: no log file).
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(
        f" ERROR hakuriver_runner.main: another Runner (pid {os.getpid()}) is using "
        f"runner.state_dir {state_dir}: stop it first, or give this one its own "
        "runner.state_dir and runner.name"
    )
