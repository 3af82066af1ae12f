"""What a Host loads when it starts on a database it started on before (the usual start):
not Alembic, whose migrations have nothing to do; not docker-py, which only the
environments' calls need (its default environment has its tarball, made at its first start);
not tenacity, which only webhook deliveries need (it has no webhooks); not cryptography,
which makes certificates (hakuriver.init tls) but is not needed to check the Host's pair.

Observed in a real Host process: the Host's own entry (``hakuriver_host.main.run``) under a
``python -c`` wrapper that writes the names in ``sys.modules`` at exit. The Host is stopped
with SIGTERM once it serves, so the names are all it loaded to start, serve and stop. Only
which modules are loaded is checked, never how much memory or time they took (that is
bench/bench_footprint.py's).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest

from tests.e2e.harness import ProcessCluster, default_environment_made, own_default_environment

pytestmark = pytest.mark.docker

PROBE = """
import atexit, json, os, sys
out = os.environ["HAKURIVER_TEST_MODULES"]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["hakuriver.host", *sys.argv[1:]]
from hakuriver_host.main import run
run()
"""


@pytest.fixture(scope="module")
def loaded(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The modules of a Host started once (it makes its database and its default
    environment), stopped, and started again under the probe, asked to delete an
    environment's tarballs (files on shared storage: no Docker), then stopped."""
    root = tmp_path_factory.mktemp("restarted")
    modules = root / "modules.json"
    with own_default_environment() as extra:
        cluster = ProcessCluster(root, runner_count=0, extra_config=extra)
        try:
            cluster.start_host()
            default_environment_made(cluster)
            cluster.kill_host(signal.SIGTERM)
            cluster.start_host({"HAKURIVER_TEST_MODULES": str(modules)}, ("-c", PROBE))
            tarballs = cluster.shared_dir / "hakuriver-containers"
            (tarballs / "old-1700000000.tar").write_bytes(b"")
            deleted = cluster.cli("docker", "delete-tar", "old")
            assert deleted.returncode == 0, deleted.stderr
            cluster.kill_host(signal.SIGTERM)
            assert cluster.host is not None and cluster.host.returncode == 0, cluster.log(
                "host.log"
            )
            yield set(json.loads(modules.read_text()))
        finally:
            cluster.stop()


def test_the_probe_sees_the_host_serve(loaded: set[str]) -> None:
    assert "hakuriver_host.server" in loaded


def test_a_start_on_a_current_database_loads_no_alembic(loaded: set[str]) -> None:
    """The migrations have nothing to do: the database is at the newest revision."""
    assert loaded & {"alembic", "mako", "pygments"} == set()


def test_a_start_with_the_default_environment_made_loads_no_docker_py(loaded: set[str]) -> None:
    """Only the environments' calls that use Docker need docker-py, the default one has its
    tarball, and deleting tarballs is a matter of files."""
    assert loaded & {"docker", "requests", "urllib3"} == set()


def test_a_start_without_webhooks_loads_no_tenacity(loaded: set[str]) -> None:
    """tenacity retries webhook deliveries, and this Host has no webhooks."""
    assert "tenacity" not in loaded


def test_a_tls_start_loads_no_cryptography(loaded: set[str]) -> None:
    """The Host serves TLS, and checks its key and certificate with the standard library."""
    assert "cryptography" not in loaded
