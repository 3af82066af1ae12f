"""hakuriver.init service's units, rendered in-process (tests/e2e/test_init_service.py runs
them)."""

from __future__ import annotations

import grp
import shlex
import sys
from pathlib import Path

import pytest

from hakuriver_cli import init
from hakuriver_cli.init import Role, render_unit
from hakuriver_common import commands as cli
from hakuriver_common.config import load_config
from hakuriver_host import main as host_main
from hakuriver_runner import main as runner_main
from tests.unit.cli_threads import exit_code


def test_relative_paths_are_the_config_folders_wherever_the_units_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The unit runs in the config's folder, so a relative path there names a file in it;
    # written from "/", the sandbox used to open "/" and the database's folder was "/state".
    folder = tmp_path / "etc"
    folder.mkdir()
    config = folder / "config.toml"
    config.write_text(
        '[paths]\nshared_dir = "shared"\nhost_log_file = "logs/host.log"\n'
        '[database]\ndb_file = "state/cluster.db"\n[auth]\ncredentials_file = "admin.token"\n'
    )
    cfg = load_config(config)
    monkeypatch.chdir("/")
    unit = render_unit(Role.host, sys.executable, config, "/usr/bin:/bin", cfg)
    keys = ("ReadWritePaths=", "RequiresMountsFor=")
    lines = dict(line.split("=", 1) for line in unit.splitlines() if line.startswith(keys))
    writable = sorted(p.removeprefix("-") for p in shlex.split(lines["ReadWritePaths"]))
    assert writable == sorted(str(folder / name) for name in ("", "shared", "logs", "state"))
    assert lines["RequiresMountsFor"] == str(folder / "shared")
    assert f"WorkingDirectory={folder}" in unit.splitlines()


def test_a_place_init_cannot_write_is_one_line_and_leaves_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(cli.Exit):
        init.config(output=taken, force=True, json=False)
    said = f"error: {taken} is a folder: name the file to write, e.g. {taken}/config.toml\n"
    assert capsys.readouterr().err == said
    assert list(tmp_path.iterdir()) == [taken]  # no taken.tmp holding the join token
    config = tmp_path / "config.toml"
    config.write_text("")
    (taken / "hakuriver-host.service").mkdir()
    with pytest.raises(cli.Exit):
        init.service(host=True, output_dir=taken, config=config, force=True)
    unit = taken / "hakuriver-host.service"
    assert capsys.readouterr().err == f"error: cannot write {unit}: Is a directory\n"


def test_a_folder_or_a_file_in_the_wrong_place_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``config -o .`` was a ValueError traceback (with --force) or "exists (use --force)",
    which could not help; a file where --output-dir names a folder was mkdir's "File
    exists"."""
    monkeypatch.chdir(tmp_path)
    for force in (False, True):
        with pytest.raises(cli.Exit):
            init.config(output=Path("."), force=force, json=False)
        said = "error: . is a folder: name the file to write, e.g. config.toml\n"
        assert capsys.readouterr().err == said
    config = tmp_path / "config.toml"
    config.write_text("")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(cli.Exit):
        init.service(output_dir=blocker, config=config)
    with pytest.raises(cli.Exit):
        init.tls(output_dir=blocker, config=config)
    said = f"error: cannot write in {blocker}: it is a file, not a folder\n"
    assert capsys.readouterr().err == said * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "config.toml"]


def test_a_host_writing_under_tmp_gets_the_real_tmp_not_one_of_its_own(tmp_path: Path) -> None:
    """PrivateTmp= would hide a shared folder under /tmp from the Runners (a task's output
    folder made where nobody else looks); away from /tmp the Host keeps its own /tmp."""
    config = tmp_path / "config.toml"
    config.write_text('[auth]\ncredentials_file = "/srv/hakuriver/token"\n')
    away = render_unit(Role.host, sys.executable, config, "/usr/bin", load_config(config))
    assert "PrivateTmp=yes" in away.splitlines()
    assert not any(line.startswith('Environment="TMPDIR') for line in away.splitlines())

    config.write_text(
        '[paths]\nshared_dir = "/tmp/cluster-share"\n'
        '[auth]\ncredentials_file = "/srv/hakuriver/token"\n'
    )
    under = render_unit(Role.host, sys.executable, config, "/usr/bin", load_config(config))
    lines = under.splitlines()
    assert "PrivateTmp=yes" not in lines
    assert 'Environment="TMPDIR=/srv/hakuriver"' in lines
    [writable] = [line for line in lines if line.startswith("ReadWritePaths=")]
    assert "-/tmp/cluster-share" in shlex.split(writable.removeprefix("ReadWritePaths="))


def test_a_folder_reached_through_a_link_into_tmp_is_under_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temporary = tmp_path / "tmp"  # this test's /tmp (its own tmp_path lies under the real one)
    (temporary / "cluster-share").mkdir(parents=True)
    monkeypatch.setattr(init, "TEMPORARY", (temporary,))
    link = tmp_path / "srv-share"
    link.symlink_to(temporary / "cluster-share")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[paths]\nshared_dir = "{link}"\n[auth]\ncredentials_file = "/srv/hakuriver/token"\n'
        '[database]\ndb_file = "/srv/hakuriver/cluster.db"\n'
    )
    unit = render_unit(Role.host, sys.executable, config, "/usr/bin", load_config(config))
    assert "PrivateTmp=yes" not in unit.splitlines()
    link.unlink()
    link.mkdir()
    unit = render_unit(Role.host, sys.executable, config, "/usr/bin", load_config(config))
    assert "PrivateTmp=yes" in unit.splitlines()


