"""Config file and environment overrides (loading only; hakuriver.init config is in e2e)."""

from __future__ import annotations

import logging
import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hakuriver_cli import client, direct
from hakuriver_common import commands as cli
from hakuriver_common.config import ConfigError, load_config
from hakuriver_common.service import start_daemon
from hakuriver_host.main import main as host_main
from hakuriver_runner.main import main as runner_main
from tests.unit.cli_threads import exit_code

NOBODY = pwd.getpwnam("nobody").pw_uid


def _refusal(path: Path) -> str:
    """What load_config says of the config at ``path``, which it must refuse."""
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    return str(refused.value)


def test_toml_values_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[network]\nhost_port = 9100\n[timing]\nheartbeat_interval = 2\n")
    assert load_config(path).network.host_port == 9100
    monkeypatch.setenv("HAKURIVER_NETWORK__HOST_PORT", "9200")
    config = load_config(path)
    assert config.network.host_port == 9200
    assert config.timing.runner_timeout == 12.0


def test_missing_and_invalid_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[timing]\nheartbeat_interval = -1\n")
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[nonsense]\nx = 1\n")
    with pytest.raises(ConfigError, match="nonsense"):
        load_config(unknown)


@pytest.mark.parametrize(
    ("timing", "said"),
    [
        (
            "heartbeat_interval = 5000",
            "timing.heartbeat_interval: Input should be less than or equal to 60",
        ),
        (
            "heartbeat_interval = 0.001",
            "timing.heartbeat_interval: Input should be greater than or equal to 0.1",
        ),
        (
            "heartbeat_interval = 60\nheartbeat_timeout_factor = 100",
            "timing: heartbeat_interval x heartbeat_timeout_factor is 6000 s, the silence after "
            "which a Runner is offline: it must be at most 3600",
        ),
    ],
    ids=["milliseconds", "too-often", "silence-of-hours"],
)
def test_heartbeats_that_leave_a_node_online_for_hours_are_refused(
    tmp_path: Path, timing: str, said: str
) -> None:
    """Unbounded, ``heartbeat_interval = 5000`` (meant in ms) was taken: a Runner gone was
    seen offline, its tasks unknown, only hours later."""
    path = tmp_path / "c.toml"
    path.write_text(f"[timing]\n{timing}\n")
    assert _refusal(path) == f"invalid config {path}: {said}"


def test_a_runner_name_the_host_would_refuse_stops_the_runner_when_it_reads_its_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    """It was refused only by the Host, once the Runner had reached it; now the Runner
    exits 2 in one line (and systemd does not restart it, see RestartPreventExitStatus)."""
    path = tmp_path / "c.toml"
    state = f'state_dir = "{tmp_path / "state"}"\n[paths]\nlocal_temp_dir = "{tmp_path}"\n'
    path.write_text(f'[runner]\nname = "Bad Name!"\n{state}')
    assert exit_code(runner_main, path) == 2
    assert capsys.readouterr().err == (
        f"error: invalid config {path}: runner.name: 'Bad Name!' is not a valid runner name: "
        "up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit\n"
    )
    path.write_text('[runner]\nname = "gpu-node_7.lab"\n')
    assert load_config(path).runner.name == "gpu-node_7.lab"


