"""One TOML file configures every tool; environment variables override it.

An override is named ``HAKURIVER_<SECTION>__<KEY>``, e.g. ``HAKURIVER_NETWORK__HOST_PORT=9000``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hakuriver_common.addresses import reachable_address_problem, with_port
from hakuriver_common.client_config import (
    DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH,
    ConfigError as ConfigError,
    config_file,
    resolve_config_path as resolve_config_path,
    runner_timeout_problem,
)
from hakuriver_common.limits import runner_name_problem
from hakuriver_common.mounts import parse_mount
from hakuriver_common.roles import user_name_problem
from hakuriver_common.statuses import FINAL_STATUSES, NodeStatus, TaskNetwork


def is_loopback(host: str) -> bool:
    """True for an address (or ``localhost``) that only this machine can reach."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _path_given(value: Any) -> Any:
    """An empty path would be read as the working directory (``Path("")`` is "."): the
    Host would write task outputs wherever it was started. Refused instead."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("an empty path: give one, or leave it out for its default")
    return value


def _empty_is_unset(value: Any) -> Any:
    """An optional path given empty (``HAKURIVER_PATHS__HOST_LOG_FILE=``) is unset."""
    return None if isinstance(value, str) and not value.strip() else value


GivenPath = Annotated[Path, BeforeValidator(_path_given)]
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_is_unset)]


class Section(BaseModel):
    """A section of the config file: an unknown key is an error, so a typo shows, and so is a
    number TOML spells ``inf`` or ``nan`` (a webhook's ``timeout_seconds = inf`` failed
    every delivery, its socket refusing so long a timeout)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NetworkConfig(Section):
    host_bind_ip: str = Field("127.0.0.1", description="Address the Host's gRPC server binds.")
    host_port: int = Field(
        8000, ge=0, le=65535, description="Port of the Host's gRPC API (clients and runners)."
    )
    host_ssh_proxy_port: int = Field(
        8002, ge=0, le=65535, description="Port of the Host's SSH proxy."
    )
    host_reachable_address: str = Field(
        "127.0.0.1", description="Address runners and clients use to reach the Host."
    )
    metrics_port: int = Field(
        8001, ge=0, le=65535, description="Port of the Host's Prometheus /metrics."
    )
    metrics_bind_ip: str = Field("127.0.0.1", description="Address /metrics binds.")

    @field_validator("host_reachable_address")
    @classmethod
    def _dialable(cls, address: str) -> str:
        if (problem := reachable_address_problem(address)) is not None:
            raise ValueError(problem)
        return address


class PathsConfig(Section):
    shared_dir: GivenPath = Field(
        Path("/mnt/cluster-share"), description="Shared storage seen by the Host and every runner."
    )
    local_temp_dir: GivenPath = Field(
        Path("/tmp/hakuriver"), description="Runner-local scratch space, mounted at /local_temp."
    )
    numactl_path: str = Field("numactl", description="numactl binary for NUMA-bound host tasks.")
    host_log_file: OptionalPath = Field(
        None,
        description="Host log file; console when unset.",
        examples=["/var/log/hakuriver/host.log"],
    )
    runner_log_file: OptionalPath = Field(
        None,
        description="Runner log file; console when unset.",
        examples=["/var/log/hakuriver/runner.log"],
    )

    def path(self, name: str) -> Path:
        """A folder of this section as the daemons use it, ``~`` expanded."""
        return Path(getattr(self, name)).expanduser()


class DatabaseConfig(Section):
    db_file: GivenPath = Field(
        Path("~/.hakuriver/cluster.db"), description="SQLite file of the Host's state."
    )
    url: str = Field(
        "", description="SQLAlchemy URL (e.g. postgresql+psycopg://...); overrides db_file."
    )
    busy_timeout_seconds: float = Field(
        5.0,
        ge=0.1,
        le=3600,
        description="SQLite: seconds a write waits for a lock another program holds before "
        "it is refused (the call UNAVAILABLE; at start, the Host stops).",
    )

    def sqlalchemy_url(self) -> str:
        if self.url:
            return self.url
        return f"sqlite:///{self.db_file.expanduser()}"


