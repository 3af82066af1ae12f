"""Assembles the Host: gRPC server (API, runner streams, health, reflection), the dashboard
(its Connect API and static files over HTTP) and /metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy.exc import DBAPIError

from hakuriver_common.addresses import with_port
from hakuriver_common.config import Config, is_loopback
from hakuriver_common.limits import MAX_NAME_BYTES
from hakuriver_common.proto.hakuriver.v1 import (
    access_service_connect,
    access_service_pb2,
    access_service_pb2_grpc,
    audit_service_connect,
    audit_service_pb2,
    audit_service_pb2_grpc,
    environment_service_connect,
    environment_service_pb2,
    environment_service_pb2_grpc,
    log_service_connect,
    log_service_pb2,
    log_service_pb2_grpc,
    node_service_connect,
    node_service_pb2,
    node_service_pb2_grpc,
    runner_service_pb2,
    runner_service_pb2_grpc,
    shell_service_pb2,
    shell_service_pb2_grpc,
    ssh_service_connect,
    ssh_service_pb2,
    ssh_service_pb2_grpc,
    task_service_connect,
    task_service_pb2,
    task_service_pb2_grpc,
)
from hakuriver_common.roles import AuditOutcome
from hakuriver_common.service import stop_on_signals
from hakuriver_common.tls_pair import pair_problem
from hakuriver_host import reflection_service
from hakuriver_host.access_services import AccessService, AuditService
from hakuriver_host.cluster import Cluster
from hakuriver_host.connect_bridge import connect_app
from hakuriver_host.environment_services import EnvironmentService, ShellService
from hakuriver_host.environments import EnvironmentManager
from hakuriver_host.errors import Unavailable, at_most
from hakuriver_host.identity import ANONYMOUS, peer_name
from hakuriver_host.interceptors import ApiInterceptor
from hakuriver_host.log_store import LogStore
from hakuriver_host.metrics import HostMetrics
from hakuriver_host.metrics_http import serve_metrics
from hakuriver_host.services import (
    LogService,
    NodeService,
    RunnerService,
    SshService,
    TaskService,
)
from hakuriver_host.ssh_proxy import SshProxy
from hakuriver_host.store import DatabaseError, Store
from hakuriver_host.web_app import DEFAULT_ASSETS, AssetStore, WebApp
from hakuriver_host.web_server import WebServer, bind

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0
# How often the Host checks it still holds its database (a PostgreSQL server's restart ends
# the session that holds the lock).
CLAIM_CHECK_SECONDS = 5.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Calls the server may hold before the application takes them. gRPC cancels calls that
# arrive faster than the server takes them beyond 1,000 waiting (randomly, up to 3,000): a
# whole cluster of Runners reconnecting at once after a Host restart would lose some.
MAX_PENDING_CALLS = 20_000
PENDING_CALLS_OPTIONS = [
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
]
SERVICE_NAMES = (
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    log_service_pb2.DESCRIPTOR.services_by_name["LogService"].full_name,
    node_service_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    runner_service_pb2.DESCRIPTOR.services_by_name["RunnerService"].full_name,
    environment_service_pb2.DESCRIPTOR.services_by_name["EnvironmentService"].full_name,
    shell_service_pb2.DESCRIPTOR.services_by_name["ShellService"].full_name,
    access_service_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    ssh_service_pb2.DESCRIPTOR.services_by_name["SshService"].full_name,
)


class ListenError(OSError):
    """A port the Host must listen on is taken or not available."""

    def __init__(self, what: str, host: str, port: int, reason: object) -> None:
        code = getattr(reason, "errno", None)
        # A name that does not resolve is a socket.gaierror, whose errno (-2) os.strerror
        # called "Unknown error -2".
        why = getattr(reason, "strerror", None) or (os.strerror(code) if code else str(reason))
        super().__init__(f"cannot listen on {host}:{port} for the {what}: {why}")


class SecurityConfigError(OSError):
    """The config asks for something the Host refuses to run with (a one-line reason)."""


# The shortest join token a Host reachable off loopback takes (hakuriver.init config writes
# 48 characters: hkrj_ and 256 random bits).
MIN_JOIN_TOKEN_CHARS = 24


def check_security(config: Config) -> None:
    """Plaintext and open (unauthenticated) Hosts only where every port they open binds a
    loopback address (the gRPC port and, when enabled, the dashboard's); a short join token
    only on a loopback gRPC port."""
    bind = config.network.host_bind_ip
    dashboard_bind = config.dashboard.bind(config.network)
    if config.tls.plaintext and not is_loopback(bind):
        raise SecurityConfigError(
            f"tls.plaintext = true is allowed only on a loopback address, not {bind}: "
            "create certificates with hakuriver.init tls"
        )
    dashboard_open = config.dashboard.enabled and not is_loopback(dashboard_bind)
    if dashboard_open and dashboard_plaintext(config):
        raise SecurityConfigError(
            f"a plain-HTTP dashboard is allowed only on a loopback address, not "
            f"{dashboard_bind}: set dashboard.plaintext = false (HTTPS with the Host's "
            "certificate) or dashboard.bind_ip to a loopback address"
        )
    join = config.auth.join_token
    if join and len(join) < MIN_JOIN_TOKEN_CHARS and not is_loopback(bind):
        raise SecurityConfigError(
            f"auth.join_token has {len(join)} characters: one that can be guessed lets anyone "
            f"who reaches {bind} join as a Runner and be given users' tasks; use "
            f"{MIN_JOIN_TOKEN_CHARS} or more random ones (hakuriver.init config writes one)"
        )
    if not config.auth.authentication:
        for where in [bind, *([dashboard_bind] if config.dashboard.enabled else [])]:
            if not is_loopback(where):
                raise SecurityConfigError(
                    "auth.authentication = false is allowed only on a loopback address, "
                    f"not {where}"
                )


def check_ports(config: Config) -> None:
    """Two of the Host's own ports set to one number: said as such before binding (the
    second bind failed with "address in use", under the wrong port's name, as if another
    program held it)."""
    net = config.network
    ports = {
        "network.host_port": net.host_port,
        "network.host_ssh_proxy_port": net.host_ssh_proxy_port,
        "network.metrics_port": net.metrics_port,
    }
    if config.dashboard.enabled:
        ports["dashboard.port"] = config.dashboard.port
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port and port in seen:  # 0: any free port
            raise SecurityConfigError(
                f"{seen[port]} and {key} are both {port}: each of the Host's ports needs "
                "its own number"
            )
        seen[port] = key


def dashboard_plaintext(config: Config) -> bool:
    """The dashboard speaks HTTPS with the Host's certificate unless either is plaintext."""
    return config.tls.plaintext or config.dashboard.plaintext


