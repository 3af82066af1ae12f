"""``hakuriver.host``: start the Host."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from hakuriver_common.config import Config, ConfigError, load_config
from hakuriver_common.logging_setup import setup_logging
from hakuriver_host.server import HostServer

app = typer.Typer(add_completion=False, help="Start the HakuRiver Host.")


async def _serve(cfg: Config) -> None:
    await HostServer(cfg).serve_forever()


@app.command()
def main(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Config TOML (default ~/.hakuriver/config.toml)."),
    ] = None,
) -> None:
    """Run the Host until SIGINT or SIGTERM."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(cfg.paths.host_log_file)
    try:
        asyncio.run(_serve(cfg))
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def run() -> None:
    app()


if __name__ == "__main__":
    run()