@pytest.mark.parametrize("mount", ["nocolon", "/only/host:", "rel:/x", "/a:/b:rx"])
def test_a_bad_extra_mount_is_refused_when_the_config_is_read(tmp_path: Path, mount: str) -> None:
    """Accepted, every task of the node failed to start on it."""
    path = tmp_path / "c.toml"
    path.write_text(f'[docker]\nadditional_mounts = ["/data:/data", "{mount}"]\n')
    assert f"docker.additional_mounts: mount {mount!r}: " in _refusal(path)


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ('url = "ftp://example.invalid/x"', "http:// or https://"),
        ('url = "http://:8080/x"', "http:// or https://"),
        # Accepted, every delivery failed and the first give-up ended the webhook's worker.
        ('url = "http://127.0.0.1:80x/x"', "Port could not be cast to integer"),
        ('url = "https://hooks.example.org:99999/x"', "Port out of range"),
        ('url = "http://127.0.0.1:0/x"', "port 0 cannot be connected to"),
        # Accepted, every delivery failed logging urllib's words, which quote the path.
        ('url = "https://hooks.example.org/services/s3cret x"', "spaces or control"),
        ('url = "https://hooks.example.org/services/s3cret\\u0007"', "spaces or control"),
        ('url = "http://127.0.0.1:9/x"\nevents = ["task.exploded"]', "task.exploded"),
        # Accepted, every attempt failed: "timestamp out of range for platform time_t".
        ('url = "http://127.0.0.1:9/x"\ntimeout_seconds = inf', "finite number"),
    ],
)
def test_bad_webhooks_are_refused_at_load(tmp_path: Path, hook: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[[webhooks]]\n{hook}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_refused_webhook_url_is_not_shown(tmp_path: Path) -> None:
    """A chat webhook's path is its secret; pasted without its scheme, the Host's refusal
    put it in the journal."""
    path = tmp_path / "c.toml"
    path.write_text('[[webhooks]]\nurl = "hooks.slack.com/services/T0/B0/s3cretPath"\n')
    refused = _refusal(path)
    assert "webhooks.0.url: webhook url must be an http:// or https://" in refused
    assert "s3cretPath" not in refused


def test_a_bad_config_is_one_line_naming_each_problem_and_no_value(tmp_path: Path) -> None:
    """Never the value given: a mistyped key's value may be a secret (it would reach the
    terminal and the journal)."""
    path = tmp_path / "c.toml"
    path.write_text("[network]\nhost_port = 70000\n[auth]\njoin_tokn = 's3cret-join'\n")
    assert _refusal(path) == (
        f"invalid config {path}: network.host_port: Input should be less than or equal to "
        "65535; auth.join_tokn: unknown key (did you mean join_token?)"
    )


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[netwrk]\nhost_port = 1\n", "netwrk: unknown section (did you mean network?)"),
        ("[auth]\nfoo = 1\n", "auth.foo: unknown key"),
        (
            "[[webhooks]]\nurl = 'http://h/'\nevent = ['*']\n",
            "webhooks.0.event: unknown key (did you mean events?)",
        ),
        ("shared_dir = '/x'\n", "shared_dir: a key above every section: it belongs under [paths]"),
        (
            "[network]\nrunner_port = 8001\n",
            "network.runner_port: not used any more (Runners dial the Host, which never "
            "dials them): remove it",
        ),
    ],
)
def test_a_key_the_config_does_not_have_says_which_was_meant(
    tmp_path: Path, text: str, said: str
) -> None:
    """Each said "Extra inputs are not permitted", pydantic's words, whatever the mistake:
    a typo, a key above its section, a key of the reference HakuRiver's config."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert _refusal(path) == f"invalid config {path}: {said}"


def test_a_log_file_that_cannot_be_written_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not "File exists" (mkdir's error for the file in the way).
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = tmp_path / "c.toml"
    path.write_text(f"[paths]\nhost_log_file = '{blocker}/host.log'\n")
    with pytest.raises(SystemExit) as stopped:
        start_daemon(path, lambda config: config.paths.host_log_file)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        f"error: cannot write the log file {blocker}/host.log: Not a directory\n"
    )


def test_a_bad_variable_is_named_not_blamed_on_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[network]\nhost_port = 18100\n")
    monkeypatch.setenv("HAKURIVER_NETWORK__HOST_PORT", "abc")
    assert "network.host_port (HAKURIVER_NETWORK__HOST_PORT): " in _refusal(path)
    monkeypatch.delenv("HAKURIVER_NETWORK__HOST_PORT")
    monkeypatch.setenv("HAKURIVER_DASHBOARD__SERVER_NAMES", "river")
    # Another variable of the section that is no JSON is not blamed: it is no list.
    monkeypatch.setenv("HAKURIVER_DASHBOARD__BIND_IP", "127.0.0.1")
    assert _refusal(path) == (
        f"invalid config {path}: HAKURIVER_DASHBOARD__SERVER_NAMES is not valid: a list is "
        """written as JSON, e.g. HAKURIVER_DASHBOARD__SERVER_NAMES='["a", "b"]'"""
    )
    monkeypatch.setenv("HAKURIVER_DASHBOARD__SERVER_NAMES", '["river"]')
    assert load_config(path).dashboard.server_names == ["river"]


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("HAKURIVER_NETWORK", "set one key at a time, HAKURIVER_NETWORK__<KEY>"),
        ("HAKURIVER_WEBHOOKS", """webhooks are a JSON list, e.g. '[{"url": "..."}]'"""),
    ],
)
def test_a_variable_for_a_whole_section_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, said: str
) -> None:
    """Each said "a HAKURIVER_NETWORK__* variable is not valid: a list is written as JSON",
    naming a variable that was not set and a mistake that was not made."""
    path = tmp_path / "c.toml"
    path.write_text("")
    monkeypatch.setenv(name, "x")
    assert _refusal(path) == f"invalid config {path}: {name} is not valid: {said}"


def test_a_folder_named_as_the_config_is_called_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    assert str(raised.value) == f"config file {tmp_path} is a folder: name the TOML file in it"


def test_an_empty_path_is_refused_not_read_as_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Path("")`` is "."; an optional path given empty is unset instead."""
    path = tmp_path / "c.toml"
    path.write_text("[paths]\nshared_dir = ''\nhost_log_file = ''\n")
    assert _refusal(path) == (
        f"invalid config {path}: paths.shared_dir: an empty path: give one, or leave it out "
        "for its default"
    )
    path.write_text("[paths]\nshared_dir = '/srv/share'\nhost_log_file = ''\n")
    assert load_config(path).paths.host_log_file is None
    monkeypatch.setenv("HAKURIVER_TLS__CA_FILE", " ")
    assert "tls.ca_file (HAKURIVER_TLS__CA_FILE): an empty path" in _refusal(path)


