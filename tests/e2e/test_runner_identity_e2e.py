"""Runner identity with real Runner processes: the join token buys a credential kept 0600 in
the state dir, a restart presents it, and a process claiming a registered node's name
without it, a Runner with nothing to present and a revoked Runner are all kept out."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    audit_service_pb2 as aupb,
    audit_service_pb2_grpc,
    node_service_pb2 as npb,
    task_pb2,
)
from tests.e2e.harness import ProcessCluster, running_cluster, wait_for

pytestmark = pytest.mark.docker
RUNNING = {task_pb2.TASK_STATUS_RUNNING}


@pytest.fixture(scope="module")
def cluster(
    docker_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessCluster]:
    """A silent node goes offline after 3 s (a revoked Runner stays silent)."""
    root = tmp_path_factory.mktemp("identity")
    with running_cluster(root, runner_count=1, heartbeat_timeout_factor=6) as c:
        yield c


def audit(cluster: ProcessCluster, action: str, target: str) -> list[aupb.AuditEvent]:
    """The audit events of ``action`` on ``target``, newest first."""
    assert cluster.channel is not None
    stub = audit_service_pb2_grpc.AuditServiceStub(cluster.channel)
    reply = stub.ListAuditEvents(aupb.ListAuditEventsRequest(action=action, limit=1000), timeout=10)
    return [e for e in reply.events if e.target == target]


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


def waiting_task(cluster: ProcessCluster, name: str, flag: str) -> int:
    """A task on runner ``name`` that prints, waits for a file in /shared, prints again."""
    script = f"echo before; while [ ! -e /shared/{flag} ]; do sleep 0.1; done; echo after"
    task = cluster.submit(["sh", "-c", script], targets=[task_pb2.Target(hostname=name)])
    cluster.wait_status(task.task_id, RUNNING)
    wait_for(lambda: cluster.read_log(task.task_id) == b"before\n", what="the first line")
    return task.task_id


def release(cluster: ProcessCluster, flag: str) -> None:
    (cluster.shared_dir / "shared_data" / flag).touch()


def spawn_runner(
    cluster: ProcessCluster, log: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """A Runner process outside the harness's bookkeeping (an impostor, a misconfigured one)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hakuriver_runner", "--config", str(cluster.config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )


def end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_first_join_keeps_a_private_credential_and_a_restart_presents_it(
    cluster: ProcessCluster,
) -> None:
    name = cluster.runner_names[0]
    path = cluster.runner_state_dir(name) / "credential"
    # The Host lists the node once it acknowledged; the Runner keeps the credential next.
    wait_for(path.exists, what="the Runner to keep its credential")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credential = path.read_text().strip()
    assert credential.startswith("hkrr_")
    listed = cluster.access.ListRunnerCredentials(apb.ListRunnerCredentialsRequest(), timeout=10)
    assert [c.hostname for c in listed.credentials] == [name]
    assert [e.outcome for e in audit(cluster, "runner.join", name)] == [aupb.AUDIT_OUTCOME_ALLOWED]

    task_id = waiting_task(cluster, name, "restart")
    cluster.kill_runner(name)
    cluster.start_runner(name)
    # Back online with the same credential (the join token cannot take a registered name),
    # and the running task was re-adopted: its output goes on and its exit is reported.
    assert path.read_text().strip() == credential
    assert len(audit(cluster, "runner.join", name)) == 1
    assert audit(cluster, "runner.register", name) == []
    release(cluster, "restart")
    final = cluster.wait_final(task_id)
    assert final.status == task_pb2.TASK_STATUS_COMPLETED, final.error_message
    assert cluster.read_log(task_id) == b"before\nafter\n"


def test_a_second_process_with_a_registered_name_is_refused(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    name = cluster.runner_names[0]
    task_id = waiting_task(cluster, name, "impostor")
    real_log = cluster.root / f"runner-{name}.log"
    registrations = real_log.read_text().count("registered with host")
    impostor_log = tmp_path / "impostor.log"
    impostor = spawn_runner(
        cluster,
        impostor_log,
        {"HAKURIVER_RUNNER__NAME": name, "HAKURIVER_RUNNER__STATE_DIR": str(tmp_path / "state")},
    )
    try:
        refusals = wait_for(
            lambda: len(audit(cluster, "runner.register", name)) >= 2,
            what="two refused registrations",
        )
        assert refusals
        # Tasks submitted meanwhile go to the real Runner, which kept its stream.
        other = cluster.submit(["echo", "still here"], targets=[task_pb2.Target(hostname=name)])
        assert cluster.wait_final(other.task_id).status == task_pb2.TASK_STATUS_COMPLETED
        assert cluster.read_log(other.task_id) == b"still here\n"
        assert cluster.get(task_id).status == task_pb2.TASK_STATUS_RUNNING
    finally:
        end(impostor)
    events = audit(cluster, "runner.register", name)
    assert {(e.outcome, e.actor) for e in events} == {(aupb.AUDIT_OUTCOME_REFUSED, "joining")}
    assert "registered with its own credential" in events[0].detail

    log = impostor_log.read_text()
    assert "registered with host" not in log and "Traceback" not in log
    errors = {line.split(": ", 1)[1] for line in error_lines(log)}
    assert errors == {
        f"the host refused this runner: register: runner {name} is registered with its own "
        "credential; the join token cannot take its place (an admin can revoke it: "
        f"hakuriver.admin runner revoke {name}) (PERMISSION_DENIED)"
    }
    assert not (tmp_path / "state" / "credential").exists()
    assert real_log.read_text().count("registered with host") == registrations
    assert cluster.node_online(name)
    release(cluster, "impostor")
    final = cluster.wait_final(task_id)
    assert final.status == task_pb2.TASK_STATUS_COMPLETED, final.error_message
    assert cluster.read_log(task_id) == b"before\nafter\n"


def refused_at_start(
    cluster: ProcessCluster,
    state: Path,
    name: str,
    env: dict[str, str] | None = None,
    exits: int = 2,
) -> str:
    """Run a Runner whose config has no join token (unless ``env`` gives one): its one
    error line (it exits ``exits``: 2 for what a restart cannot fix)."""
    log = state.parent / f"{name}.log"
    runner = spawn_runner(
        cluster,
        log,
        {
            "HAKURIVER_RUNNER__NAME": name,
            "HAKURIVER_RUNNER__STATE_DIR": str(state),
            "HAKURIVER_AUTH__JOIN_TOKEN": "",
            **(env or {}),
        },
    )
    try:
        code = runner.wait(30)
    finally:
        end(runner)
    text = log.read_text()
    assert code == exits and "Traceback" not in text, text
    [line] = error_lines(text)
    nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=10).nodes
    assert name not in [n.hostname for n in nodes]
    return line.split(": ", 1)[1]