def _tls_pems(config: Config) -> list[bytes]:
    tls = config.tls
    pems = []
    for key in ("key_file", "cert_file"):
        path = tls.path(key)
        try:
            pems.append(path.read_bytes())
        except OSError as exc:
            raise SecurityConfigError(
                f"cannot read tls.{key} {path}: {exc.strerror} (create it with "
                "hakuriver.init tls, or set tls.plaintext = true on a loopback address)"
            ) from None
    return pems


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """The Host's TLS identity; None for plaintext. One clear line when files are missing
    or are no pair (gRPC then failed to listen, said as "address in use or not available").
    The pair is checked by path once both files are read (ssl loads keys only from files)."""
    if config.tls.plaintext:
        return None
    pems = _tls_pems(config)
    key_file, cert_file = config.tls.path("key_file"), config.tls.path("cert_file")
    problem = pair_problem(
        key_file, cert_file, f"tls.key_file {key_file}", f"tls.cert_file {cert_file}"
    )
    if problem:
        raise SecurityConfigError(problem)
    return grpc.ssl_server_credentials([(pems[0], pems[1])])


class HealthServicer(health.aio.HealthServicer):
    """The standard health service with its ``List`` answered: the package leaves it
    unimplemented, so a public call anybody may make was an internal error and an ERROR.
    A service name is bounded: anybody may call, and a Watch keeps its name for as long as
    it stays open (megabytes each, held by as many streams as a caller opens).
    ``List`` reads the statuses this class keeps as they are set, not the package's
    private table."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType] = {}
        self._stopping = False

    async def set(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        if not self._stopping:  # as the package: ignored once shutting down
            self._statuses[service] = status
        await super().set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        self._stopping = True
        self._statuses = dict.fromkeys(self._statuses, health_pb2.HealthCheckResponse.NOT_SERVING)
        await super().enter_graceful_shutdown()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        at_most("service", len(request.service.encode()), MAX_NAME_BYTES, " bytes")
        return await super().Check(request, context)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        at_most("service", len(request.service.encode()), MAX_NAME_BYTES, " bytes")
        await super().Watch(request, context)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._statuses.items()
            }
        )


@dataclass(frozen=True)
class _Servicers:
    """The public API's servicers, served by both transports (gRPC and Connect)."""

    tasks: TaskService
    logs: LogService
    nodes: NodeService
    environments: EnvironmentService
    shell: ShellService
    access: AccessService
    audit: AuditService
    ssh: SshService


