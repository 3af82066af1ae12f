"""The command-line tools as a new user meets them, against a real cluster.

--config and --json before the subcommand, the user's words in --json, what submit says
about placement, --wait riding out a Host restart, two quickstart clusters side by side
(each with its own CA and admin).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb, task_pb2
from hakuriver_common.statuses import TaskStatus
from tests.e2e.harness import ProcessCluster, free_port, wait_for
from tests.e2e.test_followers_restart import TRANSPORTS, Tool

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
PROTO_WORDS = re.compile(r"TASK_STATUS_|TASK_KIND_|NODE_STATUS_")
RUNNING = {task_pb2.TASK_STATUS_RUNNING}


def run(
    tool: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """A CLI tool with exactly the given arguments and environment (no harness config)."""
    return subprocess.run(
        [*ProcessCluster.cli_argv(tool), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture(scope="module")
def decoy(cluster: ProcessCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster's config (CA, credentials) naming ports where no Host listens (the API's
    and the dashboard's, which the tools call first)."""
    path = tmp_path_factory.mktemp("decoy") / "decoy.toml"
    text = cluster.config_path.read_text()
    text = text.replace(f"host_port = {cluster.host_port}\n", f"host_port = {free_port()}\n")
    path.write_text(text.replace(f"port = {cluster.dashboard_port}\n", f"port = {free_port()}\n"))
    return path


def _port(config: Path) -> str:
    found = re.search(r"^host_port = (\d+)$", config.read_text(), re.MULTILINE)
    assert found
    return found[1]


def _json(result: subprocess.CompletedProcess[str], code: int = 0) -> Any:
    assert result.returncode == code, result.stdout + result.stderr
    assert not PROTO_WORDS.search(result.stdout), result.stdout
    return json.loads(result.stdout)


# ----- --config and --json before the subcommand ---------------------------------------

READ_COMMANDS = [
    ("client", "nodes"),
    ("task", "list"),
    ("docker", "list-tars"),
    ("vps", "status"),
]


@pytest.mark.parametrize(("tool", "command"), READ_COMMANDS)
def test_config_before_the_subcommand(
    cluster: ProcessCluster, decoy: Path, tool: str, command: str
) -> None:
    good = str(cluster.config_path)
    env = {"HAKURIVER_CONFIG": str(decoy)}
    before = run(tool, "--config", good, command, env=env)
    assert before.returncode == 0, before.stderr
    # The option after the subcommand wins over the one before; both over the environment.
    after_wins = run(tool, "--config", str(decoy), command, "--config", good, env=env)
    assert after_wins.returncode == 0, after_wins.stderr
    decoy_port = _port(decoy)
    refused = run(tool, "--config", good, command, "--config", str(decoy))
    assert refused.returncode == 1 and f":{decoy_port}" in refused.stderr, refused.stderr
    from_env = run(tool, command, env={"HAKURIVER_CONFIG": good})
    assert from_env.returncode == 0, from_env.stderr


@pytest.mark.parametrize(("tool", "command"), READ_COMMANDS)
def test_json_before_the_subcommand(cluster: ProcessCluster, tool: str, command: str) -> None:
    body = _json(run(tool, "--json", "--config", str(cluster.config_path), command))
    assert isinstance(body, list)


def test_admin_takes_global_options_before_and_after_its_groups(
    cluster: ProcessCluster, decoy: Path
) -> None:
    good = str(cluster.config_path)
    env = {"HAKURIVER_CONFIG": str(decoy)}
    for argv in (
        ("--json", "--config", good, "user", "list"),
        ("user", "--config", good, "--json", "list"),
        ("--config", str(decoy), "user", "list", "--config", good, "--json"),
    ):
        users = _json(run("admin", *argv, env=env))
        assert "admin" in [u["name"] for u in users], argv


