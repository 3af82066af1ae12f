"""``hakuriver.init``: a commented default config, the cluster's TLS files, systemd units."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shlex
import socket
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import BaseModel

from hakuriver_cli.render import print_json
from hakuriver_common import commands as cli
from hakuriver_common.addresses import bare, dialable
from hakuriver_common.certificates import TlsFiles, issue_host_certificate, make_ca
from hakuriver_common.config import DEFAULT_CONFIG_PATH, Config, resolve_config_path
from hakuriver_common.credentials import write_secret
from hakuriver_common.roles import JOIN_TOKEN_PREFIX, new_secret
from hakuriver_common.service import (
    ConfigOption,
    JsonOption,
    config_or_exit,
    systemd_is_init,
    tool_app,
)

app = tool_app("Set up HakuRiver.")


def _say(json: bool, line: str) -> None:
    """A line for a person (what was written, what to do next); none with --json."""
    if not json:
        cli.echo(line)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_default_config(values: Config | None = None) -> str:
    """The config as TOML (default: the defaults), every key with its description."""
    lines = [
        "# HakuRiver configuration. Every key can be overridden by an environment variable",
        "# HAKURIVER_<SECTION>__<KEY>, e.g. HAKURIVER_NETWORK__HOST_PORT=9000.",
    ]
    defaults = values if values is not None else Config()
    for section in Config.model_fields:
        model = getattr(defaults, section)
        if not isinstance(model, BaseModel):
            continue
        lines += ["", f"[{section}]"]
        for key, info in type(model).model_fields.items():
            value = getattr(model, key)
            if info.description:
                lines.append(f"# {info.description}")
            if value is None:  # unset: an example to uncomment
                lines.append(f"# {key} = {_toml_value(str((info.examples or [''])[0]))}")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    lines += [
        "",
        "# Webhooks: a JSON POST per event, retried with backoff. Repeat the table for more.",
        "# Events: task.completed, task.failed, task.killed, task.killed_oom, task.lost,",
        "# node.offline, node.online, node.drained, node.undrained, or * for all.",
        "# [[webhooks]]",
        '# url = "http://127.0.0.1:9000/hakuriver"',
        '# events = ["task.failed", "task.killed_oom", "task.lost", "node.offline"]',
    ]
    return "\n".join(lines) + "\n"


def _cannot_write(path: Path, exc: OSError) -> NoReturn:
    cli.echo(f"error: cannot write {path}: {exc.strerror or exc}", err=True)
    raise cli.Exit(1) from None


def _folder_or_exit(folder: Path) -> None:
    """A file where files are to be written into a folder: said so, not mkdir's "File
    exists" for the file written in it."""
    if folder.exists() and not folder.is_dir():
        cli.echo(f"error: cannot write in {folder}: it is a file, not a folder", err=True)
        raise cli.Exit(1)


def _default_config() -> str:
    """The default config, every key commented, with a new random auth.join_token."""
    defaults = Config()
    auth = defaults.auth.model_copy(update={"join_token": new_secret(JOIN_TOKEN_PREFIX)})
    return render_default_config(defaults.model_copy(update={"auth": auth})).rstrip("\n")


@app.command()
def config(
    output: Annotated[
        Path, cli.Option("--output", "-o", help="Where to write the config; - for stdout.")
    ] = DEFAULT_CONFIG_PATH,
    force: Annotated[bool, cli.Option(help="Overwrite an existing file.")] = False,
    json: JsonOption = False,
) -> None:
    """Write a commented default config file with a new random auth.join_token (the file is
    0600: it holds that secret)."""
    if str(output) == "-":  # as tools take it: a file named "-" was written
        cli.echo(_default_config())
        return
    if output.is_dir():  # --force cannot help; "." was a ValueError traceback
        cli.echo(
            f"error: {output} is a folder: name the file to write, e.g. {output / 'config.toml'}",
            err=True,
        )
        raise cli.Exit(1)
    if output.exists() and not force:
        cli.echo(f"error: {output} exists (use --force to overwrite)", err=True)
        raise cli.Exit(1)
    try:
        write_secret(output, _default_config())
    except OSError as exc:
        _cannot_write(output, exc)
    _say(json, f"wrote {output} (mode 0600: auth.join_token is the secret Runners join with)")
    _say(json, f"next, on the Host: hakuriver.init tls --config {output}")
    if json:
        print_json({"config": str(output)})