class TimingConfig(Section):
    heartbeat_interval: float = Field(
        5.0, ge=0.1, le=60, description="Seconds between runner heartbeats."
    )
    heartbeat_timeout_factor: float = Field(
        6.0,
        gt=1,
        description="A runner silent this many intervals is offline, its running tasks unknown.",
    )
    lost_after_seconds: float = Field(
        3600.0,
        gt=0,
        description="Seconds a task may stay unknown (its runner away) before it is lost; "
        "a runner that comes back sooner with the task resumes it.",
    )
    forget_node_seconds: float = Field(
        86400.0,
        gt=0,
        description="A node offline this long of which no task is kept (it never held one, "
        "or all its tasks were forgotten) and that is not drained is forgotten.",
    )
    forget_audit_days: float = Field(
        365.0,
        ge=0,
        description="Audit events older than this many days are deleted (checked hourly); "
        "0 keeps them forever.",
    )
    forget_tasks_days: float = Field(
        0.0,
        ge=0,
        description="Tasks that ended more than this many days ago are forgotten with their "
        "events and output files (checked hourly); 0 keeps them forever.",
    )
    cleanup_check_interval: float = Field(
        10.0, gt=0, description="Seconds between the Host's checks for silent runners."
    )
    kill_grace_seconds: float = Field(
        5.0, ge=0, description="SIGTERM-to-SIGKILL grace period when a task is killed."
    )
    control_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Seconds a Runner has to confirm pause or resume (kill: after the grace) "
        "before the Host stops waiting.",
    )
    ssh_ticket_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="Seconds an SSH ticket (SshService.CreateSshTicket) stays good for its "
        "one use on the SSH proxy port.",
    )

    @model_validator(mode="after")
    def _runner_timeout_bounded(self) -> TimingConfig:
        problem = runner_timeout_problem(self.heartbeat_interval, self.heartbeat_timeout_factor)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def runner_timeout(self) -> float:
        return self.heartbeat_interval * self.heartbeat_timeout_factor


class EnvironmentConfig(Section):
    runner_user: str = Field("", description="User the runner runs as (systemd units).")


class RunnerConfig(Section):
    name: str = Field("", description="Name the runner registers under; the hostname if empty.")
    state_dir: GivenPath = Field(
        Path("~/.hakuriver/runner"),
        description="Runner state: the credential received on its first join (kept 0600).",
    )
    reconnect_max_seconds: float = Field(
        10.0, gt=0, description="Upper bound of the reconnect backoff."
    )

    @field_validator("name")
    @classmethod
    def _runner_name(cls, name: str) -> str:
        """Refused here, not only by the Host once the Runner connects."""
        if name and (problem := runner_name_problem(name)) is not None:
            raise ValueError(problem)
        return name


class SchedulingConfig(Section):
    starvation_seconds: float = Field(
        300.0,
        ge=0,
        description="A queued task waiting this long reserves a node against smaller tasks.",
    )
    prepare_ahead: int = Field(
        2,
        ge=0,
        description=(
            "Queued tasks each busy node creates containers for ahead of their start (0: none)."
        ),
    )


class DockerConfig(Section):
    container_dir: str = Field(
        "hakuriver-containers", description="Folder under shared_dir holding environment tarballs."
    )
    default_container_name: str = Field(
        "hakuriver-base", description="Environment used when a task names none."
    )
    initial_base_image: str = Field(
        "busybox:latest", description="Local image the default environment is created from."
    )
    tasks_privileged: bool = Field(False, description="Run every task container privileged.")
    keep_failed_containers: bool = Field(
        False,
        description="Keep containers that failed to start, for docker inspect (until removed "
        "by hand or the runner restarts).",
    )
    additional_mounts: list[str] = Field(
        default_factory=list, description="Extra HOST_PATH:CONTAINER_PATH mounts for every task."
    )

    @field_validator("additional_mounts")
    @classmethod
    def _mounts(cls, mounts: list[str]) -> list[str]:
        # Refused when the config is read: accepted, every task on the node failed to start.
        for text in mounts:
            parse_mount(text)
        return mounts


WEBHOOK_EVENTS = frozenset(
    {
        "*",
        *(f"node.{s}" for s in NodeStatus),
        "node.drained",
        "node.undrained",
        *(f"task.{s}" for s in FINAL_STATUSES),
    }
)


class TlsConfig(Section):
    plaintext: bool = Field(
        False,
        description="Serve and dial gRPC without TLS. Refused unless the Host binds a "
        "loopback address.",
    )
    ca_file: GivenPath = Field(
        Path("~/.hakuriver/tls/ca.pem"),
        description="CA certificate Runners and clients trust (hakuriver.init tls creates it).",
    )
    cert_file: GivenPath = Field(
        Path("~/.hakuriver/tls/host.pem"), description="The Host's certificate (Host only)."
    )
    key_file: GivenPath = Field(
        Path("~/.hakuriver/tls/host.key"), description="The Host's private key (Host only)."
    )
    server_name: str = Field(
        "",
        description="Name to expect in the Host's certificate when it is not the address "
        "dialled (host_reachable_address).",
    )

    def path(self, name: str) -> Path:
        return Path(getattr(self, name)).expanduser()


