"""``hakuriver.docker-shell NAME [-- CMD...]``: a shell in a Host environment container.

Interactive (no CMD, stdin a terminal): the local terminal goes raw, keystrokes (Ctrl-C
included) reach the remote TTY, window resizes follow, and the terminal is restored on exit.
With CMD: no TTY; stdin is forwarded when it is not a terminal; stdout and stderr stay apart.
The exit status is the remote process's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import signal
import struct
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from typing import Annotated

from hakuriver_cli.connection import config_or_fail, host_link
from hakuriver_cli.link import shell_stub
from hakuriver_common import commands as cli
from hakuriver_common.proto.hakuriver.v1 import shell_service_pb2 as spb
from hakuriver_common.service import ConfigOption, VersionOption

app = cli.App()
_DONE = object()


def _terminal_size(fd: int) -> spb.TerminalSize:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return spb.TerminalSize()
    return spb.TerminalSize(rows=rows, cols=cols)


def _pump_stdin(outbox: queue.Queue[object], interactive: bool) -> None:
    fd = sys.stdin.fileno()
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            if not interactive:
                outbox.put(spb.ShellRequest(close_stdin=True))
            return
        outbox.put(spb.ShellRequest(stdin=data))


def _requests(start: spb.ShellStart, outbox: queue.Queue[object]) -> Iterator[spb.ShellRequest]:
    yield spb.ShellRequest(start=start)
    while (item := outbox.get()) is not _DONE:
        assert isinstance(item, spb.ShellRequest)
        yield item


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@app.command(context_settings={"allow_interspersed_args": False})
def main(
    name: Annotated[str, cli.Argument(help="Environment name.", show_default=False)],
    command: Annotated[
        list[str] | None, cli.Argument(help="Command after --; default: a shell.")
    ] = None,
    config: ConfigOption = None,
    version: VersionOption = False,
) -> None:
    """Open a shell (or run CMD) in the Host container of environment NAME."""
    cfg = config_or_fail(config)
    if command and command[0] == "--":
        command = command[1:]
    interactive = not command and sys.stdin.isatty()
    outbox: queue.Queue[object] = queue.Queue()
    start = spb.ShellStart(name=name, command=command or [], tty=interactive)
    if interactive:
        start.size.CopyFrom(_terminal_size(sys.stdin.fileno()))
        start.env["TERM"] = os.environ.get("TERM", "xterm")
        signal.signal(
            signal.SIGWINCH,
            lambda *_: outbox.put(spb.ShellRequest(resize=_terminal_size(sys.stdin.fileno()))),
        )
    if interactive or not sys.stdin.isatty():
        threading.Thread(target=_pump_stdin, args=(outbox, interactive), daemon=True).start()
    else:
        outbox.put(spb.ShellRequest(close_stdin=True))
    exit_code = 1
    raw = _raw_terminal(sys.stdin.fileno()) if interactive else contextlib.nullcontext()
    with host_link(cfg) as link, raw:
        stub = shell_stub(link)
        try:
            for reply in stub.Shell(_requests(start, outbox)):
                if reply.HasField("output"):
                    out = (
                        sys.stderr
                        if reply.output.stream == spb.OUTPUT_STREAM_STDERR
                        else sys.stdout
                    )
                    out.buffer.write(reply.output.data)
                    out.buffer.flush()
                else:
                    exit_code = reply.exit_code
        finally:
            outbox.put(_DONE)
    raise cli.Exit(exit_code)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
