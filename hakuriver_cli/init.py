"""``hakuriver.init``: write a commented default config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from hakuriver_common.config import DEFAULT_CONFIG_PATH, Config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Set up HakuRiver.")


@app.callback()
def _group() -> None:
    """Set up HakuRiver."""


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


def run() -> None:
    app()


if __name__ == "__main__":
    run()
