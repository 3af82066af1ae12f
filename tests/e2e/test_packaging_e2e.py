"""The package as a user installs it: a wheel built from the checkout, ``pip install``ed into
a fresh virtualenv (its dependencies as declared, nothing from the checkout): every console
script runs and says its version, the installed tools submit a task to a real Host and wait
for it (the generated protos and the Connect link are in the wheel), and the shell completion
they print completes a subcommand in bash."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import hakuriver_common
from bench.bench_cli import runner_thread
from bench.host_process import HostProcess, bench_host
from hakuriver_host import migrations
from tests.e2e.harness import without_hakuriver_variables

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
NOT_PACKAGED = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "__pycache__", "build", "*.egg-info", "test-artifacts", ".*"
)


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload,no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a new virtualenv with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # building writes build/ beside the sources: not the checkout's
    shutil.copytree(ROOT, source, ignore=NOT_PACKAGED)
    wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = run([*wheel, str(source), "-w", str(root / "dist")])
    assert built.returncode == 0, built.stderr
    [built_wheel] = (root / "dist").glob("hakuriver-*.whl")
    made = run([sys.executable, "-m", "venv", str(root / "venv")])
    assert made.returncode == 0, made.stderr
    bin_dir = root / "venv" / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = run([*pip, str(built_wheel)])
    assert done.returncode == 0, done.stderr
    return bin_dir


def _env(bin_dir: Path) -> dict[str, str]:
    """A user's environment: the virtualenv first on PATH, no HakuRiver variables, started
    outside the checkout (so nothing is imported from it)."""
    env = without_hakuriver_variables()
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def test_every_console_script_runs_and_says_its_version(installed: Path, tmp_path: Path) -> None:
    assert len(SCRIPTS) >= 11
    for script in SCRIPTS:
        version = run([str(installed / script), "--version"], env=_env(installed), cwd=tmp_path)
        assert version.returncode == 0, (script, version.stderr)
        assert version.stdout.strip() == f"hakuriver {hakuriver_common.__version__}", script
        helped = run([str(installed / script), "--help"], env=_env(installed), cwd=tmp_path)
        assert helped.returncode == 0, (script, helped.stderr)
        assert "usage:" in helped.stdout.lower(), script
    wrote = run(
        [str(installed / "hakuriver.init"), "config", "--output", "new.toml", "--json"],
        env=_env(installed),
        cwd=tmp_path,
    )
    assert wrote.returncode == 0, wrote.stderr
    assert json.loads(wrote.stdout) == {"config": "new.toml"}
    assert "join_token" in (tmp_path / "new.toml").read_text()


@pytest.fixture(scope="module")
def host() -> Iterator[HostProcess]:
    with bench_host() as started, runner_thread(started):
        yield started


def test_the_installed_tools_submit_and_wait(
    installed: Path, host: HostProcess, tmp_path: Path
) -> None:
    config = ["--config", str(host.config_path)]
    done = run(
        [str(installed / "hakuriver.task"), *config, "submit", "--wait", "--", "true"],
        env=_env(installed),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "completed, exit code 0" in done.stdout
    nodes = run([str(installed / "hakuriver.client"), *config, "nodes"], env=_env(installed))
    assert nodes.returncode == 0 and "bench-cli" in nodes.stdout, nodes.stderr


def test_the_printed_completion_completes_in_bash(installed: Path, tmp_path: Path) -> None:
    script = tmp_path / "completion.bash"
    shown = run(
        [str(installed / "hakuriver.task"), "--show-completion", "bash"], env=_env(installed)
    )
    assert shown.returncode == 0, shown.stderr
    script.write_text(shown.stdout)
    complete = (
        f"source {script}; COMP_WORDS=(hakuriver.task su); COMP_CWORD=1; "
        '_hakurivertask_completion hakuriver.task; echo "${COMPREPLY[@]}"'
    )
    done = run(["bash", "-c", complete], env=_env(installed), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["submit"]


def test_the_installed_host_migrates_a_new_database(installed: Path, tmp_path: Path) -> None:
    """The migrations ship in the wheel: the installed Host makes its schema from them."""
    env = _env(installed)
    env["HAKURIVER_DATABASE__DB_FILE"] = str(tmp_path / "host.db")
    env["HAKURIVER_AUTH__CREDENTIALS_FILE"] = str(tmp_path / "credentials")
    made = run(
        [str(installed / "hakuriver.init"), "config", "--output", "host.toml"],
        env=env,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    recovered = run(
        [str(installed / "hakuriver.host"), "--config", "host.toml", "--new-admin-token"],
        env=env,
        cwd=tmp_path,
    )
    assert recovered.returncode == 0, recovered.stderr
    with sqlite3.connect(tmp_path / "host.db") as conn:
        [revision] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        users = conn.execute("SELECT name, role FROM users").fetchall()
    assert revision == (migrations.newest_revision(),)
    assert users == [("admin", "admin")]
