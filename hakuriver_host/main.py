"""``hakuriver.host``: start the Host."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Annotated, NoReturn

from hakuriver_common import commands as cli
from hakuriver_common.config import Config
from hakuriver_common.service import ConfigOption, VersionOption, config_or_exit, start_daemon
from hakuriver_host.access import Access
from hakuriver_host.errors import ApiError
from hakuriver_host.server import HostServer, SecurityConfigError
from hakuriver_host.store import DatabaseUrlError, Store

app = cli.App(help="Start the HakuRiver Host.")


# Objects allocated between young-generation collections (Python's default is 700). The
# Host allocates many short-lived objects per task (rows, messages, futures); at the
# default the cyclic collector took ~30% of its CPU under a job array, mostly in full
# collections of ~170 ms each that freed a few dozen objects.
GC_YOUNG_THRESHOLD = 50_000


def _tune_gc() -> None:
    """Long-lived objects of the start (modules, descriptors, mappings) are frozen out of
    the collector's reach, and young collections run less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


# Seconds a thread may hold the GIL while another waits for it (Python's default is 5 ms).
# The store's thread lets go of the GIL at every SQLite call and then waits for it; behind
# a busy event loop each wait took the whole interval, so a one-row transaction took
# 15-30 ms, and a lone task's p99 during a job array fell from 317 to 181 ms at 0.5 ms
# (docs/benchmarks.md, "GIL convoy").
SWITCH_INTERVAL = 0.0005


async def _serve(cfg: Config) -> None:
    server = HostServer(cfg)
    _tune_gc()
    sys.setswitchinterval(SWITCH_INTERVAL)
    await server.serve_forever()


async def _recover_admin(cfg: Config) -> None:
    store = Store(cfg.database.sqlalchemy_url(), cfg.database.busy_timeout_seconds)
    try:
        await store.run(store.migrate)
        access = Access(cfg, store)
        await access.load(bootstrap=False)
        path, kept = await access.recover_admin()
    finally:
        store.close()
    if kept is not None:
        cli.echo(f"kept the file that was there as {kept}")
    cli.echo(
        f"wrote a new token of admin {cfg.auth.bootstrap_admin!r} to {path} (0600); "
        "restart the Host so it knows the token"
    )


def _stop(exc: OSError) -> NoReturn:
    """One line, and exit 2 for what only a change of the config fixes (systemd's
    RestartPreventExitStatus=2 then stops restarting), else 1: a port taken, a database
    away or busy, a folder that cannot be made (perhaps a mount not there yet) may pass."""
    cli.echo(f"error: {exc}", err=True)
    raise cli.Exit(2 if isinstance(exc, SecurityConfigError | DatabaseUrlError) else 1) from None


@app.command()
def main(
    config: ConfigOption = None,
    new_admin_token: Annotated[
        bool,
        cli.Option(
            "--new-admin-token",
            help="Write a new token for auth.bootstrap_admin to auth.credentials_file and exit "
            "(when every admin token is lost; run on the Host's machine).",
        ),
    ] = False,
    version: VersionOption = False,
) -> None:
    """Run the Host until SIGINT or SIGTERM."""
    if new_admin_token:
        cfg = config_or_exit(config)
        try:
            asyncio.run(_recover_admin(cfg))
        except ApiError as exc:
            cli.echo(f"error: {exc.message}", err=True)
            raise cli.Exit(1) from None
        except OSError as exc:  # a database it cannot open (store.DatabaseError)
            _stop(exc)
        return
    cfg = start_daemon(config, lambda c: c.paths.host_log_file)
    try:
        asyncio.run(_serve(cfg))
    except OSError as exc:
        _stop(exc)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