def _host_names(config: Config, extra: list[str]) -> list[str]:
    """The names the Host certificate must hold besides localhost and the loopback IPs
    (this machine's host name only if a certificate can hold it). Refused, exit 2, when
    network.host_reachable_address or a --name cannot be: nothing is written then."""
    given = [bare(n.strip()) for n in [config.network.host_reachable_address, *extra]]
    sources = ["network.host_reachable_address", *("--name" for _ in extra)]
    bad = [f"{at} {n!r}" for at, n in zip(sources, given, strict=True) if n and not dialable(n)]
    if bad:
        cli.echo(
            f"error: not a DNS name or IP address to dial: {', '.join(bad)} (give names like "
            "river.lab.example and addresses like 10.1.0.10, without a scheme or port; "
            "0.0.0.0 is for network.host_bind_ip)",
            err=True,
        )
        raise cli.Exit(2)
    hostname = socket.gethostname()
    names = [given[0], *([hostname] if dialable(hostname) else []), *given[1:]]
    return [n for n in dict.fromkeys(names) if n]


def _tls_settings_hint(config: Config, files: TlsFiles) -> str | None:
    """The [tls] lines to put in the config when it does not point at ``files`` already."""
    wanted = {"ca_file": files.ca_cert, "cert_file": files.host_cert, "key_file": files.host_key}
    differ = {k: v for k, v in wanted.items() if config.tls.path(k).absolute() != v}
    if not differ:
        return None
    return "\n".join(
        ["set in the Host's config:", "  [tls]"] + [f'  {k} = "{v}"' for k, v in differ.items()]
    )


def _half_a_ca(files: TlsFiles) -> str | None:
    """What is wrong when only one of the CA's two files is there (None: both or neither).
    A new CA would replace a lone key, and every copy of the old ca.pem would stop trusting
    the Host's certificates."""
    if files.ca_cert.exists() and not files.ca_key.exists():
        return (
            f"{files.ca_cert} exists without its key {files.ca_key}: cannot sign a Host "
            "certificate with it (use --force to make a new CA)"
        )
    if files.ca_key.exists() and not files.ca_cert.exists():
        return (
            f"{files.ca_key} exists without its certificate {files.ca_cert}: copy ca.pem back "
            "from a Runner or client, or use --force to make a new CA (every copy of ca.pem "
            "must then be replaced)"
        )
    return None