@pytest.mark.parametrize("systemd", [True, False])
def test_it_says_how_to_start_the_services_with_systemd_and_without(
    systemd: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without systemd as PID 1 it told the admin to `systemctl enable` the units all the
    same, which fails there ("System has not been booted with systemd"); it now says so and
    gives each service's foreground command, the ExecStart of its unit."""
    monkeypatch.setattr(init, "systemd_is_init", lambda: systemd)
    config = tmp_path / "config.toml"
    config.write_text("")
    init.service(output_dir=tmp_path, config=config)
    lines = capsys.readouterr().out.splitlines()
    units = [tmp_path / "hakuriver-host.service", tmp_path / "hakuriver-runner.service"]
    assert lines[:2] == [f"wrote {unit}" for unit in units]
    if systemd:
        assert lines[2:] == [
            f"install: sudo cp {units[0]} {units[1]} /etc/systemd/system/ && sudo systemctl "
            "daemon-reload && sudo systemctl enable --now hakuriver-host.service "
            "hakuriver-runner.service"
        ]
        return
    assert lines[2].startswith("systemd is not running on this machine (it is not PID 1)")
    starts = [
        line.removeprefix("ExecStart=")
        for unit in units
        for line in unit.read_text().splitlines()
        if line.startswith("ExecStart=")
    ]
    assert lines[3:] == [f"  {start}" for start in starts]
    assert [shlex.split(start)[2] for start in starts] == ["hakuriver_host", "hakuriver_runner"]


def test_units_there_already_are_named_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both there said "hakuriver-host.service, hakuriver-runner.service exists"."""
    config = tmp_path / "config.toml"
    config.write_text("")
    units = [tmp_path / "hakuriver-host.service", tmp_path / "hakuriver-runner.service"]
    for unit in units:
        unit.write_text("mine")
    with pytest.raises(cli.Exit):
        init.service(output_dir=tmp_path, config=config)
    assert capsys.readouterr().err == (
        f"error: {units[0]} and {units[1]} exist (use --force to overwrite)\n"
    )
    units[0].unlink()
    with pytest.raises(cli.Exit):
        init.service(output_dir=tmp_path, config=config)
    assert capsys.readouterr().err == f"error: {units[1]} exists (use --force to overwrite)\n"
    assert units[1].read_text() == "mine" and not units[0].exists()


def test_a_runner_user_that_does_not_exist_is_refused_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It wrote User=NAME for a user the machine does not have: systemd then refused to start
    the Runner ("Failed to determine user credentials"), seen only in the journal."""
    config = tmp_path / "config.toml"
    config.write_text('[environment]\nrunner_user = "no-such-user-here"\n')
    units = tmp_path / "units"
    with pytest.raises(cli.Exit) as stopped:
        init.service(runner=True, output_dir=units, config=config)
    assert stopped.value.exit_code == 2
    assert capsys.readouterr().err == (
        "error: environment.runner_user 'no-such-user-here' is no user of this machine: "
        "create it (in the docker group), or leave the key empty to run the Runner as root\n"
    )
    assert not units.exists()
    init.service(host=True, output_dir=units, config=config)  # the Host's unit has no User=
    assert [p.name for p in units.iterdir()] == ["hakuriver-host.service"]


def test_a_runner_user_outside_the_docker_group_is_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        docker = grp.getgrnam("docker")
    except KeyError:
        pytest.skip("no docker group on this machine")
    if "nobody" in docker.gr_mem:
        pytest.skip("nobody is in the docker group here")
    config = tmp_path / "config.toml"
    config.write_text('[environment]\nrunner_user = "nobody"\n')
    init.service(runner=True, output_dir=tmp_path, config=config)
    assert capsys.readouterr().err == (
        "warning: environment.runner_user 'nobody' is not in the docker group: the Runner "
        "will not reach Docker (sudo usermod -aG docker nobody)\n"
    )
    assert (tmp_path / "hakuriver-runner.service").exists()


def test_a_runner_user_who_cannot_read_the_config_is_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hakuriver.init config writes the config 0600 for its writer (root, who writes the
    units): a Runner unit with User= then stopped at its start, said only in the journal."""
    config = tmp_path / "config.toml"
    config.write_text('[environment]\nrunner_user = "nobody"\n')
    config.chmod(0o600)
    init.service(runner=True, output_dir=tmp_path, config=config)
    said = (
        f"warning: environment.runner_user 'nobody' cannot read {config} (mode 0600): the "
        f"Runner would stop at its start (sudo chown nobody {config})\n"
    )
    assert capsys.readouterr().err.endswith(said)
    config.chmod(0o644)
    init.service(runner=True, output_dir=tmp_path, config=config, force=True)
    assert "cannot read" not in capsys.readouterr().err


@pytest.mark.parametrize("role", list(Role))
def test_a_daemon_refusing_its_config_is_not_restarted_for_ever(
    role: Role, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config error exits 2, and the unit restarts on failure, except exit 2: it restarted
    every 5 s, saying the same error each time, until someone noticed."""
    config = tmp_path / "config.toml"
    config.write_text("[timing]\nheartbeat_interval = 0\n")
    start = host_main.main if role is Role.host else runner_main.main
    assert exit_code(start, config) == 2
    assert "timing.heartbeat_interval" in capsys.readouterr().err
    config.write_text("")
    cfg = load_config(config)
    unit = render_unit(role, sys.executable, config, "/usr/bin:/bin", cfg).splitlines()
    assert "Restart=on-failure" in unit
    assert "RestartPreventExitStatus=2" in unit