class HostServer:
    def __init__(self, config: Config, prepare_default_environment: bool = True) -> None:
        """``prepare_default_environment``: build the default environment's tarball on start
        when it has none (needs Docker; in-process tests without Docker turn it off)."""
        self.config = config
        self.prepare_default_environment = prepare_default_environment
        self.metrics = HostMetrics()
        self.store = Store(config.database.sqlalchemy_url(), config.database.busy_timeout_seconds)
        self.logs = LogStore(config.task_outputs_dir, config.task_errors_dir)
        self.cluster = Cluster(config, self.store, self.logs, self.metrics)
        self.gate = ApiInterceptor(
            self.metrics,
            self.cluster.access,
            self.cluster.audit,
            config.auth.calls_per_caller,
            config.auth.streams_per_caller,
        )
        self.server = grpc.aio.server(
            interceptors=[self.gate],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                *PENDING_CALLS_OPTIONS,  # bursts of calls allowed
                # A second Host on the same port must fail, not share it.
                ("grpc.so_reuseport", 0),
                # No bandwidth-delay probing: it grows a stream's window to megabytes, and
                # then a Runner's stream holds megabytes of a flooding task's output in
                # flight before another task's line (measured: p99 0.8-1.9 s behind a flood
                # with 20 slow followers, 0.14-0.22 s without it). The default window is
                # ample on a LAN.
                ("grpc.http2.bdp_probe", 0),
            ],
        )
        self.environments = EnvironmentManager(config)
        self.ssh_proxy = SshProxy(self.cluster)
        self.servicers = _Servicers(
            tasks=TaskService(self.cluster),
            logs=LogService(self.cluster),
            nodes=NodeService(self.cluster),
            environments=EnvironmentService(self.environments, self.cluster),
            shell=ShellService(self.environments, self.cluster.audit),
            access=AccessService(self.cluster),
            audit=AuditService(self.cluster.audit),
            ssh=SshService(self.cluster),
        )
        found = self.servicers
        task_service_pb2_grpc.add_TaskServiceServicer_to_server(found.tasks, self.server)
        log_service_pb2_grpc.add_LogServiceServicer_to_server(found.logs, self.server)
        node_service_pb2_grpc.add_NodeServiceServicer_to_server(found.nodes, self.server)
        runner_service_pb2_grpc.add_RunnerServiceServicer_to_server(
            RunnerService(self.cluster), self.server
        )
        environment_service_pb2_grpc.add_EnvironmentServiceServicer_to_server(
            found.environments, self.server
        )
        shell_service_pb2_grpc.add_ShellServiceServicer_to_server(found.shell, self.server)
        access_service_pb2_grpc.add_AccessServiceServicer_to_server(found.access, self.server)
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(found.audit, self.server)
        ssh_service_pb2_grpc.add_SshServiceServicer_to_server(found.ssh, self.server)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection_service.enable((*SERVICE_NAMES, health.SERVICE_NAME), self.server)
        self.port = 0
        self.metrics_port = 0
        self.ssh_proxy_port = 0
        self.dashboard_port = 0
        self._http: WSGIServer | None = None
        # Set once the state is loaded: /metrics answers 503 until then (not false zeros).
        self._metrics_ready = threading.Event()
        self._web: WebServer | None = None
        self._keeping_claim: asyncio.Task[None] | None = None
        # Set, with why, when another Host took the database: this Host stops.
        self.claim_lost = asyncio.Event()
        self.claim_lost_by: DatabaseError | None = None

    def _listen_grpc(self, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
        # gRPC's own bind failure is a bare RuntimeError after a C-core log line; a plain
        # bind first gives the reason in one line.
        try:
            bind(host, port).close()
            if credentials is None:
                return self.server.add_insecure_port(with_port(host, port))
            return self.server.add_secure_port(with_port(host, port), credentials)
        except OSError as exc:
            raise ListenError("gRPC API", host, port, exc) from None
        except RuntimeError:
            raise ListenError("gRPC API", host, port, "address in use or not available") from None

    def web_app(self) -> WebApp:
        """The dashboard's ASGI application over this Host's servicers."""
        found = self.servicers
        applications = [
            (task_service_connect.TaskServiceASGIApplication, found.tasks, task_service_pb2),
            (log_service_connect.LogServiceASGIApplication, found.logs, log_service_pb2),
            (node_service_connect.NodeServiceASGIApplication, found.nodes, node_service_pb2),
            (
                environment_service_connect.EnvironmentServiceASGIApplication,
                found.environments,
                environment_service_pb2,
            ),
            (access_service_connect.AccessServiceASGIApplication, found.access, access_service_pb2),
            (audit_service_connect.AuditServiceASGIApplication, found.audit, audit_service_pb2),
            (ssh_service_connect.SshServiceASGIApplication, found.ssh, ssh_service_pb2),
        ]
        services = [
            connect_app(application, self.gate, servicer, module.DESCRIPTOR.services_by_name[name])
            for application, servicer, module in applications
            for name in module.DESCRIPTOR.services_by_name
        ]
        assets_dir = self.config.dashboard.assets_dir or DEFAULT_ASSETS
        assets = AssetStore(Path(assets_dir).expanduser(), self._page_meta)
        if not assets.built:
            log.warning(
                "the dashboard's files are not built in %s: its pages answer 503 until "
                "scripts/build-dashboard.sh builds them (its API works)",
                assets_dir,
            )
        config = self.config
        names = {"localhost", config.network.host_reachable_address, config.tls.server_name}
        names |= set(config.dashboard.server_names)
        return WebApp(self.gate, services, found.shell, assets, {n for n in names if n})

    def _page_meta(self) -> dict[str, str]:
        """What the dashboard's pages are told in index.html: the SSH proxy's port, for the
        ``hakuriver.ssh --proxy-port`` a VPS's page shows, whether the Host is open
        (``auth.authentication = false``: no sign-in to ask for), and how often pages without
        a stream read their lists again (``dashboard.refresh_seconds``)."""
        return {
            "hakuriver-ssh-proxy-port": str(self.ssh_proxy_port or ""),
            "hakuriver-open": "true" if self.cluster.access.open else "",
            "hakuriver-refresh-seconds": str(self.config.dashboard.refresh_seconds),
        }

    def _listen_dashboard(self) -> None:
        dashboard = self.config.dashboard
        host = dashboard.bind(self.config.network)
        try:
            sock = bind(host, dashboard.port)
        except OSError as exc:
            raise ListenError("dashboard", host, dashboard.port, exc) from None
        tls = self.config.tls
        plaintext = dashboard_plaintext(self.config)
        if not plaintext:
            _tls_pems(self.config)  # one clear line when they are missing
        self._web = WebServer(
            self.web_app(),
            sock,
            "" if plaintext else str(tls.path("cert_file")),
            "" if plaintext else str(tls.path("key_file")),
        )
        self.dashboard_port = self._web.port

    @property
    def listening(self) -> dict[str, int]:
        """The ports this Host listens on, by their config keys (authorization.PORTS)."""
        ports = {
            "network.host_port": self.port,
            "network.host_ssh_proxy_port": self.ssh_proxy_port,
            "network.metrics_port": self.metrics_port,
        }
        if self._web is not None:
            ports["dashboard.port"] = self.dashboard_port
        return ports

    @property
    def dashboard_url(self) -> str:
        if self._web is None:
            return ""
        host = self.config.dashboard.bind(self.config.network)
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self._web.tls else 'http'}://{shown}:{self.dashboard_port}/"

    async def start(self) -> None:
        """Listen on every port first, so a port that is taken stops the Host before it
        has started anything; then load the state and serve."""
        net = self.config.network
        check_security(self.config)
        check_ports(self.config)
        credentials = server_credentials(self.config)
        self.port = self._listen_grpc(net.host_bind_ip, net.host_port, credentials)
        if self.config.dashboard.enabled:
            self._listen_dashboard()
        try:
            self._http = serve_metrics(
                self.metrics.registry,
                net.metrics_bind_ip,
                net.metrics_port,
                self.config.auth.metrics_token,
                self._metrics_ready,
                self._metrics_refused(asyncio.get_running_loop()),
            )
        except OSError as exc:
            raise ListenError("metrics", net.metrics_bind_ip, net.metrics_port, exc) from None
        self.metrics_port = int(self._http.server_port)
        try:
            self.ssh_proxy_port = await self.ssh_proxy.start(
                net.host_bind_ip, net.host_ssh_proxy_port
            )
        except OSError as exc:
            raise ListenError("SSH proxy", net.host_bind_ip, net.host_ssh_proxy_port, exc) from None
        # Before anything of the database or the shared folder is touched: a second Host
        # on them stops here.
        await self.store.run(self.store.claim)
        self._keeping_claim = asyncio.create_task(self._keep_claim(), name="database-claim")
        # Before any call is served, so none of them is being written.
        await asyncio.to_thread(self.environments.sweep_partials)
        await self.cluster.start()
        self._metrics_ready.set()
        await self.server.start()
        if self._web is not None:
            await self._web.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.prepare_default_environment:
            self._default_env = asyncio.create_task(self._ensure_default_environment())
        log.info(
            "host serving gRPC (%s) on %s:%d, SSH proxy on port %d, metrics on http://%s:%d/metrics",
            "plaintext" if credentials is None else "TLS",
            net.host_bind_ip,
            self.port,
            self.ssh_proxy_port,
            net.metrics_bind_ip,
            self.metrics_port,
        )
        if self._web is not None:
            log.info("host serving the dashboard on %s", self.dashboard_url)

    async def _keep_claim(self) -> None:
        """Hold the database while running: once a PostgreSQL server that went away is
        back, take the lock again, or stop if another Host took it meanwhile."""
        while True:
            await asyncio.sleep(CLAIM_CHECK_SECONDS)
            try:
                if await self.store.run(self.store.keep_claim):
                    log.warning(
                        "the database server ended the session that held this Host's lock on "
                        "the database (a restart?): the lock is taken again"
                    )
            except DatabaseError as exc:
                log.error("%s (it started while the database server was away): stopping", exc)
                self.claim_lost_by = exc
                self.claim_lost.set()
                return
            except DBAPIError:
                continue  # the server is still away: asked again later

    async def _ensure_default_environment(self) -> None:
        try:
            await asyncio.to_thread(self.environments.ensure_default)
        except Exception as exc:
            log.warning("could not prepare the default environment: %s", exc)

    async def stop(self) -> None:
        if self._keeping_claim is not None:
            self._keeping_claim.cancel()
            await asyncio.gather(self._keeping_claim, return_exceptions=True)
        await self.health.enter_graceful_shutdown()
        # Watches and followers learn the Host is going, on either transport, and come back.
        self.gate.end_streams(Unavailable("the Host is stopping: ask again once it is back"))
        # Before the dashboard's port closes: the CLI submits over it.
        await self.cluster.finish_submissions()
        if self._web is not None:
            try:
                await self._web.stop()
            except Exception as exc:  # the rest of the shutdown must run whatever it says
                log.warning("the dashboard did not stop cleanly: %s", exc)
        await self.ssh_proxy.stop()
        await self.cluster.stop()
        await self.server.stop(SHUTDOWN_GRACE_SECONDS)
        if self._http is not None:
            await asyncio.to_thread(self._http.shutdown)
        self.gate.close()  # the counts of rate-limited log lines not yet written
        self.store.close()

    def _metrics_refused(self, loop: asyncio.AbstractEventLoop) -> Callable[[str], None]:
        """Audit a scrape of /metrics without its token (told from the server's thread)."""

        def refused(peer: str) -> None:
            loop.call_soon_threadsafe(
                self.cluster.audit.record,
                ANONYMOUS,
                "metrics.scrape",
                "/metrics",
                AuditOutcome.REFUSED,
                "no bearer token, or not auth.metrics_token",
                peer_name(peer) if peer else "",
            )

        return refused

    async def serve_forever(self) -> None:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        signalled = asyncio.create_task(stop_on_signals().wait())
        lost = asyncio.create_task(self.claim_lost.wait())
        await asyncio.wait((signalled, lost), return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        lost.cancel()
        log.info("shutting down (grace %.0fs)", SHUTDOWN_GRACE_SECONDS)
        await self.stop()
        if self.claim_lost_by is not None:
            raise self.claim_lost_by
