"""``hakuriver.init``: write a commented default config, and systemd units."""

from __future__ import annotations

import os
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from hakuriver_common.config import DEFAULT_CONFIG_PATH, Config, resolve_config_path
from hakuriver_common.service import ConfigOption, config_or_exit, tool_app

app = tool_app("Set up HakuRiver.", json=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_default_config() -> str:
    """The default config as TOML, every key with its description."""
    lines = [
        "# HakuRiver configuration. Every key can be overridden by an environment variable",
        "# HAKURIVER_<SECTION>__<KEY>, e.g. HAKURIVER_NETWORK__HOST_PORT=9000.",
    ]
    defaults = Config()
    for section in Config.model_fields:
        model = getattr(defaults, section)
        if not isinstance(model, BaseModel):
            continue
        lines += ["", f"[{section}]"]
        for key, info in type(model).model_fields.items():
            value = getattr(model, key)
            if info.description:
                lines.append(f"# {info.description}")
            if value is None:
                lines.append(f"# {key} = ")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    lines += [
        "",
        "# Webhooks: a JSON POST per event, retried with backoff. Repeat the table for more.",
        "# Events: task.completed, task.failed, task.killed, task.killed_oom, task.lost,",
        "# node.offline, node.online, or * for all.",
        "# [[webhooks]]",
        '# url = "http://127.0.0.1:9000/hakuriver"',
        '# events = ["task.failed", "task.killed_oom", "task.lost", "node.offline"]',
    ]
    return "\n".join(lines) + "\n"


@app.command()
def config(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the config.")
    ] = DEFAULT_CONFIG_PATH,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented default config file."""
    if output.exists() and not force:
        typer.echo(f"error: {output} exists (use --force to overwrite)", err=True)
        raise typer.Exit(1)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".tmp")
    tmp.write_text(render_default_config())
    tmp.replace(output)
    typer.echo(f"wrote {output}")


class Role(StrEnum):
    host = "host"
    runner = "runner"


_UNIT = {
    Role.host: ("HakuRiver Host: scheduler, API and SSH proxy", "hakuriver_host", ""),
    Role.runner: (
        "HakuRiver Runner: runs tasks on this node",
        "hakuriver_runner",
        "docker.service",
    ),
}


def render_unit(role: Role, python: str, config: Path, path_env: str, user: str = "") -> str:
    """A systemd service unit that runs ``role`` with this interpreter and config."""
    description, module, needs = _UNIT[role]
    after = " ".join(filter(None, ["network-online.target", needs]))
    lines = [
        "[Unit]",
        f"Description={description}",
        f"After={after}",
        f"Wants={after}",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={shlex.join([python, '-m', module, '--config', str(config)])}",
        f"WorkingDirectory={config.parent}",
        f'Environment="PATH={path_env}"',
        "Environment=PYTHONUNBUFFERED=1",
        *([f"User={user}"] if user else []),
        # SIGTERM to the main process first (graceful shutdown), SIGKILL to stragglers.
        # Tasks live in their own containers or systemd scopes and keep running.
        "KillMode=mixed",
        "TimeoutStopSec=30",
        "Restart=on-failure",
        "RestartSec=5",
        f"SyslogIdentifier=hakuriver-{role.value}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


@app.command()
def service(
    host: Annotated[bool, typer.Option("--host", help="Write the Host unit.")] = False,
    runner: Annotated[bool, typer.Option("--runner", help="Write the Runner unit.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Write both units (the default).")] = False,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", help="Folder to write the .service files to.")
    ] = Path("."),
    config: ConfigOption = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing unit files.")] = False,
) -> None:
    """Write systemd units for the Host and/or Runner of this installation.

    The services run with the config file given by --config (else $HAKURIVER_CONFIG, else
    the default path), which must exist."""
    resolved = resolve_config_path(config)
    if resolved is None:
        typer.echo(
            f"error: no config file at {DEFAULT_CONFIG_PATH}: write one with "
            "hakuriver.init config, or pass --config",
            err=True,
        )
        raise typer.Exit(2)
    cfg = config_or_exit(resolved)
    roles = [r for r, wanted in ((Role.host, host), (Role.runner, runner)) if wanted]
    if all_ or not roles:
        roles = [Role.host, Role.runner]
    targets = {role: output_dir / f"hakuriver-{role.value}.service" for role in roles}
    existing = [str(t) for t in targets.values() if t.exists()]
    if existing and not force:
        typer.echo(f"error: {', '.join(existing)} exists (use --force to overwrite)", err=True)
        raise typer.Exit(1)
    python = sys.executable
    # The interpreter's folder first, so console scripts and the venv win; then this PATH,
    # so the services find docker, numactl and taskset where this shell does.
    entries = [str(Path(python).parent), *os.environ.get("PATH", "").split(os.pathsep)]
    path_env = os.pathsep.join(dict.fromkeys(e for e in entries if e))
    output_dir.mkdir(parents=True, exist_ok=True)
    for role, target in targets.items():
        user = cfg.environment.runner_user if role is Role.runner else ""
        tmp = target.with_suffix(".service.tmp")
        tmp.write_text(render_unit(role, python, resolved.resolve(), path_env, user))
        tmp.replace(target)
        typer.echo(f"wrote {target}")
    names = " ".join(t.name for t in targets.values())
    typer.echo(
        f"install: sudo cp {' '.join(str(t) for t in targets.values())} /etc/systemd/system/ "
        f"&& sudo systemctl daemon-reload && sudo systemctl enable --now {names}"
    )


def run() -> None:
    app()


if __name__ == "__main__":
    run()
