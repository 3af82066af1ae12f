"""Identities from the command line, against a real Host over TLS.

An admin adds a user and gives them a token with hakuriver.admin; the user sees only their
own tasks and cannot manage users; revoked and expired tokens are refused; the audit log
shows it all. Credentials files others can read, and TLS/plaintext mismatches, end in one
clear line. hakuriver.init tls makes files a Host serves with.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from hakuriver_common.config import load_config
from tests.e2e.harness import ProcessCluster, running_cluster, wait_for
from tests.tls import tls_files

pytestmark = pytest.mark.docker


def run(
    cluster: ProcessCluster, tool: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """A CLI tool against ``cluster``'s config, as the admin unless HAKURIVER_TOKEN is given."""
    base = {k: v for k, v in os.environ.items() if k != "HAKURIVER_TOKEN"}
    return subprocess.run(
        [*ProcessCluster.cli_argv(tool), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "HAKURIVER_CONFIG": str(cluster.config_path), "COLUMNS": "200", **env},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The only stderr line of a refused command: no traceback, no gRPC log lines."""
    assert result.returncode == code, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: "), line
    return line


@pytest.fixture(scope="module")
def secured(
    docker_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessCluster]:
    with running_cluster(tmp_path_factory.mktemp("secured"), runner_count=1) as c:
        yield c


# ----- credentials files and transport mismatches --------------------------------------

# The tools call the dashboard's port first (plain HTTP in the harness, see cli.md); the TLS
# checks below are the gRPC port's, so these runs turn the dashboard off in the tool's config.
# The Connect link's own mismatch is in tests/unit/test_connect_link.py.
OVER_GRPC = {"HAKURIVER_DASHBOARD__ENABLED": "false"}


def test_credentials_file_readable_by_others_is_refused(
    secured: ProcessCluster, tmp_path: Path
) -> None:
    copy = tmp_path / "credentials"
    shutil.copy(secured.credentials, copy)
    copy.chmod(0o644)
    refused = run(secured, "client", "nodes", HAKURIVER_AUTH__CREDENTIALS_FILE=str(copy))
    line = one_error_line(refused, code=2)
    assert "accessible by others" in line and f"chmod 600 {copy}" in line
    copy.chmod(0o600)
    ok(run(secured, "client", "nodes", HAKURIVER_AUTH__CREDENTIALS_FILE=str(copy)))


def test_plaintext_client_against_tls_host_is_one_line(secured: ProcessCluster) -> None:
    refused = run(secured, "client", "nodes", HAKURIVER_TLS__PLAINTEXT="true", **OVER_GRPC)
    line = one_error_line(refused)
    assert f"127.0.0.1:{secured.host_port}" in line and "expects TLS" in line


def test_tls_client_against_plaintext_host_is_one_line(docker_ready: None, tmp_path: Path) -> None:
    plain = ProcessCluster(tmp_path, runner_count=0, extra_sections={"tls": "plaintext = true"})
    try:
        plain.start()
        ok(run(plain, "client", "nodes", **OVER_GRPC))  # the Host answers plaintext clients
        refused = run(plain, "client", "nodes", HAKURIVER_TLS__PLAINTEXT="false", **OVER_GRPC)
        line = one_error_line(refused)
        assert "does not speak TLS" in line and "tls.plaintext" in line
    finally:
        plain.stop()


# ----- an admin gives a user a token ------------------------------------------------------


def _user_token(cluster: ProcessCluster, name: str, tmp_path: Path, *extra: str) -> str:
    """Add ``name`` as a user and save a token for them the way the README says."""
    added = ok(run(cluster, "admin", "user", "add", name, "--role", "user"))
    assert f"added user {name} (user)" in added
    saved = tmp_path / f"{name}.token"
    made = run(cluster, "admin", "token", "create", "--user", name, "--save", str(saved), *extra)
    assert "saved token " in ok(made) and str(saved) in made.stdout
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    return saved.read_text().strip()


def test_user_sees_only_their_own_tasks_and_cannot_manage_users(
    secured: ProcessCluster, tmp_path: Path
) -> None:
    token = _user_token(secured, "alice", tmp_path)
    users = as_json(run(secured, "admin", "--json", "user", "list"))
    assert {(u["name"], u["role"]) for u in users} >= {("admin", "admin"), ("alice", "user")}
    me = as_json(run(secured, "admin", "whoami", "--json", HAKURIVER_TOKEN=token))
    assert (me["user"], me["role"]) == ("alice", "user")

    submit = ("task", "submit", "--wait", "--json", "--network", "none", "--", "true")
    [mine] = as_json(run(secured, *submit, HAKURIVER_TOKEN=token))["tasks"]
    assert (mine["owner"], mine["status"], mine["network"]) == ("alice", "completed", "none")
    theirs = as_json(run(secured, "task", "submit", "--json", "--", "true"))["tasks"][0]
    assert (theirs["owner"], theirs["network"]) == ("admin", "host")  # the Host's default

    listed = as_json(run(secured, "task", "list", "--json", HAKURIVER_TOKEN=token))
    assert {t["owner"] for t in listed} == {"alice"}
    assert mine["task_id"] in [t["task_id"] for t in listed]
    table = ok(run(secured, "task", "list", HAKURIVER_TOKEN=token))
    assert "owner" in table and "alice" in table and "admin" not in table
    everybody = as_json(run(secured, "task", "list", "--json"))
    assert {"alice", "admin"} <= {t["owner"] for t in everybody}
    only_alice = as_json(run(secured, "task", "list", "--json", "--owner", "alice"))
    assert {t["owner"] for t in only_alice} == {"alice"}
    detail = ok(run(secured, "client", "status", mine["task_id"]))
    assert re.search(r"^owner +alice$", detail, re.MULTILINE), detail
    assert re.search(r"^network +none$", detail, re.MULTILINE), detail

    # Another's task does not exist for her; user management is not hers.
    hidden = run(secured, "client", "status", theirs["task_id"], HAKURIVER_TOKEN=token)
    assert "NOT_FOUND" in one_error_line(hidden)
    denied = run(secured, "admin", "user", "add", "mallory", HAKURIVER_TOKEN=token)
    line = one_error_line(denied)
    assert "PERMISSION_DENIED" in line and "admin role" in line


def test_revoked_token_is_refused(secured: ProcessCluster, tmp_path: Path) -> None:
    token = _user_token(secured, "bob", tmp_path, "--description", "laptop")
    ok(run(secured, "client", "nodes", HAKURIVER_TOKEN=token))
    [listed] = as_json(run(secured, "admin", "token", "list", "--user", "bob", "--json"))
    assert listed["description"] == "laptop" and "revoked_at" not in listed
    ok(run(secured, "admin", "token", "revoke", listed["token_id"]))
    refused = one_error_line(run(secured, "client", "nodes", HAKURIVER_TOKEN=token))
    assert "refused the API token" in refused and "revoked" in refused
    assert as_json(run(secured, "admin", "token", "list", "--user", "bob", "--json")) == []
    [inactive] = as_json(
        run(secured, "admin", "token", "list", "--user", "bob", "--include-inactive", "--json")
    )
    assert inactive["token_id"] == listed["token_id"] and "revoked_at" in inactive
    assert "revoked" in ok(run(secured, "admin", "token", "list", "--all", "--include-inactive"))


def test_expired_token_is_refused(secured: ProcessCluster) -> None:
    ok(run(secured, "admin", "user", "add", "carol"))
    made = as_json(
        run(secured, "admin", "token", "create", "--user", "carol", "--expires", "2s", "--json")
    )
    assert made["token"]["user"] == "carol" and "expires_at" in made["token"]

    def refused() -> str | None:
        result = run(secured, "admin", "whoami", HAKURIVER_TOKEN=made["secret"])
        return one_error_line(result) if result.returncode else None

    assert "expired" in wait_for(refused, timeout=30, what="the token to expire")
    bad = run(secured, "admin", "token", "create", "--expires", "soon")
    assert "--expires 'soon'" in one_error_line(bad, code=2)
    past = run(secured, "admin", "token", "create", "--expires", "2001-01-01")
    assert "in the past" in one_error_line(past, code=2)


def test_audit_shows_submits_and_refusals(secured: ProcessCluster, tmp_path: Path) -> None:
    token = _user_token(secured, "dave", tmp_path)
    ok(run(secured, "task", "submit", "--", "true", HAKURIVER_TOKEN=token))
    one_error_line(run(secured, "admin", "audit", HAKURIVER_TOKEN=token))

    def events() -> list[dict[str, Any]] | None:
        found = as_json(run(secured, "admin", "audit", "--json", "--actor", "dave"))
        actions = {(e["action"], e["outcome"]) for e in found}
        return found if {("task.submit", "allowed"), ("rpc", "refused")} <= actions else None

    found = wait_for(events, what="dave's submit and refusal in the audit log")
    [refusal] = [e for e in found if e["outcome"] == "refused"]
    assert refusal["role"] == "user" and refusal["target"].endswith("/ListAuditEvents")
    assert "admin role" in refusal["detail"]
    refusals = as_json(run(secured, "admin", "audit", "--json", "--refused", "--limit", "1000"))
    assert refusals and {e["outcome"] for e in refusals} == {"refused"}
    assert any(e["actor"] == "dave" for e in refusals)
    created = as_json(run(secured, "admin", "audit", "--json", "--action", "user.create"))
    assert "dave" in [e["target"] for e in created]
    assert "refused" in ok(run(secured, "admin", "audit", "--refused"))


def test_runner_credentials_are_listed_and_revocable(fresh_cluster: ProcessCluster) -> None:
    name = fresh_cluster.runner_names[0]
    [runner] = as_json(run(fresh_cluster, "admin", "runner", "list", "--json"))
    assert runner["hostname"] == name and "revoked_at" not in runner
    ok(run(fresh_cluster, "admin", "runner", "revoke", name))
    [revoked] = as_json(run(fresh_cluster, "admin", "runner", "list", "--json"))
    assert "revoked_at" in revoked
    missing = run(fresh_cluster, "admin", "runner", "revoke", "no-such-node")
    assert "NOT_FOUND" in one_error_line(missing)


# ----- hakuriver.init tls -----------------------------------------------------------------


def test_init_tls_files_serve_a_host(docker_ready: None, tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    cluster = ProcessCluster(tmp_path / "c", runner_count=0)
    folder = tmp_path / "tls"
    made = run(cluster, "init", "tls", "--output-dir", str(folder), "--name", "river.example")
    out = ok(made)
    assert "created the cluster CA" in out and "never copy ca.key or host.key" in out
    for key in ("ca.key", "host.key"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((folder / "host.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    listed = {str(n.value) for n in names}
    assert {"127.0.0.1", socket.gethostname(), "river.example", "localhost", "::1"} <= listed

    again = ok(run(cluster, "init", "tls", "--output-dir", str(folder)))
    assert "kept the existing CA" in again
    ca = (folder / "ca.pem").read_bytes()
    # The harness's config now points at these files instead of the test CA.
    test_ca = tls_files()
    text = cluster.config_path.read_text()
    for old, new in (
        (test_ca.ca_cert, folder / "ca.pem"),
        (test_ca.host_cert, folder / "host.pem"),
        (test_ca.host_key, folder / "host.key"),
    ):
        text = text.replace(f'"{old}"', f'"{new}"')
    cluster.config_path.write_text(text)
    cluster.client_config = load_config(cluster.config_path)
    try:
        cluster.start()
        ok(run(cluster, "client", "nodes", **OVER_GRPC))
        assert (folder / "ca.pem").read_bytes() == ca
        # A client trusting another CA is told so in one line.
        other = run(
            cluster, "client", "nodes", HAKURIVER_TLS__CA_FILE=str(test_ca.ca_cert), **OVER_GRPC
        )
        assert "not signed by tls.ca_file" in one_error_line(other)
        # So is one dialling a name the certificate does not hold (not "cannot reach").
        unnamed = run(
            cluster, "client", "nodes", HAKURIVER_TLS__SERVER_NAME="wrong.example", **OVER_GRPC
        )
        assert "does not name this address (tls.server_name)" in one_error_line(unnamed)
    finally:
        cluster.stop()


def test_a_ca_file_that_is_no_certificate_is_one_line(tmp_path: Path) -> None:
    """A damaged or wrong tls.ca_file (a key, an empty file): the tools said the Host's
    certificate "is not signed by tls.ca_file", and a Runner logged UNAVAILABLE and retried
    for ever; they now say what is wrong with the file, and the Runner stops (exit 2: a
    restart cannot fix it, and systemd's RestartPreventExitStatus=2 does not try)."""
    damaged = tmp_path / "ca.pem"
    damaged.write_text("not a certificate\n")
    config = tmp_path / "config.toml"
    config.write_text(
        "[network]\nhost_port = 1\n[dashboard]\nenabled = false\n"
        f'[tls]\nca_file = "{damaged}"\n'
        f'[runner]\nstate_dir = "{tmp_path / "state"}"\n[auth]\ntoken = "hkrt_x"\n'
        'join_token = "hkrj_x"\n'
    )
    config.chmod(0o600)
    said = (
        f"CA certificate {damaged} is not a PEM certificate: copy the Host's ca.pem there or "
        "set tls.ca_file (hakuriver.init tls creates one on the Host)"
    )
    env = {**os.environ, "HAKURIVER_CONFIG": str(config)}
    client = subprocess.run(
        [*ProcessCluster.cli_argv("client"), "nodes"], capture_output=True, text=True, env=env
    )
    assert one_error_line(client, code=2) == f"error: {said}"
    runner = subprocess.run(
        [sys.executable, "-m", "hakuriver_runner", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert runner.returncode == 2
    assert f"ERROR hakuriver_runner.session: cannot connect to the Host: {said}" in runner.stderr
