"""``hakuriver.runner``: start a Runner."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import docker.errors
import typer

from hakuriver_common.config import ConfigError, load_config
from hakuriver_common.logging_setup import setup_logging
from hakuriver_runner.agent import Agent

app = typer.Typer(add_completion=False, help="Start a HakuRiver Runner.")
log = logging.getLogger(__name__)


async def _serve(agent: Agent) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await agent.run(stop)
    log.info("runner stopped; task containers keep running and are re-adopted on restart")


@app.command()
def main(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Config TOML (default ~/.hakuriver/config.toml)."),
    ] = None,
) -> None:
    """Connect to the Host and run tasks until SIGINT or SIGTERM."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(cfg.paths.runner_log_file)
    try:
        agent = Agent(cfg)
    except docker.errors.DockerException as exc:
        typer.echo(f"error: cannot reach the Docker daemon: {exc}", err=True)
        raise typer.Exit(1) from None
    asyncio.run(_serve(agent))


def run() -> None:
    app()


if __name__ == "__main__":
    run()
