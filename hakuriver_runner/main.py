"""``hakuriver.runner``: start a Runner."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import NoReturn

import docker.errors

from hakuriver_common import commands as cli
from hakuriver_common.client_config import TlsSetupError
from hakuriver_common.config import Config
from hakuriver_common.credentials import CredentialsError
from hakuriver_common.folders import make_folder
from hakuriver_common.locks import LockHeld, hold_lock
from hakuriver_common.service import ConfigOption, VersionOption, start_daemon, stop_on_signals
from hakuriver_runner.docker_backend import DockerBackend
from hakuriver_runner.outbox import Outbox
from hakuriver_runner.pool import BlockingPool
from hakuriver_runner.process_backend import ProcessBackend
from hakuriver_runner.session import RegistrationRefused, Session
from hakuriver_runner.supervisor import Supervisor

app = cli.App(help="Start a HakuRiver Runner.")
log = logging.getLogger(__name__)
# In runner.state_dir: held by the Runner that uses it, its pid in it.
LOCK_FILE = "runner.lock"


def _hold_state_dir(config: Config) -> int:
    """Hold ``runner.state_dir`` for this Runner (the descriptor stays open until it exits),
    or exit with one line. Two Runners on one state directory (one credential and name)
    took each other's place at the Host several times a second, each registration closing
    the other's stream, for as long as both ran."""
    folder = config.runner.state_dir.expanduser()
    try:
        make_folder(folder, mode=0o700)
        return hold_lock(folder / LOCK_FILE)
    except LockHeld as held:
        reason = (
            f"another Runner{held.by} is using runner.state_dir {folder}: stop it first, or "
            "give this one its own runner.state_dir and runner.name"
        )
    except OSError as exc:
        reason = f"cannot use runner.state_dir {folder}: {exc.strerror or exc}"
    log.error("%s", reason)
    _stop(config, reason)


def _runner(config: Config) -> Session:
    """Put a Runner together; raises DockerException when the Docker daemon is unreachable."""
    name = config.runner.name or socket.gethostname()
    docker_backend = DockerBackend(config, name)
    outbox, pool = Outbox(), BlockingPool()
    supervisor = Supervisor(docker_backend, ProcessBackend(config, name), outbox, pool)
    return Session(config, name, docker_backend, supervisor, outbox, pool)


async def _serve(session: Session) -> None:
    await session.run(stop_on_signals())
    log.info("runner stopped; task containers keep running and are re-adopted on restart")


@app.command()
def main(config: ConfigOption = None, version: VersionOption = False) -> None:
    """Connect to the Host and run tasks until SIGINT or SIGTERM."""
    cfg = start_daemon(config, lambda c: c.paths.runner_log_file)
    _hold_state_dir(cfg)
    scratch = cfg.paths.path("local_temp_dir")
    try:  # every task runs in it (mounted at /local_temp, or as its working directory)
        scratch.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = f"cannot create paths.local_temp_dir {scratch}: {exc.strerror or exc}"
        log.error("%s", reason)
        _stop(cfg, reason)
    try:
        session = _runner(cfg)
    except docker.errors.DockerException as exc:
        cli.echo(f"error: cannot reach the Docker daemon: {exc}", err=True)
        raise cli.Exit(1) from None
    except CredentialsError as exc:  # its state_dir unreadable
        reason = f"cannot join the cluster: {exc}"
        logging.getLogger("hakuriver_runner.session").error("%s", reason)
        _stop(cfg, reason, CONFIG_EXIT)
    try:
        asyncio.run(_serve(session))
    except (CredentialsError, TlsSetupError, RegistrationRefused) as exc:
        _stop(cfg, str(exc), CONFIG_EXIT)  # logged by the session


# What only an admin fixes (a credential, the CA file, a registration the Host refuses as
# invalid): systemd's RestartPreventExitStatus=2 stops restarting a Runner that exits so. It
# exited 1, and was restarted every 5 s to be refused again.
CONFIG_EXIT = 2


def _stop(cfg: Config, reason: str, code: int = 1) -> NoReturn:
    """Exit ``code`` (1: a restart may help) for ``reason``, logged already; on the terminal
    too when the log goes to a file."""
    if cfg.paths.runner_log_file is not None:
        cli.echo(f"error: {reason}", err=True)
    raise cli.Exit(code) from None


def run() -> None:
    app()


if __name__ == "__main__":
    run()
