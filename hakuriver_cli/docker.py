"""``hakuriver.docker``: prepare container environments on the Host."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.progress import DownloadColumn, Progress, SpinnerColumn, TextColumn, TransferSpeedColumn

from hakuriver_cli.connection import (
    JsonOption,
    config_or_fail,
    fail,
    host_channel,
    unary,
)
from hakuriver_cli.render import console, print_json, table, to_dict
from hakuriver_common.proto.hakuriver.v1 import (
    environment_service_pb2 as epb,
    environment_service_pb2_grpc,
)
from hakuriver_common.service import ConfigOption
from hakuriver_common.units import format_size

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Manage container environments.")

NameArgument = Annotated[str, typer.Argument(help="Environment name.", show_default=False)]
UPLOAD_CHUNK = 1024 * 1024
LONG_RPC_SECONDS = 3600.0


def _stub(channel: grpc.Channel) -> environment_service_pb2_grpc.EnvironmentServiceStub:
    return environment_service_pb2_grpc.EnvironmentServiceStub(channel)


def _show_container(container: epb.EnvironmentContainer, json: bool) -> None:
    if json:
        print_json(to_dict(container))
    else:
        where = f"{container.container_name}, from {container.image}"
        typer.echo(f"{container.name}: {container.status} ({where})")


@app.command("create-container")
def create_container(
    image: Annotated[str, typer.Argument(help="A local image (never pulled).", show_default=False)],
    name: NameArgument,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Start a persistent container NAME on the Host from IMAGE, to prepare an environment."""
    with host_channel(config_or_fail(config)) as channel:
        reply = unary(
            _stub(channel).CreateContainer,
            epb.CreateContainerRequest(image=image, name=name),
            LONG_RPC_SECONDS,
        )
    _show_container(reply.container, json)


@app.command("list-containers")
def list_containers(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List the Host's environment containers."""
    with host_channel(config_or_fail(config)) as channel:
        reply = unary(_stub(channel).ListContainers, epb.ListContainersRequest())
    if json:
        print_json([to_dict(c) for c in reply.containers])
        return
    table(
        "environment containers",
        ("name", "status", "container", "image"),
        [[c.name, c.status, c.container_name, c.image] for c in reply.containers],
    )


@app.command("start-container")
def start_container(
    name: NameArgument, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """Start a stopped environment container."""
    with host_channel(config_or_fail(config)) as channel:
        reply = unary(_stub(channel).StartContainer, epb.StartContainerRequest(name=name))
    _show_container(reply.container, json)


@app.command("stop-container")
def stop_container(
    name: NameArgument, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """Stop an environment container."""
    with host_channel(config_or_fail(config)) as channel:
        reply = unary(_stub(channel).StopContainer, epb.StopContainerRequest(name=name))
    _show_container(reply.container, json)


@app.command("delete-container")
def delete_container(name: NameArgument, config: ConfigOption = None) -> None:
    """Remove an environment container (its tarballs stay)."""
    with host_channel(config_or_fail(config)) as channel:
        unary(_stub(channel).DeleteContainer, epb.DeleteContainerRequest(name=name))
    typer.echo(f"deleted environment container {name}")


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def _show_tarball(tarball: epb.Tarball, json: bool) -> None:
    if json:
        print_json(to_dict(tarball))
    else:
        typer.echo(f"wrote {tarball.path} ({format_size(tarball.size_bytes)})")


@app.command("create-tar")
def create_tar(name: NameArgument, config: ConfigOption = None, json: JsonOption = False) -> None:
    """Commit the environment container and save it for the Runners as NAME-<time>.tar."""
    with host_channel(config_or_fail(config)) as channel, _progress() as progress:
        bar = progress.add_task(f"saving {name}", total=None)
        done = None
        for update in _stub(channel).CreateTar(
            epb.CreateTarRequest(name=name), timeout=LONG_RPC_SECONDS
        ):
            if update.HasField("done"):
                done = update.done
            else:
                progress.update(bar, completed=update.bytes_written)
    if done is None:
        fail("the Host ended create-tar without a tarball")
    _show_tarball(done, json)


@app.command("list-tars")
def list_tars(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List environment tarballs and which Runners have each loaded."""
    with host_channel(config_or_fail(config)) as channel:
        reply = unary(_stub(channel).ListTars, epb.ListTarsRequest())
    if json:
        print_json([to_dict(t) for t in reply.tarballs])
        return
    table(
        "environment tarballs",
        ("name", "timestamp", "created", "size", "loaded on"),
        [
            [
                t.name,
                str(t.timestamp),
                datetime.fromtimestamp(t.timestamp, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                format_size(t.size_bytes),
                ", ".join(t.loaded_on) or "-",
            ]
            for t in reply.tarballs
        ],
    )


@app.command("delete-tar")
def delete_tar(name: NameArgument, config: ConfigOption = None) -> None:
    """Remove every tarball of an environment."""
    with host_channel(config_or_fail(config)) as channel:
        reply = unary(_stub(channel).DeleteTar, epb.DeleteTarRequest(name=name))
    for path in reply.removed:
        typer.echo(f"removed {path}")


def _upload(name: str, source: str) -> Iterator[epb.ImportRootfsRequest]:
    yield epb.ImportRootfsRequest(name=name)
    stream = sys.stdin.buffer if source == "-" else Path(source).open("rb")  # noqa: SIM115
    with stream:
        while chunk := stream.read(UPLOAD_CHUNK):
            yield epb.ImportRootfsRequest(chunk=chunk)


@app.command("import-rootfs")
def import_rootfs(
    source: Annotated[
        str, typer.Argument(help="Root filesystem tarball, or - for stdin.", show_default=False)
    ],
    name: NameArgument,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Create environment NAME from a root filesystem tarball (no registry needed)."""
    if source != "-" and not Path(source).is_file():
        fail(f"{source}: no such file", code=2)
    with host_channel(config_or_fail(config)) as channel:
        reply = _stub(channel).ImportRootfs(_upload(name, source), timeout=LONG_RPC_SECONDS)
    _show_tarball(reply.tarball, json)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