@pytest.mark.parametrize(
    ("text", "held"),
    [
        ("[auth]\njoin_token = 'hkrj_x'\ntoken = 'hkrt_y'\n", "auth.join_token, auth.token"),
        ("[database]\nurl = 'postgresql+psycopg://u:pw@db/h'\n", "database.url"),
        ("[[webhooks]]\nurl = 'http://h/'\nsecret = 's'\n", "webhooks.secret"),
        ("[network]\nhost_port = 8000\n", ""),
    ],
)
def test_a_daemon_says_when_others_can_read_the_secrets_of_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, held: str
) -> None:
    """A Runner's config readable by every user of its node gave them the join token (a
    node of their own, sent users' tasks) without a word; the tools refuse such a
    credentials file, and installation.md asks for 0600."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # start_daemon replaces them
    monkeypatch.setattr(root, "level", root.level)
    log = tmp_path / "runner.log"
    path = tmp_path / "c.toml"
    path.write_text(f"[paths]\nrunner_log_file = '{log}'\n{text}")
    path.chmod(0o600)
    start_daemon(path, lambda config: config.paths.runner_log_file)
    root.handlers[0].flush()  # written by the log's thread
    assert log.read_text() == ""
    path.chmod(0o644)
    start_daemon(path, lambda config: config.paths.runner_log_file)
    root.handlers[0].flush()
    said = f"the config {path} holds {held} and others can read it (mode 0644): run chmod 600 "
    assert said in log.read_text() if held else log.read_text() == ""


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("bad name!", "must be 1-64 letters, digits"),
        ("anonymous", "must not be 'anonymous' or 'joining' (the audit log's names for"),
    ],
)
def test_a_bootstrap_admin_no_user_could_be_named_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, rule: str
) -> None:
    """The Host made the database and then stopped with a traceback, at its first start."""
    path = tmp_path / "c.toml"
    db_file = tmp_path / "db"
    path.write_text(f'[database]\ndb_file = "{db_file}"\n[auth]\nbootstrap_admin = "{name}"\n')
    assert f"auth.bootstrap_admin: a user's name {rule}" in _refusal(path)
    with pytest.raises(cli.Exit):
        host_main(config=path)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: invalid config") and rule in line
    assert not db_file.exists()


@pytest.mark.parametrize(
    ("text", "said"),
    [
        # Each was read as something else: port 1, port 8001, true, 2.
        ("[network]\nhost_port = true\n", "network.host_port: must be an integer, not true/false"),
        (
            '[network]\nmetrics_port = "8001"\n',
            "network.metrics_port: must be an integer, not a string",
        ),
        (
            "[docker]\ntasks_privileged = 1\n",
            "docker.tasks_privileged: must be true or false, not an integer",
        ),
        (
            "[scheduling]\nprepare_ahead = 2.0\n",
            "scheduling.prepare_ahead: must be an integer, not a float",
        ),
        (
            '[timing]\nheartbeat_interval = "5"\n',
            "timing.heartbeat_interval: must be a number, not a string",
        ),
        (
            "[[webhooks]]\nurl = 'http://h/'\nmax_attempts = true\n",
            "webhooks.0.max_attempts: must be an integer, not true/false",
        ),
        (
            "[paths]\nshared_dir = 5\n",
            "paths.shared_dir: must be a string in quotes, not an integer",
        ),
        (
            "[auth]\ntoken = 1979-05-27\n",
            "auth.token: must be a string in quotes, not a date or time",
        ),
        (
            "[dashboard]\nserver_names = 'river'\n",
            "dashboard.server_names: must be a list ([...]), not a string",
        ),
        ("network = 8000\n", "network: must be a table, not an integer"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(
    tmp_path: Path, text: str, said: str
) -> None:
    """TOML has types: a value of another type is a mistake, not one to read as something
    else (the environment's variables, text, are still read as their keys' types)."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert _refusal(path) == f"invalid config {path}: {said}"