def test_global_option_the_subcommand_does_not_take_is_refused(cluster: ProcessCluster) -> None:
    result = cluster.cli("task", "--json", "stdout", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --json does not apply to the stdout command"


def test_init_service_config_before_the_subcommand(
    cluster: ProcessCluster, decoy: Path, tmp_path: Path
) -> None:
    good = cluster.config_path
    env = {"HAKURIVER_CONFIG": str(decoy)}
    written = run("init", "--config", str(good), "service", "--output-dir", str(tmp_path), env=env)
    assert written.returncode == 0, written.stderr
    unit = (tmp_path / "hakuriver-host.service").read_text()
    assert f"--config {good.resolve()}" in unit
    again = run(
        "init",
        "--config",
        str(decoy),
        "service",
        "--config",
        str(good),
        "--output-dir",
        str(tmp_path / "again"),
        env=env,
    )
    assert again.returncode == 0, again.stderr
    assert (
        f"--config {good.resolve()}" in (tmp_path / "again" / "hakuriver-host.service").read_text()
    )
    # `init config` writes a config and takes no --config.
    refused = run("init", "--config", str(good), "config", "-o", str(tmp_path / "c.toml"))
    assert refused.returncode == 2 and "--config does not apply" in refused.stderr


# ----- --json speaks the user's words ---------------------------------------------------


def test_json_task_status_kind_and_timeline_words(cluster: ProcessCluster) -> None:
    body = _json(cluster.cli("task", "submit", "--wait", "--json", "--", "true"))
    [task] = body["tasks"]
    assert (task["status"], task["kind"]) == ("completed", "command")
    detail = _json(cluster.cli("client", "status", task["task_id"], "--json"))
    assert (detail["task"]["status"], detail["task"]["kind"]) == ("completed", "command")
    assert [e["status"] for e in detail["events"]] == [
        "pending",
        "assigning",
        "running",
        "completed",
    ]
    waited = _json(cluster.cli("task", "wait", task["task_id"], "--json"))
    assert waited["status"] == "completed"
    listed = _json(cluster.cli("task", "list", "--json", "--kind", "command"))
    assert {t["kind"] for t in listed} == {"command"}
    assert {t["status"] for t in listed} <= {s.value for s in TaskStatus}


def test_json_killed_and_killed_oom(cluster: ProcessCluster) -> None:
    oom = 'x=$(head -c 64000000 /dev/zero | tr "\\0" a); echo survived'
    body = _json(
        cluster.cli("task", "submit", "--wait", "--json", "--memory", "16M", "--", "sh", "-c", oom),
        code=1,
    )
    assert body["tasks"][0]["status"] == "killed_oom"
    sleeper = cluster.submit(["sleep", "60"])
    cluster.wait_status(sleeper.task_id, RUNNING)
    killed = _json(cluster.cli("client", "kill", str(sleeper.task_id), "--json"))
    assert killed["status"] in ("running", "killed")  # the kill is asked; it ends shortly
    cluster.wait_final(sleeper.task_id)
    listed = _json(cluster.cli("task", "list", "--json", "--status", "killed"))
    assert str(sleeper.task_id) in [t["task_id"] for t in listed]
    assert {t["status"] for t in listed} == {"killed"}


def test_json_node_status_words(cluster: ProcessCluster) -> None:
    nodes = _json(cluster.cli("client", "nodes", "--json"))
    statuses = {n["hostname"]: n["status"] for n in nodes}
    assert [statuses.get(name) for name in cluster.runner_names] == ["online", "online"]
    name = cluster.runner_names[0]
    [health] = _json(cluster.cli("client", "health", name, "--json"))
    assert health["status"] == "online"
    watched = cluster.cli("client", "health", name, "--watch", "--count", "1", "--json")
    assert json.loads(_json_lines(watched)[0])["status"] == "online"
    drained = _json(cluster.cli("client", "drain", name, "--json"))
    assert drained["status"] == "online" and drained["draining"] is True
    assert _json(cluster.cli("client", "undrain", name, "--json"))["status"] == "online"


def _json_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    assert not PROTO_WORDS.search(result.stdout), result.stdout
    return result.stdout.splitlines()


def test_json_vps_words(cluster: ProcessCluster, sshd_image: str) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    submitted = _json(
        cluster.cli(
            "vps", "submit", "--container", sshd_image, "--public-key-string", key, "--json"
        )
    )
    assert submitted["kind"] == "vps"
    task_id = submitted["task_id"]
    cluster.wait_status(int(task_id), RUNNING, timeout=60)
    active = _json(cluster.cli("vps", "status", "--json"))
    assert [(t["kind"], t["status"]) for t in active if t["task_id"] == task_id] == [
        ("vps", "running")
    ]
    paused = _json(cluster.cli("vps", "command", task_id, "pause", "--json"))
    assert paused["status"] == "paused"
    _json(cluster.cli("vps", "kill", task_id, "--json"))
    assert cluster.wait_final(int(task_id)).status == task_pb2.TASK_STATUS_KILLED
    listed = _json(cluster.cli("task", "list", "--json", "--kind", "vps"))
    assert [t["status"] for t in listed if t["task_id"] == task_id] == ["killed"]


# ----- what submit says -----------------------------------------------------------------


def test_submit_on_an_idle_cluster_does_not_say_queued(cluster: ProcessCluster) -> None:
    result = cluster.cli("task", "submit", "--", "true")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert "queue" not in line, line
    names = "|".join(map(re.escape, cluster.runner_names))
    assert re.fullmatch(rf"submitted task \d+ \((assigning|running|completed) on ({names})\)", line)


def test_submit_to_many_targets_of_large_tasks_shows_every_task(cluster: ProcessCluster) -> None:
    """The Host's answer to a submission of large tasks is cut short under the message limit
    (`created` counts them all): submit lists the batch for the rest, so that it prints,
    and with --wait waits for, every task it made, not the first dozen."""
    name = cluster.runner_names[0]
    targets = [arg for _ in range(16) for arg in ("--target", name)]
    large = ["x" * 85_000] * 3  # 255 KB a task: 16 of them are over the Host's 3 MiB page
    body = _json(cluster.cli("task", "submit", "--wait", "--json", *targets, "--", "true", *large))
    assert len({t["task_id"] for t in body["tasks"]}) == 16
    assert {t["status"] for t in body["tasks"]} == {"completed"}


def _cores(cluster: ProcessCluster, name: str) -> int:
    nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5).nodes
    [node] = [n for n in nodes if n.hostname == name]
    return node.total_cores