class DashboardConfig(Section):
    enabled: bool = Field(True, description="Serve the web dashboard and its Connect API.")
    port: int = Field(8003, ge=0, le=65535, description="Port of the dashboard (HTTP or HTTPS).")
    bind_ip: str = Field(
        "", description="Address the dashboard binds; network.host_bind_ip if empty."
    )
    plaintext: bool = Field(
        False,
        description="Serve plain HTTP instead of HTTPS with the Host's TLS certificate. Refused "
        "unless the dashboard binds a loopback address.",
    )
    server_names: list[str] = Field(
        default_factory=list,
        description="Host names the dashboard answers to besides IP addresses, localhost, "
        "network.host_reachable_address and tls.server_name (a page reached by any other "
        "name is refused: DNS rebinding).",
    )
    refresh_seconds: float = Field(
        15.0,
        ge=1,
        le=86400,
        description="Seconds between a page's reads of what no stream reports (the Users, "
        "Tokens and Docker pages' lists, and the user's role with them).",
    )
    assets_dir: OptionalPath = Field(
        None,
        description="Built dashboard files (index.html, assets/); the ones built in the "
        "checkout (scripts/build-dashboard.sh) if unset.",
        examples=["/opt/hakuriver/dashboard"],
    )

    def bind(self, network: NetworkConfig) -> str:
        return self.bind_ip or network.host_bind_ip


TASK_NETWORKS = tuple(TaskNetwork)


class AuthConfig(Section):
    token: str = Field(
        "",
        description="API token the command-line tools send ($HAKURIVER_TOKEN wins; prefer "
        "credentials_file).",
    )
    credentials_file: GivenPath = Field(
        Path("~/.hakuriver/credentials"),
        description="File holding the API token; must not be readable by others. The Host "
        "writes the first admin's token here on its first start.",
    )
    join_token: str = Field(
        "",
        description="Secret a new Runner joins with (Host: what it accepts; Runner: what it "
        "presents). Empty on the Host: no new Runner can join.",
    )
    bootstrap_admin: str = Field(
        "admin", description="Name of the admin the Host creates on its first start."
    )
    authentication: bool = Field(
        True,
        description="false: every caller acts as an admin (benchmarks, development). Refused "
        "unless the Host binds a loopback address.",
    )
    metrics_token: str = Field(
        "", description="Bearer token /metrics requires; empty: /metrics is open."
    )
    user_mount_roots: list[str] = Field(
        default_factory=list,
        description="Host paths under which plain users may bind-mount (operators: anywhere).",
    )
    default_task_network: str = Field(
        "host",
        description="Network of a task that names none: host (the node's) or none (isolated).",
    )
    calls_per_caller: int = Field(
        16,
        ge=0,
        description="Calls (unary) of one user or token holder the Host serves at once; more "
        "wait their turn, so one user's burst does not hold back others (0: no limit).",
    )
    streams_per_caller: int = Field(
        1024,
        ge=0,
        description="Streams (watches, followed logs, terminals) one user may hold open at "
        "once; another is refused RESOURCE_EXHAUSTED (0: no limit).",
    )

    @field_validator("bootstrap_admin")
    @classmethod
    def _user_name(cls, value: str) -> str:
        if (problem := user_name_problem(value)) is not None:
            raise ValueError(f"a user's name {problem}")
        return value

    @field_validator("default_task_network")
    @classmethod
    def _known_network(cls, value: str) -> str:
        if value not in TASK_NETWORKS:
            raise ValueError(f"default_task_network must be one of {', '.join(TASK_NETWORKS)}")
        return value

    @field_validator("user_mount_roots")
    @classmethod
    def _absolute(cls, roots: list[str]) -> list[str]:
        relative = [r for r in roots if not r.startswith("/")]
        if relative:
            raise ValueError(f"user_mount_roots must be absolute paths, got {relative}")
        return roots


