"""Riding out a Host that goes away (stopped, restarting, the network) and comes back.

What follows a stream from the Host for as long as something lasts (``submit --wait`` and
``wait``, ``stdout``/``stderr --follow``, ``health --watch``) keeps going: when the stream
breaks because the Host is gone, it says so on stderr, asks the Host again every
``poll_interval`` seconds for as long as it takes (only Ctrl-C ends it early), says so when
the Host answers, and opens the stream again. A stream the Host refuses for now (its caller
holds as many as ``auth.streams_per_caller`` allows) is asked for again every
``poll_interval`` seconds, said once on stderr. An error that is the Host's answer (the task
is not found, the token was revoked) ends the tool as any other does, in one line; so does a
Host that comes back with a certificate the config does not trust (``hakuriver.init tls
--force`` on the Host), which no number of retries would mend.

Both transports report a Host gone the same way: CallError with UNAVAILABLE (the Connect
link: the connection broke or was refused; gRPC: the channel lost the Host, or the Host
cancelled its calls as it stopped) or CANCELLED.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from hakuriver_cli.call_error import CallError, Status, untrusted_certificate
from hakuriver_common import commands as cli

T = TypeVar("T")

# Seconds between attempts to reach the Host again after losing it: the default of
# ``--poll-interval``, and what the followers and watchers use.
RETRY_SECONDS = 1.0


def host_gone(exc: CallError, *also: Status) -> bool:
    """The Host went away (stopped, restarting, network): the stream broke or ended early.
    A Host back with a certificate this config does not trust is not away: the tool ends."""
    return exc.status in (Status.UNAVAILABLE, Status.CANCELLED, *also) and not (
        untrusted_certificate(exc.details)
    )


def stream_refused(exc: CallError) -> bool:
    """The Host refused the stream for now (its caller holds ``auth.streams_per_caller``
    streams, or the watcher fell behind): opened again later, it is served. A task being
    waited for was submitted: a tool that ended here would leave a workflow manager to run it
    a second time. (A message past what the client accepts is RESOURCE_EXHAUSTED too, and
    would be again.)"""
    return exc.status is Status.RESOURCE_EXHAUSTED and "larger than max" not in exc.details


def until_host_answers(probe: Callable[[float], object], poll_interval: float) -> None:
    """Call ``probe(timeout)``, a unary call to the Host, every ``poll_interval`` seconds
    until it answers; an answer that is an error other than the Host being away is raised."""
    while True:
        time.sleep(poll_interval)
        try:
            probe(poll_interval + 5)
            return
        except CallError as exc:
            if not host_gone(exc, Status.DEADLINE_EXCEEDED):
                raise


def riding_out(
    attempt: Callable[[], T | None],
    probe: Callable[[float], object],
    target: str,
    poll_interval: float,
    verb: str,
    doing: str,
) -> T:
    """``attempt()`` (a stream followed to its end) again whenever the Host goes away during
    it, once ``probe`` says it is back. None from ``attempt`` also means the Host went away
    (the stream ended before what it waits for). ``verb`` (waiting, following, watching) and
    ``doing`` (waiting for task 7) make the notes on stderr."""
    told = False
    while True:
        try:
            done = attempt()
        except CallError as exc:
            if not host_gone(exc):
                if not stream_refused(exc):
                    raise
                if not told:
                    cli.echo(
                        f"the host at {target}: {exc.details}; trying again every "
                        f"{poll_interval:g}s (Ctrl-C to stop {verb})",
                        err=True,
                    )
                    told = True
                time.sleep(poll_interval)
                continue
        else:
            if done is not None:
                return done
        cli.echo(
            f"lost the host at {target}; retrying every {poll_interval:g}s "
            f"until it answers (Ctrl-C to stop {verb})",
            err=True,
        )
        until_host_answers(probe, poll_interval)
        cli.echo(f"the host at {target} answers again; {doing}", err=True)
