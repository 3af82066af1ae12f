"""The config as the command-line tools read it: the same file and environment, without pydantic.

Importing pydantic and pydantic-settings and building ``Config`` costs a command-line tool
more than everything else it does (well over 100 ms). ``load_client_config`` reads the same
TOML file and ``HAKURIVER_<SECTION>__<KEY>`` overrides itself when it can tell for certain
what ``load_config`` would make of them: every key known, every value already of its field's
type and within its bounds (``SCHEMA``). Anything else (an unknown key, a value pydantic
would have to coerce or refuse, a webhook, a JSON-valued variable, a file that does not
parse) goes to ``load_config``, so a config is accepted, and refused with the same message,
exactly as the Host and Runner would.

``SCHEMA`` repeats config.py's fields, types, defaults and bounds; tests/unit/
test_client_config.py fails when the two differ, and checks that both loaders agree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from hakuriver_common.addresses import reachable_address_problem, with_port
from hakuriver_common.limits import runner_name_problem
from hakuriver_common.mounts import mounts_ok
from hakuriver_common.roles import user_name_problem

DEFAULT_CONFIG_PATH = Path("~/.hakuriver/config.toml").expanduser()
ENV_PREFIX = "hakuriver_"
ENV_DELIMITER = "__"


class ConfigError(Exception):
    """The configuration file is missing or invalid."""


# Longest silence, heartbeat_interval x heartbeat_timeout_factor seconds, after which a
# Runner is offline: an interval meant in milliseconds (5000) had nodes seen offline only
# after hours.
MAX_RUNNER_TIMEOUT = 3600.0


def runner_timeout_problem(interval: float, factor: float) -> str | None:
    """What is wrong with the silence these two timing keys give (None: nothing)."""
    if interval * factor <= MAX_RUNNER_TIMEOUT:
        return None
    return (
        f"heartbeat_interval x heartbeat_timeout_factor is {interval * factor:g} s, the "
        f"silence after which a Runner is offline: it must be at most {MAX_RUNNER_TIMEOUT:g}"
    )


def resolve_config_path(path: Path | None) -> Path | None:
    """The explicit path, else $HAKURIVER_CONFIG, else the default path if it exists. A
    leading ``~`` is the user's home: no shell expands it in ``--config=~/lab.toml`` or a
    quoted ``HAKURIVER_CONFIG="~/lab.toml"``."""
    if path is not None:
        return path.expanduser()
    env = os.environ.get("HAKURIVER_CONFIG")
    if env:
        return Path(env).expanduser()
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def config_file(path: Path | None) -> Path | None:
    """The file to read (see ``resolve_config_path``); ConfigError if it is named but absent
    or this user cannot read it (another user's 0600 config: the readers' PermissionError
    was a traceback)."""
    resolved = resolve_config_path(path)
    if resolved is None:
        return None
    try:
        if resolved.is_dir():
            raise ConfigError(f"config file {resolved} is a folder: name the TOML file in it")
        if not resolved.is_file():
            raise ConfigError(
                f"config file {resolved} does not exist (create one: hakuriver.init config)"
            )
        with resolved.open("rb") as file:
            file.read(1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the config file {resolved}: {exc.strerror or exc}"
        ) from None
    return resolved


# ----- what the tools read ------------------------------------------------------------------


class NetworkSettings(Protocol):
    @property
    def host_port(self) -> int: ...
    @property
    def host_ssh_proxy_port(self) -> int: ...
    @property
    def host_reachable_address(self) -> str: ...


class TlsSettings(Protocol):
    @property
    def plaintext(self) -> bool: ...
    @property
    def server_name(self) -> str: ...
    def path(self, name: str) -> Path: ...


class AuthSettings(Protocol):
    @property
    def token(self) -> str: ...
    @property
    def credentials_file(self) -> Path: ...
    @property
    def authentication(self) -> bool: ...


class DashboardSettings(Protocol):
    @property
    def enabled(self) -> bool: ...
    @property
    def port(self) -> int: ...
    @property
    def plaintext(self) -> bool: ...


class ClientConfig(Protocol):
    """What a client of the Host needs from the config; ``Config`` is one."""

    @property
    def network(self) -> NetworkSettings: ...
    @property
    def dashboard(self) -> DashboardSettings: ...
    @property
    def tls(self) -> TlsSettings: ...
    @property
    def auth(self) -> AuthSettings: ...
    @property
    def host_target(self) -> str: ...


class TlsSetupError(Exception):
    """The CA certificate a client needs is missing or is none."""


def ca_file(config: ClientConfig) -> Path:
    """The cluster's CA certificate, which a client checks the Host's certificate against.
    A file that holds no PEM certificate is refused here: TLS would fail at every attempt,
    said as the Host's certificate not being signed by it (a Runner: UNAVAILABLE, forever)."""
    ca = config.tls.path("ca_file")
    copy = (
        "copy the Host's ca.pem there or set tls.ca_file (hakuriver.init tls creates one on "
        "the Host)"
    )
    if not ca.is_file():
        raise TlsSetupError(f"CA certificate {ca} not found: {copy}")
    try:
        pem = ca.read_bytes()
    except OSError as exc:
        raise TlsSetupError(f"cannot read the CA certificate {ca}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise TlsSetupError(f"CA certificate {ca} is not a PEM certificate: {copy}")
    return ca


# ----- the fields of config.py, each (kind, default, check) ---------------------------------

# Kinds: "str", "bool", "int", "float", "path", "path?" (Path | None), "list[str]". An empty
# path is refused (load_config says why); an empty optional one is unset.
# Checks: ">0", ">=0", ">1", ">=1" (bounds), "port" (0 to 65535), "task_network",
# "absolute_paths", "mounts" (validators).
Field = tuple[str, Any, str | None]

SCHEMA: dict[str, dict[str, Field]] = {
    "network": {
        "host_bind_ip": ("str", "127.0.0.1", None),
        "host_port": ("int", 8000, "port"),
        "host_ssh_proxy_port": ("int", 8002, "port"),
        "host_reachable_address": ("str", "127.0.0.1", "dialable"),
        "metrics_port": ("int", 8001, "port"),
        "metrics_bind_ip": ("str", "127.0.0.1", None),
    },
    "paths": {
        "shared_dir": ("path", Path("/mnt/cluster-share"), None),
        "local_temp_dir": ("path", Path("/tmp/hakuriver"), None),
        "numactl_path": ("str", "numactl", None),
        "host_log_file": ("path?", None, None),
        "runner_log_file": ("path?", None, None),
    },
    "database": {
        "db_file": ("path", Path("~/.hakuriver/cluster.db"), None),
        "url": ("str", "", None),
        "busy_timeout_seconds": ("float", 5.0, "0.1..3600"),
    },
    "timing": {
        "heartbeat_interval": ("float", 5.0, "0.1..60"),
        "heartbeat_timeout_factor": ("float", 6.0, ">1"),
        "lost_after_seconds": ("float", 3600.0, ">0"),
        "forget_node_seconds": ("float", 86400.0, ">0"),
        "forget_audit_days": ("float", 365.0, ">=0"),
        "forget_tasks_days": ("float", 0.0, ">=0"),
        "cleanup_check_interval": ("float", 10.0, ">0"),
        "kill_grace_seconds": ("float", 5.0, ">=0"),
        "control_timeout_seconds": ("float", 10.0, ">0"),
        "ssh_ticket_seconds": ("float", 30.0, "1..3600"),
    },
    "environment": {
        "runner_user": ("str", "", None),
    },
    "runner": {
        "name": ("str", "", "runner_name"),
        "state_dir": ("path", Path("~/.hakuriver/runner"), None),
        "reconnect_max_seconds": ("float", 10.0, ">0"),
    },
    "scheduling": {
        "starvation_seconds": ("float", 300.0, ">=0"),
        "prepare_ahead": ("int", 2, ">=0"),
    },
    "docker": {
        "container_dir": ("str", "hakuriver-containers", None),
        "default_container_name": ("str", "hakuriver-base", None),
        "initial_base_image": ("str", "busybox:latest", None),
        "tasks_privileged": ("bool", False, None),
        "keep_failed_containers": ("bool", False, None),
        "additional_mounts": ("list[str]", [], "mounts"),
    },
    "tls": {
        "plaintext": ("bool", False, None),
        "ca_file": ("path", Path("~/.hakuriver/tls/ca.pem"), None),
        "cert_file": ("path", Path("~/.hakuriver/tls/host.pem"), None),
        "key_file": ("path", Path("~/.hakuriver/tls/host.key"), None),
        "server_name": ("str", "", None),
    },
    "auth": {
        "token": ("str", "", None),
        "credentials_file": ("path", Path("~/.hakuriver/credentials"), None),
        "join_token": ("str", "", None),
        "bootstrap_admin": ("str", "admin", "user_name"),
        "authentication": ("bool", True, None),
        "metrics_token": ("str", "", None),
        "user_mount_roots": ("list[str]", [], "absolute_paths"),
        "default_task_network": ("str", "host", "task_network"),
        "calls_per_caller": ("int", 16, ">=0"),
        "streams_per_caller": ("int", 1024, ">=0"),
    },
    "dashboard": {
        "enabled": ("bool", True, None),
        "port": ("int", 8003, "port"),
        "bind_ip": ("str", "", None),
        "plaintext": ("bool", False, None),
        "server_names": ("list[str]", [], None),
        "refresh_seconds": ("float", 15.0, "1..86400"),
        "assets_dir": ("path?", None, None),
    },
}
# Config's other top-level key: left to load_config whenever present.
NOT_READ_HERE = frozenset({"webhooks"})


class _Unsure(Exception):
    """Only load_config can say what this config means."""


_CHECKS: dict[str, Callable[[Any], bool]] = {
    ">0": lambda v: v > 0,
    ">=0": lambda v: v >= 0,
    ">1": lambda v: v > 1,
    ">=1": lambda v: v >= 1,
    "port": lambda v: 0 <= v <= 65535,
    "0.1..3600": lambda v: 0.1 <= v <= 3600,
    "1..3600": lambda v: 1 <= v <= 3600,
    "0.1..60": lambda v: 0.1 <= v <= 60,
    "1..86400": lambda v: 1 <= v <= 86400,
    "task_network": lambda v: v in ("host", "none"),
    "absolute_paths": lambda v: all(r.startswith("/") for r in v),
    "mounts": mounts_ok,
    "user_name": lambda v: user_name_problem(v) is None,
    "runner_name": lambda v: not v or runner_name_problem(v) is None,
    "dialable": lambda v: reachable_address_problem(v) is None,
}


def _from_toml(kind: str, value: Any) -> Any:
    """The field's value, when pydantic would take this TOML value as it is."""
    if kind == "str" and type(value) is str:
        return value
    if kind == "bool" and type(value) is bool:
        return value
    if kind == "int" and type(value) is int:
        return value
    if kind == "float" and type(value) in (int, float) and abs(value) < float("inf"):
        return float(value)
    if kind in ("path", "path?") and type(value) is str and value.strip():
        return Path(value)
    if kind == "path?" and type(value) is str:
        return None
    if kind == "list[str]" and type(value) is list and all(type(v) is str for v in value):
        return list(value)
    raise _Unsure


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?[0-9]{1,18}(\.[0-9]{0,18})?")


def _from_env(kind: str, text: str) -> Any:
    """The field's value, when pydantic would read this variable's text the same way."""
    if kind == "str":
        return text
    if kind == "path" and text.strip():
        return Path(text)
    if kind == "bool" and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    if kind == "int" and _INT.fullmatch(text):
        return int(text)
    if kind == "float" and _FLOAT.fullmatch(text):
        return float(text)
    raise _Unsure


def _toml_sections(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    import tomllib

    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except (OSError, ValueError) as exc:
        raise _Unsure from exc
    sections: dict[str, dict[str, Any]] = {}
    for name, table in document.items():
        if name not in SCHEMA or type(table) is not dict:
            raise _Unsure
        fields = SCHEMA[name]
        for key, value in table.items():
            if key not in fields:
                raise _Unsure
            sections.setdefault(name, {})[key] = _from_toml(fields[key][0], value)
    return sections


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``HAKURIVER_<SECTION>__<KEY>`` variables (any case), as pydantic-settings reads them;
    other ``HAKURIVER_`` variables that name no section are not config (pydantic-settings
    ignores them too: ``HAKURIVER_CONFIG``, ``HAKURIVER_TOKEN``)."""
    overrides: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for variable, text in environ.items():
        name = variable.lower()
        if not name.startswith(ENV_PREFIX):
            continue
        if name in seen:  # the same name in two cases: which one wins is not ours to say
            raise _Unsure
        seen.add(name)
        rest = name[len(ENV_PREFIX) :]
        section, sep, key = rest.partition(ENV_DELIMITER)
        if section in NOT_READ_HERE:
            raise _Unsure
        if section not in SCHEMA:
            continue
        fields = SCHEMA[section]
        if not sep or key not in fields:  # a whole section as JSON, or a key not known
            raise _Unsure
        overrides.setdefault(section, {})[key] = _from_env(fields[key][0], text)
    return overrides


class Section:
    """One section's values as attributes, like config.py's section models."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)

    def path(self, name: str) -> Path:
        """As TlsConfig.path: a path field with ``~`` expanded."""
        return Path(getattr(self, name)).expanduser()

    def __repr__(self) -> str:
        return f"Section({self.__dict__!r})"


class PlainConfig:
    """Every section of the config, read without pydantic (see ``read_plain``)."""

    network: NetworkSettings
    dashboard: DashboardSettings
    tls: TlsSettings
    auth: AuthSettings

    def __init__(self, sections: Mapping[str, Section]) -> None:
        self.__dict__.update(sections)

    @property
    def host_target(self) -> str:
        return with_port(self.network.host_reachable_address, self.network.host_port)


def read_plain(path: Path | None, environ: Mapping[str, str] | None = None) -> PlainConfig | None:
    """The config at ``path`` (already resolved) under the environment's overrides, when
    it is certain that load_config would read the same; else None."""
    try:
        sections = _toml_sections(path)
        for name, values in _env_overrides(os.environ if environ is None else environ).items():
            sections.setdefault(name, {}).update(values)
        built: dict[str, Section] = {}
        for name, fields in SCHEMA.items():
            given = sections.get(name, {})
            values = {}
            for key, (_, default, check) in fields.items():
                value = given.get(key, default)
                if check is not None and not _CHECKS[check](value):
                    raise _Unsure
                values[key] = list(value) if isinstance(value, list) else value
            built[name] = Section(values)
        timing = vars(built["timing"])
        if runner_timeout_problem(timing["heartbeat_interval"], timing["heartbeat_timeout_factor"]):
            raise _Unsure
    except _Unsure:
        return None
    return PlainConfig(built)


def load_client_config(path: Path | None = None) -> ClientConfig:
    """The config a command-line tool needs; read as load_config would, without pydantic
    when certain, else by load_config itself (its ConfigError when the config is invalid)."""
    resolved = config_file(path)
    plain = read_plain(resolved)
    if plain is not None:
        return plain
    from hakuriver_common.config import load_config

    return load_config(resolved)