class WebhookConfig(Section):
    url: str = Field(description="URL that receives a JSON POST per event.")
    secret: str = Field(
        "",
        description="Key of the X-HakuRiver-Signature HMAC-SHA256 header; empty: unsigned.",
    )
    events: list[str] = Field(
        default_factory=lambda: ["task.failed", "task.killed_oom", "task.lost", "node.offline"],
        description="task.<final status> (completed, failed, killed, killed_oom, lost), "
        "node.offline, node.online, node.drained, node.undrained, or * for all.",
    )
    timeout_seconds: float = Field(5.0, gt=0, description="Per-attempt HTTP timeout.")
    max_attempts: int = Field(5, ge=1, description="Attempts before an event is dropped.")
    retry_base_seconds: float = Field(
        1.0, gt=0, description="First retry delay; doubles with each attempt."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        # Checked here, not at the first delivery: a bad port failed every attempt, and
        # the give-up warning, naming the port, ended the receiver's worker silently.
        # The messages never hold the URL: a chat webhook's path is its secret, and they
        # reach the terminal and the journal.
        parts = urlsplit(url)
        try:
            port = parts.port  # raises for a port that is no number in 0-65535
        except ValueError as exc:
            raise ValueError(f"webhook url: {exc}") from None
        if port == 0:
            # No receiver listens there: every delivery was refused.
            raise ValueError("webhook url: port 0 cannot be connected to; use 1-65535")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook url must be an http:// or https:// URL with a host")
        if any(c.isspace() or not c.isprintable() for c in url):
            # urllib refuses it at every delivery, in words quoting its path.
            raise ValueError("webhook url must not hold spaces or control characters")
        return url

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        unknown = [e for e in events if e not in WEBHOOK_EVENTS]
        if unknown:
            raise ValueError(
                f"unknown webhook event(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(WEBHOOK_EVENTS))}"
            )
        return events


class Config(BaseSettings):
    """Every tool's configuration; sections mirror the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="HAKURIVER_", env_nested_delimiter="__", extra="forbid"
    )

    network: NetworkConfig = Field(default_factory=NetworkConfig)  # type: ignore[arg-type]
    paths: PathsConfig = Field(default_factory=PathsConfig)  # type: ignore[arg-type]
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)  # type: ignore[arg-type]
    timing: TimingConfig = Field(default_factory=TimingConfig)  # type: ignore[arg-type]
    environment: EnvironmentConfig = Field(default_factory=EnvironmentConfig)  # type: ignore[arg-type]
    runner: RunnerConfig = Field(default_factory=RunnerConfig)  # type: ignore[arg-type]
    scheduling: SchedulingConfig = Field(default_factory=SchedulingConfig)  # type: ignore[arg-type]
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    docker: DockerConfig = Field(default_factory=DockerConfig)  # type: ignore[arg-type]
    tls: TlsConfig = Field(default_factory=TlsConfig)  # type: ignore[arg-type]
    auth: AuthConfig = Field(default_factory=AuthConfig)  # type: ignore[arg-type]
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)  # type: ignore[arg-type]

    _toml_path: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return tuple(sources)

    @property
    def host_target(self) -> str:
        """gRPC address clients and runners dial."""
        return with_port(self.network.host_reachable_address, self.network.host_port)

    @property
    def task_outputs_dir(self) -> Path:
        return self.paths.path("shared_dir") / "task_outputs"

    @property
    def task_errors_dir(self) -> Path:
        return self.paths.path("shared_dir") / "task_errors"


def load_config(path: Path | None = None, **overrides: Any) -> Config:
    """Load the TOML file (if any) under environment overrides. (The command-line tools
    read it through client_config.load_client_config, which comes to the same.)"""
    resolved = config_file(path)
    Config._toml_path = resolved
    try:
        wrong_types = _wrong_types(resolved)
        if wrong_types:
            raise ConfigError(f"invalid config {resolved}: {wrong_types}")
        return Config(**overrides)
    except ValueError as exc:
        source = resolved or "(the defaults and HAKURIVER_* variables)"
        raise ConfigError(f"invalid config {source}: {_problems(exc)}") from exc
    finally:
        Config._toml_path = None


# The config as the file has to write it: every value of its key's TOML type. pydantic, lax
# for the HAKURIVER_* variables (text), read `host_port = true` as port 1, "8000" as 8000
# and `tasks_privileged = 1` as true.
_AS_WRITTEN = create_model(  # type: ignore[call-overload]
    "ConfigAsWritten",
    __config__=ConfigDict(extra="ignore", strict=True),
    **{name: (info.annotation, None) for name, info in Config.model_fields.items()},
)
_TYPE_ERRORS = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string in quotes",
    "list_type": "a list ([...])",
    "model_type": "a table",
    "dict_type": "a table",
}


_DATE = "TOML date"


def _toml_type(value: Any) -> str:
    """What TOML calls the type of a value it read."""
    if isinstance(value, bool):
        return "true/false"
    for kind, name in ((int, "an integer"), (float, "a float"), (str, "a string")):
        if isinstance(value, kind):
            return name
    if isinstance(value, list):
        return "a list"
    return "a date or time" if _DATE in value else "a table"


def _wrong_types(path: Path | None) -> str:
    """Each key of the file whose value is not of its type (``network.host_port: must be an
    integer, not true/false``), on one line; empty when every value's type is right (other
    problems are left to Config, which names the variables too)."""
    if path is None:
        return ""
    import tomllib

    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except (OSError, ValueError):
        return ""  # Config's TOML source says what is wrong with the file
    # As JSON, where strict mode still reads a string as a path; a date, which JSON lacks,
    # as a table, so that no key's type takes it.
    as_json = json.dumps(document, default=lambda value: {_DATE: str(value)})
    try:
        _AS_WRITTEN.model_validate_json(as_json, strict=True)
    except ValidationError as exc:
        return "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: must be "
            f"{_TYPE_ERRORS[error['type']]}, not {_toml_type(error['input'])}"
            for error in exc.errors()
            if error["type"] in _TYPE_ERRORS
        )
    return ""


def _problems(exc: ValueError) -> str:
    """Each problem as ``section.key: what is wrong``, on one line, naming the
    ``HAKURIVER_*`` variable when one set it (else it reads as the file's); never the value
    given (a mistyped key's value may be a secret, and it would reach the terminal and the
    journal)."""
    if not isinstance(exc, ValidationError):
        found = _ENV_PARSE.search(str(exc))
        if found:  # pydantic-settings could not even parse a variable of this section
            return _unparsed_variable(found[1])
        return str(exc)
    set_here = {name.upper() for name in os.environ if name.upper().startswith("HAKURIVER_")}

    def where(loc: tuple[int | str, ...]) -> str:
        name = ".".join(str(part) for part in loc) or "config"
        variable = "HAKURIVER_" + "__".join(str(part) for part in loc[:2]).upper()
        return f"{name} ({variable})" if len(loc) >= 2 and variable in set_here else name

    return "; ".join(
        f"{where(error['loc'])}: "
        + (
            _unknown(error["loc"], error["input"])
            if error["type"] == "extra_forbidden"
            else error["msg"].removeprefix("Value error, ")
        )
        for error in exc.errors()
    )


def _has_key(section: Any, key: int | str) -> bool:
    model = section.annotation
    return isinstance(model, type) and issubclass(model, BaseModel) and key in model.model_fields


# Keys of the reference HakuRiver's config that mean nothing here.
_RETIRED = {
    ("network", "runner_address"): "Runners dial the Host, which never dials them",
    ("network", "runner_port"): "Runners dial the Host, which never dials them",
}


def _unknown(loc: tuple[int | str, ...], value: Any) -> str:
    """What to say of a section or key the config does not have: the one meant, when its
    name is close to one (a typo), or the section a key above every section belongs in."""
    retired = _RETIRED.get((str(loc[0]), str(loc[-1])))
    if retired:
        return f"not used any more ({retired}): remove it"
    if len(loc) == 1 and not isinstance(value, dict):
        homes = [name for name, info in Config.model_fields.items() if _has_key(info, loc[0])]
        if homes:
            return f"a key above every section: it belongs under [{homes[0]}]"
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, str):
            annotation = model.model_fields[part].annotation
            model = WebhookConfig if part == "webhooks" else annotation  # type: ignore[assignment]
    what = "section" if len(loc) == 1 else "key"
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"unknown {what}" + (f" (did you mean {close[0]}?)" if close else "")


def _unparsed_variable(section: str) -> str:
    """Which HAKURIVER_* variable of ``section`` pydantic-settings could not parse, and why:
    a list not written as JSON, or a whole section set at once."""
    whole = f"HAKURIVER_{section.upper()}"
    given = {name.upper(): name for name in os.environ if name.upper().startswith(whole)}
    if whole in given and section == "webhooks":
        return f'{given[whole]} is not valid: webhooks are a JSON list, e.g. \'[{{"url": "..."}}]\''
    if whole in given:
        return f"{given[whole]} is not valid: set one key at a time, {whole}__<KEY>"
    model = Config.model_fields[section].annotation
    fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
    for upper, name in sorted(given.items()):
        field = fields.get(upper.removeprefix(f"{whole}__").lower())
        if field is None or get_origin(field.annotation) is not list:
            continue
        try:
            json.loads(os.environ[name])
        except ValueError:
            return f'{name} is not valid: a list is written as JSON, e.g. {name}=\'["a", "b"]\''
    return f"a {whole}__* variable is not valid"


_ENV_PARSE = re.compile(r'error parsing value for field "(\w+)" from source "EnvSettingsSource"')