def test_a_runner_with_nothing_to_present_does_not_register(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    state = tmp_path / "empty"
    assert refused_at_start(cluster, state, "nobody") == (
        f"cannot join the cluster: no runner credential at {state / 'credential'} and no "
        "auth.join_token in the config: copy the Host's join token into the config to join"
    )


def test_a_runner_refuses_a_credential_file_others_can_read(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    state = tmp_path / "shared-state"
    state.mkdir()
    credential = state / "credential"
    credential.write_text("hkrr_" + "x" * 43 + "\n")
    credential.chmod(0o644)
    assert refused_at_start(cluster, state, "careless") == (
        f"cannot join the cluster: {credential} is accessible by others (mode 0644): "
        f"run chmod 600 {credential}"
    )


def test_a_runner_without_its_ca_file_says_so_once_and_exits(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    env = {"HAKURIVER_TLS__CA_FILE": str(missing), "HAKURIVER_AUTH__JOIN_TOKEN": cluster.join_token}
    line = refused_at_start(cluster, tmp_path / "state", "no-ca", env)
    assert line.startswith("cannot connect to the Host: ") and str(missing) in line, line


def test_a_runner_with_a_name_the_host_would_refuse_says_why_and_exits(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """Refused as invalid by the Host, it would be refused again: it exits 2 when it reads
    its config (before, it reached the Host and exited 1 on INVALID_ARGUMENT), on stderr
    whether or not its log goes to a file, and does not register."""
    for log_file in ("", str(tmp_path / "runner-file.log")):
        runner = subprocess.Popen(
            [sys.executable, "-m", "hakuriver_runner", "--config", str(cluster.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "HAKURIVER_AUTH__JOIN_TOKEN": cluster.join_token,
                "HAKURIVER_RUNNER__NAME": "Bad Name!",
                "HAKURIVER_RUNNER__STATE_DIR": str(tmp_path / "state"),
                "HAKURIVER_PATHS__RUNNER_LOG_FILE": log_file,
            },
        )
        try:
            _, stderr = runner.communicate(timeout=30)
        finally:
            end(runner)
        assert runner.returncode == 2
        [line] = stderr.splitlines()
        assert line.startswith("error: invalid config ") and (
            "runner.name (HAKURIVER_RUNNER__NAME): 'Bad Name!' is not a valid runner name" in line
        ), line
    nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=10).nodes
    assert "Bad Name!" not in [n.hostname for n in nodes]


def test_a_revoked_runner_is_disconnected_and_stays_out(cluster: ProcessCluster) -> None:
    name = cluster.start_runner(f"r{cluster.tag}-revoked")
    kept = cluster.runner_state_dir(name) / "credential"
    wait_for(kept.exists, what="the Runner to keep its credential")
    cluster.access.RevokeRunnerCredential(
        apb.RevokeRunnerCredentialRequest(hostname=name), timeout=10
    )
    refused = (
        f"the host refused this runner: the credential of runner {name} was revoked: remove "
        "it from the runner's state_dir and join again with the join token (UNAUTHENTICATED)"
    )

    def said_so() -> bool:
        return refused in cluster.log(f"runner-{name}.log")

    wait_for(said_so, what="the runner to log the refusal")
    wait_for(lambda: not cluster.node_online(name), what=f"{name} to go offline")
    listed = cluster.access.ListRunnerCredentials(apb.ListRunnerCredentialsRequest(), timeout=10)
    [credential] = [c for c in listed.credentials if c.hostname == name]
    assert credential.HasField("revoked_at")
    assert [e.outcome for e in audit(cluster, "runner.revoke", name)] == [
        aupb.AUDIT_OUTCOME_ALLOWED
    ]


def test_a_runner_whose_state_dir_it_cannot_read_says_so_and_exits(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """runner.state_dir naming a file (a path typed wrong): a traceback ending in
    NotADirectoryError for .../cluster_id."""
    state = tmp_path / "a-file"
    state.write_text("")
    assert refused_at_start(cluster, state, "blocked", exits=1) == (
        f"cannot use runner.state_dir {state}: Not a directory"
    )


def test_a_runner_that_cannot_make_its_scratch_folder_says_so_and_exits(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    """paths.local_temp_dir under a file: the Runner joined, and every task placed on it
    failed with "the runner could not start it: [Errno 20] Not a directory: ..." (a
    traceback in its log each time)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {"HAKURIVER_PATHS__LOCAL_TEMP_DIR": str(blocker / "scratch")}
    assert refused_at_start(cluster, tmp_path / "state", "no-scratch", env, exits=1) == (
        f"cannot create paths.local_temp_dir {blocker / 'scratch'}: Not a directory"
    )
