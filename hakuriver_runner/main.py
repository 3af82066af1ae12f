"""``hakuriver.runner``: start a Runner."""

from __future__ import annotations

import asyncio
import logging

import docker.errors
import typer

from hakuriver_common.service import ConfigOption, start_daemon, stop_on_signals
from hakuriver_runner.agent import Agent

app = typer.Typer(add_completion=False, help="Start a HakuRiver Runner.")
log = logging.getLogger(__name__)


async def _serve(agent: Agent) -> None:
    await agent.run(stop_on_signals())
    log.info("runner stopped; task containers keep running and are re-adopted on restart")


@app.command()
def main(config: ConfigOption = None) -> None:
    """Connect to the Host and run tasks until SIGINT or SIGTERM."""
    cfg = start_daemon(config, lambda c: c.paths.runner_log_file)
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