@app.command()
def tls(
    name: Annotated[
        list[str] | None,
        cli.Option(
            "--name",
            help="Another DNS name or IP address the Host is reached by; repeatable.",
            show_default=False,
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        cli.Option(
            "--output-dir",
            help="Folder for ca.pem, ca.key, host.pem, host.key (default: the folder of the "
            "config's tls.ca_file).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        cli.Option(
            help="Make a new CA even if one exists (every copy of ca.pem must be replaced)."
        ),
    ] = False,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Create the cluster's CA (kept if it exists) and a new Host certificate signed by it.

    The certificate names network.host_reachable_address, this machine's hostname, every
    --name, localhost, 127.0.0.1 and ::1."""
    cfg = config_or_exit(config)
    names = _host_names(cfg, name or [])
    folder = (output_dir or cfg.tls.path("ca_file").parent).expanduser().absolute()
    _folder_or_exit(folder)
    files = TlsFiles.in_folder(folder)
    has_ca = files.ca_cert.exists() and files.ca_key.exists()
    half = None if force else _half_a_ca(files)
    if half:
        cli.echo(f"error: {half}", err=True)
        raise cli.Exit(1)
    try:
        created = force or not has_ca
        if created:
            make_ca(files)
            _say(json, f"created the cluster CA: {files.ca_cert} (key {files.ca_key}, 0600)")
        else:
            _say(json, f"kept the existing CA: {files.ca_cert}")
        names = issue_host_certificate(files, names)
    except OSError as exc:
        _cannot_write(Path(exc.filename or folder), exc)
    except ValueError as exc:
        cli.echo(f"error: {exc}", err=True)
        raise cli.Exit(1) from None
    if json:
        paths = {k: str(getattr(files, k)) for k in ("ca_cert", "ca_key", "host_cert", "host_key")}
        print_json({**paths, "ca_created": created, "names": names})
        return
    cli.echo(f"wrote the Host certificate {files.host_cert} (key {files.host_key}, 0600)")
    cli.echo(f"  valid for: {', '.join(names)}")
    hint = _tls_settings_hint(cfg, files)
    if hint:
        cli.echo(hint)
    cli.echo(
        f"copy {files.ca_cert} (only it) to every Runner and client and point tls.ca_file "
        "at it; never copy ca.key or host.key"
    )


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


# The Host's sandbox: it serves the network, talks to Docker over its socket and writes only
# where its config says (ReadWritePaths); everything else of the system is read-only or
# hidden, and what a service never does (kernel tunables, modules, devices, namespaces,
# realtime, set-uid files, other system calls) is refused. It keeps the capabilities to read
# a config another user wrote (0600) and to bind a port below 1024.
PRIVATE_TMP = "PrivateTmp=yes"
# The folders PrivateTmp= replaces with the unit's own.
TEMPORARY = (Path("/tmp"), Path("/var/tmp"))
HOST_SANDBOX = [
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    PRIVATE_TMP,  # a /tmp of its own, writable (SQLite's temporary files)
    "ProtectHome=read-only",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources",
    "SystemCallErrorNumber=EPERM",  # a refused call fails; the Host is not killed for it
    "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_NET_BIND_SERVICE",
]
# The Runner runs tasks: containers through Docker (root's equivalent), host-process tasks
# as any command a user submits, CPU pinning with numactl/taskset, GPUs through NVML, and
# `systemd-run` scopes; tasks may need devices, set-uid programs and namespaces. It keeps
# all of that; only what no task of a batch node needs from its Runner is refused.
RUNNER_SANDBOX = [
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectClock=yes",
    "LockPersonality=yes",
]


def _at_run_time(path: Path, folder: Path) -> Path:
    """``path`` as the service sees it: a relative one is in ``folder``, the unit's
    WorkingDirectory, not wherever ``hakuriver.init service`` was run."""
    return folder / path.expanduser()


def _shared_dir(cfg: Config, folder: Path) -> Path:
    return _at_run_time(cfg.paths.shared_dir, folder)


def _writable(cfg: Config, folder: Path) -> list[Path]:
    """Where the Host writes: the shared folder, its credentials, database and log."""
    places = [cfg.paths.shared_dir, cfg.auth.credentials_file.parent]
    if not cfg.database.url:
        places.append(cfg.database.db_file.parent)
    if cfg.paths.host_log_file is not None:
        places.append(cfg.paths.host_log_file.parent)
    return list(dict.fromkeys(_at_run_time(p, folder) for p in places))


def _real(path: Path) -> Path:
    """Where ``path`` leads through symbolic links (as far as it exists)."""
    return Path(os.path.realpath(path))


def _sandbox(role: Role, cfg: Config, folder: Path) -> list[str]:
    if role is Role.runner:
        return RUNNER_SANDBOX
    places = _writable(cfg, folder)
    # "-": a folder made later (the shared folder's mount) does not stop the unit.
    writable = " ".join(f"-{shlex.quote(str(p))}" for p in places)
    # systemd drops a ReadWritePaths= folder that does not exist yet, and the sandbox then
    # keeps the Host from making it: make its own folders first, outside the sandbox ("+").
    # Not the shared folder: a missing mount must not turn into a local folder.
    shared = _shared_dir(cfg, folder)
    own = shlex.join(["/bin/mkdir", "-p", *(str(p) for p in places if p != shared)])
    sandbox = [f"ExecStartPre=+{own}", *HOST_SANDBOX, f"ReadWritePaths={writable}"]
    if any(_real(p).is_relative_to(_real(tmp)) for p in places for tmp in TEMPORARY):
        # A /tmp of its own would hide what the Host writes there from everyone else (the
        # Runners would never see a task's output folder): the real /tmp, read-only but for
        # ReadWritePaths, and temporary files in the Host's own folder instead.
        sandbox.remove(PRIVATE_TMP)
        sandbox.append(
            f'Environment="TMPDIR={_at_run_time(cfg.auth.credentials_file.parent, folder)}"'
        )
    return sandbox


def _command(role: Role, python: str, config: Path) -> str:
    """The command line that runs ``role`` in the foreground with this config."""
    return shlex.join([python, "-m", _UNIT[role][1], "--config", str(config)])


def render_unit(
    role: Role, python: str, config: Path, path_env: str, cfg: Config, user: str = ""
) -> str:
    """A systemd service unit that runs ``role`` with this interpreter and config."""
    description, _, needs = _UNIT[role]
    after = " ".join(filter(None, ["network-online.target", needs]))
    # A unit without User= runs as root, whose "~" is not the writer's: HOME is pinned so
    # the config's "~/..." paths mean at run time what they meant here (and what the
    # sandbox lets the Host write). A unit with User= gets that user's HOME from systemd.
    runs_as = [f"User={user}"] if user else [f'Environment="HOME={Path.home()}"']
    lines = [
        "[Unit]",
        f"Description={description}",
        f"After={after}",
        f"Wants={after}",
        # Tasks' output and environments live there: start once it is mounted.
        f"RequiresMountsFor={shlex.quote(str(_shared_dir(cfg, config.parent)))}",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={_command(role, python, config)}",
        f"WorkingDirectory={config.parent}",
        f'Environment="PATH={path_env}"',
        "Environment=PYTHONUNBUFFERED=1",
        *runs_as,
        # SIGTERM to the main process first (graceful shutdown), SIGKILL to stragglers.
        # Tasks live in their own containers or systemd scopes and keep running.
        "KillMode=mixed",
        "TimeoutStopSec=30",
        "Restart=on-failure",
        "RestartSec=5",
        # Exit 2 is a config or command line the daemon refuses (one line in the journal):
        # restarted every 5 s, it would only say so again, for ever.
        "RestartPreventExitStatus=2",
        f"SyslogIdentifier=hakuriver-{role.value}",
        *_sandbox(role, cfg, config.parent),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


@app.command()
def service(
    host: Annotated[bool, cli.Option("--host", help="Write the Host unit.")] = False,
    runner: Annotated[bool, cli.Option("--runner", help="Write the Runner unit.")] = False,
    all_: Annotated[bool, cli.Option("--all", help="Write both units (the default).")] = False,
    output_dir: Annotated[
        Path, cli.Option("--output-dir", help="Folder to write the .service files to.")
    ] = Path("."),
    config: ConfigOption = None,
    force: Annotated[bool, cli.Option(help="Overwrite existing unit files.")] = False,
    json: JsonOption = False,
) -> None:
    """Write systemd units for the Host and/or Runner of this installation.

    The services run with the config file given by --config (else $HAKURIVER_CONFIG, else
    the default path), which must exist."""
    resolved = resolve_config_path(config)
    if resolved is None:
        cli.echo(
            f"error: no config file at {DEFAULT_CONFIG_PATH}: write one with "
            "hakuriver.init config, or pass --config",
            err=True,
        )
        raise cli.Exit(2)
    cfg = config_or_exit(resolved)
    roles = [r for r, wanted in ((Role.host, host), (Role.runner, runner)) if wanted]
    if all_ or not roles:
        roles = [Role.host, Role.runner]
    _folder_or_exit(output_dir)
    targets = {role: output_dir / f"hakuriver-{role.value}.service" for role in roles}
    if Role.runner in targets:
        _check_runner_user(cfg.environment.runner_user, resolved.resolve())
    existing = [str(t) for t in targets.values() if t.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        cli.echo(f"error: {' and '.join(existing)} {verb} (use --force to overwrite)", err=True)
        raise cli.Exit(1)
    python = sys.executable
    # The interpreter's folder first, so console scripts and the venv win; then this PATH,
    # so the services find docker, numactl and taskset where this shell does.
    entries = [str(Path(python).parent), *os.environ.get("PATH", "").split(os.pathsep)]
    path_env = os.pathsep.join(dict.fromkeys(e for e in entries if e))
    for role, target in targets.items():
        user = cfg.environment.runner_user if role is Role.runner else ""
        tmp = target.with_suffix(".service.tmp")
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(render_unit(role, python, resolved.resolve(), path_env, cfg, user))
            tmp.replace(target)
        except OSError as exc:
            with contextlib.suppress(OSError):  # a folder it cannot search either
                tmp.unlink(missing_ok=True)
            _cannot_write(target, exc)
        _say(json, f"wrote {target}")
    systemd = systemd_is_init()
    if json:
        print_json({"units": [str(t) for t in targets.values()], "systemd_running": systemd})
        return
    _how_to_start(targets, python, resolved.resolve(), systemd)


def _check_runner_user(user: str, config: Path) -> None:
    """The Runner unit's User= must be a user of this machine (systemd refuses to start it
    otherwise); one outside the docker group gets a Runner that cannot reach Docker, one
    that cannot read the config (0600 as hakuriver.init config writes it, by root) a Runner
    that stops at once."""
    if not user:
        return
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        cli.echo(
            f"error: environment.runner_user {user!r} is no user of this machine: create it "
            "(in the docker group), or leave the key empty to run the Runner as root",
            err=True,
        )
        raise cli.Exit(2) from None
    groups = {account.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    with contextlib.suppress(KeyError):  # no docker group here: the socket's owner decides
        if grp.getgrnam("docker").gr_gid not in groups:
            cli.echo(
                f"warning: environment.runner_user {user!r} is not in the docker group: the "
                f"Runner will not reach Docker (sudo usermod -aG docker {user})",
                err=True,
            )
    held = config.stat()
    bit = 0o004
    if account.pw_uid == held.st_uid:
        bit = 0o400
    elif held.st_gid in groups:
        bit = 0o040
    if account.pw_uid != 0 and not held.st_mode & bit:
        cli.echo(
            f"warning: environment.runner_user {user!r} cannot read {config} (mode "
            f"{held.st_mode & 0o777:04o}): the Runner would stop at its start (sudo chown "
            f"{user} {config})",
            err=True,
        )


def _how_to_start(targets: dict[Role, Path], python: str, config: Path, systemd: bool) -> None:
    """How to install the units; without systemd, how to run the services instead."""
    if not systemd:
        cli.echo(
            "systemd is not running on this machine (it is not PID 1), so the units cannot "
            "be installed here: run each service in the foreground under a supervisor of "
            "your own (runit, supervisord, a container, tmux for a trial), which stops it "
            "with SIGTERM:"
        )
        for role in targets:
            cli.echo(f"  {_command(role, python, config)}")
        return
    names = " ".join(t.name for t in targets.values())
    cli.echo(
        f"install: sudo cp {' '.join(str(t) for t in targets.values())} /etc/systemd/system/ "
        f"&& sudo systemctl daemon-reload && sudo systemctl enable --now {names}"
    )


def run() -> None:
    app()


if __name__ == "__main__":
    run()