def test_submit_that_must_wait_says_queued(cluster: ProcessCluster) -> None:
    name = cluster.runner_names[1]
    blocker = cluster.submit(
        ["sleep", "120"], targets=[task_pb2.Target(hostname=name)], cores=_cores(cluster, name)
    )
    try:
        cluster.wait_status(blocker.task_id, RUNNING)
        result = cluster.cli("task", "submit", "--target", name, "--", "true")
        assert result.returncode == 0, result.stderr
        line = result.stdout.strip()
        match = re.fullmatch(rf"submitted task (\d+) \(queued at position 1 for {name}: .+\)", line)
        assert match, line
        waiting = int(match[1])
        assert cluster.get(waiting).status == task_pb2.TASK_STATUS_PENDING
    finally:
        cluster.cli("client", "kill", str(blocker.task_id))
    assert cluster.wait_final(waiting).status == task_pb2.TASK_STATUS_COMPLETED


# ----- --wait rides out a Host restart ----------------------------------------------------


@pytest.mark.parametrize("array", [[], ["--array", "0"]], ids=["task", "array"])
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "restart"])
def test_wait_reconnects_after_the_host_comes_back(
    fresh_cluster: ProcessCluster, stop: signal.Signals, array: list[str]
) -> None:
    """A task's --wait follows its status stream, an array's asks for its counts: both say
    when they lose the Host and when it answers again."""
    c = fresh_cluster
    proc = subprocess.Popen(
        [
            *c.cli_argv("task"),
            "submit",
            "--wait",
            "--poll-interval",
            "0.3",
            *array,
            "--",
            "sh",
            "-c",
            "sleep 6; echo done",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HAKURIVER_CONFIG": str(c.config_path), "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.match(r"submitted (task|array) (\d+)", first)
        assert match, first
        task_id = int(match[2]) + (1 if array else 0)  # an array's first task follows its id
        c.wait_status(task_id, RUNNING)
        c.kill_host(stop)
        time.sleep(2)
        assert proc.poll() is None, "--wait gave up while the Host was away"
        c.start_host()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (first, out, err)
    ended = f"array {task_id - 1}: 1 task: 1 completed" if array else f"task {task_id}: completed"
    assert ended in out
    lines = err.splitlines()
    assert len([x for x in lines if x.startswith("lost the host at")]) == 1, err
    assert len([x for x in lines if "answers again" in x]) == 1, err
    assert c.read_log(task_id) == b"done\n"


# ----- two quickstart clusters on one machine ------------------------------------------


def _free_block(size: int) -> int:
    """A port with the ``size`` ports from it free."""
    for _ in range(50):
        start = free_port()
        socks = []
        try:
            for port in range(start, start + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no block of free ports")


def test_two_quickstart_clusters_side_by_side(docker_ready: None, tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "quickstart.sh")
    port = _free_block(8)
    envs = [
        {
            **os.environ,
            "HAKURIVER_PYTHON": sys.executable,
            "HAKURIVER_QUICKSTART_DIR": str(tmp_path / f"qs{i}"),
            "HAKURIVER_QUICKSTART_PORT": str(port + 4 * i),
        }
        for i in range(2)
    ]
    try:
        for i, env in enumerate(envs):
            started = subprocess.run([script], env=env, capture_output=True, text=True, timeout=180)
            assert started.returncode == 0, started.stdout + started.stderr
            assert f"SSH proxy on 127.0.0.1:{port + 4 * i + 2}" in started.stdout
            assert f"Dashboard: http://127.0.0.1:{port + 4 * i + 3}/" in started.stdout
            config = (tmp_path / f"qs{i}" / "config.toml").read_text()
            assert f"host_ssh_proxy_port = {port + 4 * i + 2}" in config

        def proxies_listen() -> bool:
            for i in range(2):
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port + 4 * i + 2)) != 0:
                        return False
            return True

        wait_for(proxies_listen, what="both SSH proxies listening")
        # Each has its own CA and admin: one's token means nothing to the other.
        configs = [str(tmp_path / f"qs{i}" / "config.toml") for i in range(2)]
        tokens = [(tmp_path / f"qs{i}" / "credentials").read_text().strip() for i in range(2)]
        assert tokens[0] != tokens[1]
        for i, config in enumerate(configs):
            nodes = _json(run("client", "nodes", "--json", env={"HAKURIVER_CONFIG": config}))
            assert [n["status"] for n in nodes] == ["online"]
            crossed = run(
                "client",
                "nodes",
                env={"HAKURIVER_CONFIG": config, "HAKURIVER_TOKEN": tokens[1 - i]},
            )
            assert crossed.returncode == 1 and "refused the API token" in crossed.stderr
    finally:
        for env in envs:
            subprocess.run([script, "stop"], env=env, capture_output=True, text=True)


def test_stdout_with_a_lag_bound_prints_the_end_and_says_what_it_skipped(
    cluster: ProcessCluster,
) -> None:
    task = cluster.submit(["seq", "1000000", "1099999"])  # 800,000 bytes, 8 a line
    assert cluster.wait_final(task.task_id).status == task_pb2.TASK_STATUS_COMPLETED
    tail = cluster.cli("task", "stdout", str(task.task_id), "--max-lag", "1K")
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(tail.stdout) <= 1000 and lines[-1] == "1099999"
    assert all(len(line) == 7 for line in lines)  # whole lines only
    skipped = 800_000 - len(tail.stdout)
    assert tail.stderr.strip() == f"hakuriver: {skipped} bytes of output skipped (--max-lag 1K)"
    whole = cluster.cli("task", "stdout", str(task.task_id))
    assert len(whole.stdout) == 800_000 and whole.stderr == ""
    bad = cluster.cli("task", "stdout", str(task.task_id), "--max-lag", "lots")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --max-lag: cannot parse size")


def test_values_out_of_a_fields_range_are_one_line_usage_errors(cluster: ProcessCluster) -> None:
    for tool, argv in (
        ("task", ["submit", "--cores", "2147483648", "--", "true"]),
        ("task", ["submit", "--priority", "-99999999999999999999", "--", "true"]),
        ("task", ["submit", "--gpus", "2147483648", "--", "true"]),
        ("task", ["submit", "--target", "a::2147483648", "--", "true"]),
        ("task", ["submit", "--target", "a:99999999999999999999", "--", "true"]),
        ("vps", ["submit", "--public-key-string", "k", "--target", "a::0,2147483648"]),
        ("task", ["stdout", "1", "--max-lag", "99999999999T"]),
        ("vps", ["submit", "--public-key-string", "k", "--cores", "4294967296"]),
        ("vps", ["submit", "--public-key-string", "k", "--target", "a", "--target", "b"]),
        ("admin", ["token", "create", "--expires", "3000000d"]),
        ("admin", ["token", "create", "--expires", "9999-12-31T23:00-05:00"]),
        ("admin", ["audit", "--before", "9223372036854775808"]),
    ):
        done = cluster.cli(tool, *argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert "Traceback" not in done.stderr, (argv, done.stderr)
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, (
            argv,
            done.stderr,
        )


def test_a_token_is_saved_or_not_made(cluster: ProcessCluster, tmp_path: Path) -> None:
    def tokens() -> list[str]:
        listed = cluster.cli("admin", "--json", "token", "list", "--include-inactive")
        return [t["token_id"] for t in json.loads(listed.stdout)]

    before = tokens()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    refused = cluster.cli("admin", "token", "create", "--save", str(not_a_folder / "x"))
    assert refused.returncode == 2 and "is not a folder" in refused.stderr, refused.stderr
    assert tokens() == before
    # The checks pass, and the write then fails (its temporary file's name is taken by a
    # folder): nobody holds the secret.
    (tmp_path / "lost.tmp").mkdir()
    lost = cluster.cli("admin", "token", "create", "--save", str(tmp_path / "lost"))
    assert lost.returncode == 1 and lost.stderr.endswith("was revoked again\n"), lost.stderr
    listed = json.loads(
        cluster.cli("admin", "--json", "token", "list", "--include-inactive").stdout
    )
    [made] = [t for t in listed if t["token_id"] not in before]
    assert made.get("revoked_at"), made
    saved = cluster.cli("admin", "token", "create", "--save", str(tmp_path / "saved"))
    assert saved.returncode == 0, saved.stderr
    assert f"keeps it in {cluster.credentials} (chmod 600)" in saved.stderr
    theirs = cluster.cli(
        "admin", "token", "create", "--user", "admin", "--save", str(tmp_path / "t")
    )
    assert "keeps it in their auth.credentials_file (chmod 600)" in theirs.stderr, theirs.stderr


def test_every_watcher_and_follower_ends_at_ctrl_c_with_exit_130(cluster: ProcessCluster) -> None:
    """Ctrl-C ends each tool that follows the Host until stopped as the shell's convention
    for SIGINT has it, over either transport: exit 130, no traceback, no "Aborted!" (`task
    list --watch` exited 0, the others 130). `submit --wait` (as `wait`) says the task
    carries on; the others stop quietly, having printed what they follow."""
    (cluster.shared_dir / "shared_data").mkdir(parents=True, exist_ok=True)
    gate = "ctrl-c-gate"
    held = f"while [ ! -e /shared/{gate} ]; do sleep 0.05; done"
    task = cluster.submit(["sh", "-c", f"echo out; echo err >&2; {held}"])
    cluster.wait_status(task.task_id, RUNNING)
    wait_for(lambda: cluster.read_log(task.task_id) == b"out\n", what="its output")
    tid = str(task.task_id)
    watchers = {
        "list --watch": (["task", "list", "--watch"], tid),
        "list --watch --json": (["task", "list", "--watch", "--json"], tid),
        "health --watch --json": (["client", "health", "--watch", "--json"], "hostname"),
        "stdout --follow": (["task", "stdout", "--follow", tid], "out"),
        "stderr --follow": (["task", "stderr", "--follow", tid], "err"),
        "submit --wait": (["task", "submit", "--wait", "--", "sh", "-c", held], "submitted"),
    }
    tools = {
        f"{name} over {transport}": (Tool(cluster, argv, env), shown)
        for name, (argv, shown) in watchers.items()
        for transport, env in TRANSPORTS.items()
    }
    try:
        for name, (tool, shown) in tools.items():
            wait_for(
                lambda t=tool, s=shown: any(s in x for x in t.lines),  # type: ignore[misc]
                what=f"{name} printing",
            )
        for tool, _ in tools.values():
            tool.proc.send_signal(signal.SIGINT)
        for name, (tool, _) in tools.items():
            code, err = tool.ended(), tool.stderr()
            assert code == 130, (name, code, err)
            if name.startswith("submit"):
                assert re.fullmatch(r"error: stopped waiting; task \d+ carries on \(.*\)\n", err)
            else:
                assert err == "", (name, err)
    finally:
        for tool, _ in tools.values():
            if tool.proc.poll() is None:
                tool.proc.kill()
                tool.proc.wait()
        (cluster.shared_dir / "shared_data" / gate).touch()
    cluster.wait_final(task.task_id)