def test_every_value_of_the_wrong_type_is_named_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[network]\nhost_port = true\n[auth]\nuser_mount_roots = ['/a', 3]\n")
    assert _refusal(path) == (
        f"invalid config {path}: network.host_port: must be an integer, not true/false; "
        "auth.user_mount_roots.1: must be a string in quotes, not an integer"
    )
    path.write_text("[network]\nhost_port = 9100\n[timing]\nheartbeat_interval = 2\n")
    monkeypatch.setenv("HAKURIVER_DOCKER__TASKS_PRIVILEGED", "1")
    assert load_config(path).docker.tasks_privileged is True


@pytest.mark.parametrize(
    ("value", "said"),
    [("0.5", "greater than or equal to 1"), ("100000", "less than or equal to 86400")],
)
def test_a_dashboard_refresh_out_of_range_is_refused_naming_it(
    tmp_path: Path, value: str, said: str
) -> None:
    """Under a second, every open page would keep the Host busy; beyond a day, the browser's
    timer (at most 2^31 - 1 ms) would fire at once, over and over."""
    path = tmp_path / "c.toml"
    path.write_text(f"[dashboard]\nrefresh_seconds = {value}\n")
    assert f"dashboard.refresh_seconds: Input should be {said}" in _refusal(path)
    path.write_text("")
    assert load_config(path).dashboard.refresh_seconds == 15


@contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    """``path`` as another user's 0600 config: root reads every file, so as root the block
    runs with nobody's effective uid (taken back after it)."""
    path.chmod(0o600)
    if os.geteuid() != 0:
        path.chmod(0)
    else:
        os.seteuid(NOBODY)
    try:
        yield
    finally:
        if os.geteuid() == NOBODY:
            os.seteuid(0)
        path.chmod(0o600)


def test_a_config_this_user_cannot_read_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An admin's 0600 config read by a user's tool, or by a Runner unit's User=, was a
    PermissionError traceback from every tool, Host and Runner."""
    path = tmp_path / "c.toml"
    path.write_text("[network]\nhost_port = 18100\n")
    with _unreadable(path), pytest.raises(SystemExit) as client_exit:
        direct.run(client.app, "hakuriver.client", ["nodes", "--config", str(path)])
    with _unreadable(path), pytest.raises(SystemExit) as host_exit:
        host_main(config=path)
    assert (client_exit.value.code, host_exit.value.code) == (2, 2)
    said = f"error: cannot read the config file {path}: Permission denied\n"
    assert capsys.readouterr().err == said * 2


@pytest.mark.parametrize("address", ["river.lab:8000", "https://river.lab", "10.1.0.10 ", ""])
def test_a_host_reachable_address_no_one_can_dial_is_refused_naming_it(
    tmp_path: Path, address: str
) -> None:
    """Accepted, every tool failed with gRPC's "errors resolving river.lab:8000:8000 ...
    Misformatted domain name" (one with a space with a traceback), and a Runner retried for
    ever."""
    path = tmp_path / "c.toml"
    path.write_text(f'[network]\nhost_reachable_address = "{address}"\n')
    assert _refusal(path) == (
        f"invalid config {path}: network.host_reachable_address: {address!r} is not a host "
        "name or IP address to dial (give names like river.lab.example and addresses like "
        "10.1.0.10, without a scheme, port or spaces)"
    )
    for dialled in ("river.lab", "10.1.0.10", "[::1]", "0.0.0.0"):
        path.write_text(f'[network]\nhost_reachable_address = "{dialled}"\n')
        assert load_config(path).network.host_reachable_address == dialled
