"""``hakuriver.host``: start the Host."""

from __future__ import annotations

import asyncio

import typer

from hakuriver_common.config import Config
from hakuriver_common.service import ConfigOption, start_daemon
from hakuriver_host.server import HostServer

app = typer.Typer(add_completion=False, help="Start the HakuRiver Host.")


async def _serve(cfg: Config) -> None:
    await HostServer(cfg).serve_forever()


@app.command()
def main(config: ConfigOption = None) -> None:
    """Run the Host until SIGINT or SIGTERM."""
    cfg = start_daemon(config, lambda c: c.paths.host_log_file)
    try:
        asyncio.run(_serve(cfg))
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def run() -> None:
    app()


if __name__ == "__main__":
    run()
