"""What every command-line tool and daemon shares: the --config option, start-up, signals."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from hakuriver_common.config import Config, ConfigError, load_config
from hakuriver_common.logging_setup import setup_logging

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", help="Config TOML (default ~/.hakuriver/config.toml).", show_default=False
    ),
]


def config_or_exit(path: Path | None) -> Config:
    """Load the config or print one error line and exit 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def start_daemon(path: Path | None, log_file: Callable[[Config], Path | None]) -> Config:
    """Config and logging for the Host or a Runner."""
    config = config_or_exit(path)
    setup_logging(log_file(config))
    return config


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM; call from the running loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
