"""``hakuriver.docker``: prepare container environments on the Host.

The transports, the generated protos and rich are imported by the commands that use them, not here
(see hakuriver_cli/task.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO, TypeVar

from hakuriver_cli import direct
from hakuriver_cli.call_error import CallError
from hakuriver_cli.connection import ask, config_or_fail, fail, host_link, unary
from hakuriver_cli.link import environment_stub
from hakuriver_cli.render import console, print_json, show_list, to_dict
from hakuriver_common import commands as cli
from hakuriver_common.service import ConfigOption, JsonOption, tool_app
from hakuriver_common.units import format_size

if TYPE_CHECKING:
    from rich.progress import Progress

    from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb
    from hakuriver_common.proto.hakuriver.v1.environment_service_pb2_grpc import (
        EnvironmentServiceStub as Stub,
    )

app = tool_app("Manage container environments.")
T = TypeVar("T")

NameArgument = Annotated[str, cli.Argument(help="Environment name.", show_default=False)]
UPLOAD_CHUNK = 1024 * 1024
LONG_RPC_SECONDS = 3600.0


def _ask(config: Path | None, call: Callable[[Stub], T]) -> T:
    """One call to the Host's EnvironmentService."""
    return ask(config, environment_stub, call)


def _show_container(container: epb.EnvironmentContainer, json: bool) -> None:
    if json:
        print_json(to_dict(container))
    else:
        where = f"{container.container_name}, from {container.image}"
        cli.echo(f"{container.name}: {container.status} ({where})")


@app.command("create-container")
def create_container(
    image: Annotated[str, cli.Argument(help="A local image (never pulled).", show_default=False)],
    name: NameArgument,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Start a persistent container NAME on the Host from IMAGE, to prepare an environment."""
    from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb

    request = epb.CreateContainerRequest(image=image, name=name)
    reply = _ask(config, lambda stub: unary(stub.CreateContainer, request, LONG_RPC_SECONDS))
    _show_container(reply.container, json)


@app.command("list-containers")
def list_containers(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List the Host's environment containers."""
    from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb

    reply = _ask(config, lambda stub: unary(stub.ListContainers, epb.ListContainersRequest()))
    show_list(
        json,
        reply.containers,
        "environment containers",
        ("name", "status", "container", "image"),
        lambda c: [c.name, c.status, c.container_name, c.image],
    )


def _start_or_stop(name: str, start: bool, config: Path | None, json: bool) -> None:
    from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb

    reply = _ask(
        config,
        lambda stub: (
            unary(stub.StartContainer, epb.StartContainerRequest(name=name))
            if start
            else unary(stub.StopContainer, epb.StopContainerRequest(name=name))
        ),
    )
    _show_container(reply.container, json)


@app.command("start-container")
def start_container(
    name: NameArgument, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """Start a stopped environment container."""
    _start_or_stop(name, True, config, json)


@app.command("stop-container")
def stop_container(
    name: NameArgument, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """Stop an environment container."""
    _start_or_stop(name, False, config, json)


@app.command("delete-container")
def delete_container(
    name: NameArgument, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """Remove an environment container (its tarballs stay)."""
    from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb

    _ask(config, lambda stub: unary(stub.DeleteContainer, epb.DeleteContainerRequest(name=name)))
    if json:
        print_json({"deleted": name})
    else:
        cli.echo(f"deleted environment container {name}")


def _progress() -> Progress:
    from rich.progress import (
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TransferSpeedColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console(),
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def _show_tarball(tarball: epb.Tarball, json: bool) -> None:
    if json:
        print_json(to_dict(tarball))
    else:
        cli.echo(f"wrote {tarball.path} ({format_size(tarball.size_bytes)})")


@app.command("create-tar")
def create_tar(name: NameArgument, config: ConfigOption = None, json: JsonOption = False) -> None:
    """Commit the environment container and save it for the Runners as NAME-<time>.tar."""
    from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb

    with host_link(config_or_fail(config)) as link, _progress() as progress:
        bar = progress.add_task(f"saving {name}", total=None)
        done = None
        try:
            for update in environment_stub(link).CreateTar(
                epb.CreateTarRequest(name=name), timeout=LONG_RPC_SECONDS
            ):
                if update.HasField("done"):
                    done = update.done
                else:
                    progress.update(bar, completed=update.bytes_written)
        except KeyboardInterrupt:  # the Host goes on with what it began, its caller gone
            fail(
                f"stopped: the Host may finish saving {name} all the same, older tarballs "
                "of it removed (hakuriver.docker list-tars shows it once written)",
                code=cli.INTERRUPTED,
            )
    if done is None:
        fail("the Host ended create-tar without a tarball")
    _show_tarball(done, json)


@app.command("list-tars")
def list_tars(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List environment tarballs and which Runners have each loaded."""
    from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb

    reply = _ask(config, lambda stub: unary(stub.ListTars, epb.ListTarsRequest()))
    show_list(
        json,
        reply.tarballs,
        "environment tarballs",
        ("name", "timestamp", "created", "size", "loaded on"),
        lambda t: [
            t.name,
            str(t.timestamp),
            datetime.fromtimestamp(t.timestamp, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            format_size(t.size_bytes),
            ", ".join(t.loaded_on) or "-",
        ],
    )


@app.command("delete-tar")
def delete_tar(name: NameArgument, config: ConfigOption = None, json: JsonOption = False) -> None:
    """Remove every tarball of an environment."""
    from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb

    reply = _ask(config, lambda stub: unary(stub.DeleteTar, epb.DeleteTarRequest(name=name)))
    if json:
        print_json(to_dict(reply))
        return
    for path in reply.removed:
        cli.echo(f"removed {path}")


def _source(source: str) -> BinaryIO:
    """The root filesystem to send: stdin, a file, or a pipe such as ``<(docker export X)``
    (``/dev/fd/N``); one line (exit 2) when it cannot be opened, before anything is sent."""
    if source == "-":
        return sys.stdin.buffer
    try:
        return Path(source).open("rb")
    except FileNotFoundError:
        fail(f"{source}: no such file", code=2)
    except OSError as exc:
        fail(f"{source}: {exc.strerror or exc}", code=2)


def _upload(
    name: str, stream: BinaryIO, unread: list[OSError]
) -> Iterator[epb.ImportRootfsRequest]:
    """The request stream. A read error ends it by raising (the call is cancelled: the Host
    imports nothing of a part), kept in ``unread`` to be named instead of gRPC's words."""
    from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb

    yield epb.ImportRootfsRequest(name=name)
    with stream:
        try:
            while chunk := stream.read(UPLOAD_CHUNK):
                yield epb.ImportRootfsRequest(chunk=chunk)
        except OSError as exc:
            unread.append(exc)
            raise


@app.command("import-rootfs")
def import_rootfs(
    source: Annotated[
        str, cli.Argument(help="Root filesystem tarball, or - for stdin.", show_default=False)
    ],
    name: NameArgument,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Create environment NAME from a root filesystem tarball (no registry needed)."""
    cfg = config_or_fail(config)
    stream = _source(source)
    unread: list[OSError] = []
    with host_link(cfg) as link:
        try:
            reply = environment_stub(link).ImportRootfs(
                _upload(name, stream, unread), timeout=LONG_RPC_SECONDS
            )
        except CallError:
            if unread:
                why = unread[0].strerror or unread[0]
                fail(f"{source}: cannot read it: {why}; nothing was imported", code=2)
            raise
    _show_tarball(reply.tarball, json)


def run() -> None:
    direct.run(app, "hakuriver.docker")


if __name__ == "__main__":
    run()
