"""Faults outside HakuRiver's processes: restarting the Docker daemon, a small tmpfs.

Both need root. The Docker daemon is shared by everything on the machine: a restart stops
every container on it (without ``live-restore``), so callers wait for it to be healthy
again before they go on (``restart_dockerd`` returns only then).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parents[2]
PIDFILE = Path("/var/run/docker.pid")


def _systemd_docker() -> bool:
    return (
        Path("/run/systemd/system").is_dir()
        and shutil.which("systemctl") is not None
        and subprocess.run(["systemctl", "is-active", "--quiet", "docker"], check=False).returncode
        == 0
    )


def dockerd_restart_problem() -> str | None:
    """Why this process cannot restart the Docker daemon, or None."""
    if os.geteuid() != 0:
        return "restarting dockerd needs root"
    if _systemd_docker():
        return None
    if not PIDFILE.exists():
        return f"no {PIDFILE}: dockerd is not run here by systemd or scripts/ensure-docker.sh"
    pid = int(PIDFILE.read_text().strip() or 0)
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return f"{PIDFILE} names pid {pid}, which does not run"
    if comm != "dockerd":
        return f"{PIDFILE} names pid {pid}, which is {comm!r}, not dockerd"
    return None


def docker_healthy() -> bool:
    try:
        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping()) and client.containers.list(limit=1) is not None
        finally:
            client.close()
    except Exception:
        return False


def wait_docker_healthy(timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not docker_healthy():
        if time.monotonic() > deadline:
            raise AssertionError(f"dockerd not healthy {timeout:.0f}s after its restart")
        time.sleep(0.5)


def restart_dockerd(stop_timeout: float = 60) -> float:
    """Restart the Docker daemon (systemd's unit, else the dockerd whose pid is in
    /var/run/docker.pid, started again by scripts/ensure-docker.sh); returns once it
    answers again, with the seconds it was away."""
    problem = dockerd_restart_problem()
    assert problem is None, problem
    started = time.monotonic()
    if _systemd_docker():
        subprocess.run(["systemctl", "restart", "docker"], check=True, timeout=stop_timeout)
    else:
        pid = int(PIDFILE.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout
        while Path(f"/proc/{pid}").exists():
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                time.sleep(1)
                break
            time.sleep(0.2)
        subprocess.run([str(REPO / "scripts" / "ensure-docker.sh")], check=True, timeout=120)
    wait_docker_healthy()
    return time.monotonic() - started


class Tmpfs:
    """A tmpfs of ``size`` mounted on ``path`` (created if missing) until ``unmount``."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            check=True,
            capture_output=True,
            timeout=10,
        )

    def resize(self, size: str) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.path)],
            check=True,
            capture_output=True,
            timeout=10,
        )

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, timeout=10)


def tmpfs_problem() -> str | None:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None
