"""What every command-line tool and daemon shares: --config and --json, start-up, signals.

A multi-command tool (``tool_app``) takes ``--config`` and ``--json`` before its subcommand
as well as after it. The subcommand's own option wins, then the one before it, then
``$HAKURIVER_CONFIG``, then the default path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

from hakuriver_common import commands as cli
from hakuriver_common.client_config import (
    ClientConfig,
    ConfigError,
    load_client_config,
    resolve_config_path,
)

if TYPE_CHECKING:
    import asyncio

    from hakuriver_common.config import Config

# The command-line tools import this module for their options: what only the daemons use
# (pydantic's Config, asyncio, logging) is imported when they call for it.

_CONFIG_HELP = "Config TOML (default $HAKURIVER_CONFIG, else ~/.hakuriver/config.toml)."
_JSON_HELP = "Print JSON instead of a table."


@dataclass(frozen=True)
class GlobalOptions:
    """The --config and --json given before a tool's subcommand."""

    config: Path | None = None
    json: bool = False


def _before(ctx: cli.Context) -> GlobalOptions:
    return ctx.find_object(GlobalOptions) or GlobalOptions()


def _config_after_or_before(ctx: cli.Context, value: Path | None) -> Path | None:
    return value if value is not None else _before(ctx).config


def _json_after_or_before(ctx: cli.Context, value: bool) -> bool:
    return value or _before(ctx).json


ConfigOption = Annotated[
    Path | None,
    cli.Option("--config", help=_CONFIG_HELP, show_default=False, callback=_config_after_or_before),
]
JsonOption = Annotated[bool, cli.Option("--json", help=_JSON_HELP, callback=_json_after_or_before)]
_ConfigBefore = Annotated[
    Path | None, cli.Option("--config", help=_CONFIG_HELP, show_default=False)
]
_JsonBefore = Annotated[
    bool, cli.Option("--json", help=_JSON_HELP + " For subcommands that take --json.")
]


def _keep_before(ctx: cli.Context, given: GlobalOptions) -> None:
    """Store the options for the subcommand; refuse one the subcommand does not take."""
    from typer.core import TyperGroup

    command = (
        ctx.command.get_command(ctx, ctx.invoked_subcommand)
        if isinstance(ctx.command, TyperGroup) and ctx.invoked_subcommand
        else None
    )
    takes = {p.name for p in command.params} if command is not None else set()
    for name, present in (("config", given.config is not None), ("json", given.json)):
        if present and name not in takes:
            cli.echo(
                f"error: --{name} does not apply to the {ctx.invoked_subcommand} command", err=True
            )
            raise cli.Exit(2)
    ctx.obj = given


def _print_version(value: bool) -> None:
    if value:
        from hakuriver_common import __version__

        cli.echo(f"hakuriver {__version__}")
        raise cli.Exit(0)


VersionOption = Annotated[
    bool,
    cli.Option(
        "--version",
        help="Print HakuRiver's version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
]


def _with_config(
    ctx: cli.Context, config: _ConfigBefore = None, version: VersionOption = False
) -> None:
    _keep_before(ctx, GlobalOptions(config))


def _with_config_and_json(
    ctx: cli.Context,
    config: _ConfigBefore = None,
    json: _JsonBefore = False,
    version: VersionOption = False,
) -> None:
    _keep_before(ctx, GlobalOptions(config, json))


def tool_app(help: str, json: bool = True) -> cli.App:
    """A multi-command tool; ``--config`` (and ``--json`` when ``json``) also before the
    subcommand. Its commands take ``ConfigOption`` / ``JsonOption``, which resolve both.
    ``--version``, and ``--install-completion`` / ``--show-completion`` for the shell."""
    app = cli.App(no_args_is_help=True, help=help)
    app.callback()(_with_config_and_json if json else _with_config)
    return app


def config_or_exit(path: Path | None) -> Config:
    """Load the config or print one error line and exit 2."""
    from hakuriver_common.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        _config_error(exc)


def client_config_or_exit(path: Path | None) -> ClientConfig:
    """What a command-line tool needs of the config (client_config.load_client_config: the
    same values and errors, usually without pydantic), or one error line and exit 2."""
    try:
        config = load_client_config(path)
    except ConfigError as exc:
        _config_error(exc)
    if (exposed := secrets_others_read(resolve_config_path(path))) is not None:
        cli.echo(f"warning: {exposed}", err=True)  # as ssh says of a key others can read
    return config


def _config_error(exc: ConfigError) -> NoReturn:
    cli.echo(f"error: {exc}", err=True)
    raise cli.Exit(2) from None


def systemd_is_init() -> bool:
    """systemd runs this machine (PID 1): its units start, ``systemd-run`` makes scopes
    (sd_booted's test)."""
    return Path("/run/systemd/system").is_dir()


def start_daemon(path: Path | None, log_file: Callable[[Config], Path | None]) -> Config:
    """Config and logging for the Host or a Runner."""
    from hakuriver_common.logging_setup import setup_logging

    config = config_or_exit(path)
    where = log_file(config)
    try:
        setup_logging(where)
    except OSError as exc:
        cli.echo(f"error: cannot write the log file {where}: {exc.strerror or exc}", err=True)
        raise cli.Exit(2) from None
    if (exposed := secrets_others_read(resolve_config_path(path))) is not None:
        import logging

        logging.getLogger("hakuriver_common.config").warning("%s", exposed)
    return config


# Keys whose values are secrets, by section (and any [[webhooks]] table's secret).
SECRET_KEYS = {"auth": ("join_token", "token", "metrics_token")}


def secrets_others_read(path: Path | None) -> str | None:
    """What to say of a config file that holds a secret and other users of the machine can
    read (a Runner's join token lets anyone who reads it join a node of their own, and be
    sent tasks; a user's auth.token lets them act as that user); None: nothing. Said once
    at start, not refused: the tools refuse such a credentials file."""
    import stat
    import tomllib
    from urllib.parse import urlsplit

    if path is None:
        return None
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if not mode & 0o077:
            return None
        with path.open("rb") as file:
            text = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    held = [
        f"{section}.{key}"
        for section, keys in SECRET_KEYS.items()
        for key in keys
        if text.get(section, {}).get(key)
    ]
    if urlsplit(str(text.get("database", {}).get("url", ""))).password:
        held.append("database.url")
    if any(hook.get("secret") for hook in text.get("webhooks", [])):
        held.append("webhooks.secret")
    if not held:
        return None
    return (
        f"the config {path} holds {', '.join(held)} and others can read it "
        f"(mode {mode:04o}): run chmod 600 {path}"
    )


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM; call from the running loop."""
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
