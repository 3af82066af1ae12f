"""Tasks in Docker containers: blocking docker-py calls, always run off the event loop.

Every task container carries labels (cluster, runner, task id, kind) so a restarted runner
finds it again: Docker itself is the runner's record of what it runs. The cluster label
keeps clusters sharing one Docker daemon (and runners of the same name) apart: a Runner
lists, adopts, stops and removes only its own cluster's containers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.types import DeviceRequest, LogConfig, Mount

from hakuriver_common.config import Config
from hakuriver_common.docker_errors import unreachable
from hakuriver_common.environments import (
    TIMESTAMP_LABEL,
    ReplacedImages,
    TarballFile,
    environment_of,
    image_for,
    newest_tarball,
)
from hakuriver_common.mounts import LOCAL_TEMP_MOUNT_POINT, SHARED_MOUNT_POINT, parse_mount
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb, task_pb2
from hakuriver_common.statuses import TaskKind
from hakuriver_common.task_variables import NVIDIA_DEVICES_VAR
from hakuriver_runner.backend import (
    Emit,
    ExitInfo,
    Gone,
    LogFollow,
    StartError,
    emit_past,
    id_list,
    task_variables,
)
from hakuriver_runner.docker_logs import Attached, follow_output
from hakuriver_runner.ssh_ports import SshPorts
from hakuriver_runner.start_gate import (
    ENTRYPOINT,
    LABEL_GATED,
    RELEASED_FILE,
    Gate,
    ReleaseLog,
    keeps_environment,
    never_released,
    waiting,
)
from hakuriver_runner.system_info import read_numa_topology

log = logging.getLogger(__name__)

LABEL_CLUSTER = "hakuriver.cluster"
LABEL_RUNNER = "hakuriver.runner"
LABEL_TASK = "hakuriver.task_id"
LABEL_KIND = "hakuriver.kind"
LABEL_ENV = "hakuriver.environment"


def _parse_docker_time(text: str | None) -> datetime | None:
    if not text or text.startswith("0001-"):
        return None
    # Docker gives RFC 3339 with nanoseconds: trim to microseconds for fromisoformat.
    main, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{main}.{(frac + '000000')[:6]}").replace(tzinfo=UTC)


LABEL_SSH_PORT = "hakuriver.ssh_port"
# On a container created ahead of its task's dispatch (see ``DockerBackend.prepare``).
LABEL_PREPARED = "hakuriver.prepared"
GONE_MESSAGE = "its container disappeared (removed outside HakuRiver)"
# A task container's log, which the Runner reads its output back from after a restart or a
# lost stream (skipping the bytes the Host has): Docker's `local` driver keeps the bytes as
# written, where json-file (the daemon's usual default) kept each byte that is not UTF-8 as
# U+FFFD, 3 bytes, so the output stored after the restart was shifted. Not rotated (one
# file, of up to 1 TB): a rotated log would drop output the Runner had not sent yet.
TASK_LOG = LogConfig(type="local", config={"max-size": "1t", "max-file": "1", "compress": "false"})
# How long a follow or wait keeps asking a Docker daemon that went away (a restart).
DAEMON_AWAY_SECONDS = 120.0
DAEMON_RETRY_SECONDS = 1.0
# How long a held container's gate has to be seen waiting after its start.
GATE_UP_SECONDS = 5.0
# How long after its attachment ends a container has to be reported exited, and how long
# before that end it must have exited; else the attachment was cut and the output is
# followed from the log.
ATTACH_END_SECONDS = 5.0
ATTACH_END_SLACK = 0.5
# A VPS container: the key for root, the variables of its sessions, a host key of its own
# (the image's would be shared by every VPS made from it, readable by each of their users),
# then sshd in the foreground on loopback only (the Runner relays SSH for the Host's proxy;
# nothing else needs to reach it). sshd gives each session a clean environment; with
# PermitUserEnvironment it adds ~/.ssh/environment's, in every kind of session (login
# shells, commands, sftp) and with any OpenSSH, PAM or not.
VPS_SCRIPT = """
if [ ! -x /usr/sbin/sshd ]; then
  echo "this environment has no SSH server (/usr/sbin/sshd): install openssh-server in it" >&2
  exit 127
fi
mkdir -p /root/.ssh /run/sshd && chmod 700 /root/.ssh
printf '%s\\n' "$HAKURIVER_SSH_KEY" > /root/.ssh/authorized_keys
printf '%s' "$HAKURIVER_SSH_ENVIRONMENT" > /root/.ssh/environment
chmod 600 /root/.ssh/authorized_keys /root/.ssh/environment
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
exec /usr/sbin/sshd -D -e -p "$HAKURIVER_SSH_PORT" -o ListenAddress=127.0.0.1 \\
  -h /etc/ssh/ssh_host_ed25519_key -o PermitUserEnvironment=yes \\
  -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no
"""


class TarballGone(StartError):
    """The tarball chosen to load was removed before it was opened: create-tar removes the
    older ones after saving a newer, so the newest is worth looking for again."""


def session_environment(variables: dict[str, str]) -> str:
    """~/.ssh/environment for a VPS's sessions: sshd takes each line's text after the first
    ``=`` as it is (no quoting, so spaces, quotes and ``$`` stay literal); the Host refuses a
    value with a newline."""
    return "".join(f"{name}={value}\n" for name, value in variables.items())


def nvidia_devices(dispatch: rpb.DispatchCommand) -> dict[str, str]:
    """Exactly the task's GPUs for the NVIDIA runtime, and none ("void") for a task without:
    where it is Docker's default runtime, a container of a CUDA image (which sets "all")
    was given every GPU of the node, other tasks' included, device request or not."""
    return {NVIDIA_DEVICES_VAR: id_list(dispatch.gpu_ids) if dispatch.gpu_ids else "void"}


def cpusets(dispatch: rpb.DispatchCommand) -> dict[str, str]:
    """The CPUs and memory a task's container is bound to: its reserved CPUs, and for a NUMA
    target that node's memory. A NUMA target without reserved CPUs (a VPS's --cores 0) gets
    that node's CPUs, as a host process gets them from numactl: it ran on any CPU, every
    access to its memory a remote one from the other nodes."""
    sets = {}
    if dispatch.cpus:
        sets["cpuset_cpus"] = id_list(dispatch.cpus)
    if dispatch.HasField("numa_node_id"):
        sets["cpuset_mems"] = str(dispatch.numa_node_id)
        if not dispatch.cpus:
            local = [n.cpus for n in read_numa_topology() if n.id == dispatch.numa_node_id]
            if local and local[0]:
                sets["cpuset_cpus"] = id_list(local[0])
    return sets


def ssh_port_of(container: Any) -> int:
    """The sshd port of a VPS container; 0 for other containers."""
    labels = (container.attrs.get("Config") or {}).get("Labels") or {}
    return int(labels.get(LABEL_SSH_PORT, "0"))


@dataclass(frozen=True)
class Prepared:
    """A container created ahead for a queued task, the dispatch it was created for, and
    how many environment loads had begun when it was (a later load may change its image);
    when it was also started, held at its gate (start_gate), its one attachment: the gate's
    stdin and, once released, the task's output."""

    dispatch: rpb.DispatchCommand
    container: Any
    loads: int
    gate: Gate | None = None

    def close(self) -> None:
        if self.gate is not None:
            self.gate.close()


# An image, the environment loads seen, and a task's own mounts (target, source).
_GateKey = tuple[str, int, tuple[tuple[str, str], ...]]


def _gate_key(dispatch: rpb.DispatchCommand, loads: int) -> _GateKey:
    mounts = sorted((m.container_path, m.host_path) for m in dispatch.mounts)
    return (dispatch.image, loads, tuple(mounts))


def _why(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)


def real_source(path: str) -> str:
    """A task's bind-mount source, refused when any part of it is a symbolic link.

    The Host checks a plain user's mount against ``auth.user_mount_roots`` by its name only;
    Docker follows links, so a link the user made inside an allowed root (``ln -s /etc``
    from a task, in a shared folder) would mount anything on the node. A link swapped in
    between this check and Docker's mount still gets through: keep allowed roots out of
    folders that tasks can write when that matters.
    """
    real = os.path.realpath(path)
    if real != os.path.normpath(path):
        raise StartError(
            f"mounts: {path} goes through a symbolic link (it resolves to {real}); "
            "mount the real path"
        )
    return real


class DockerBackend:
    def __init__(self, config: Config, runner_name: str) -> None:
        self.config = config
        self.runner_name = runner_name
        # The cluster this Runner belongs to (set by the session; "" before the first join,
        # when nothing of this cluster can exist here).
        self.cluster_id = ""
        self.client = docker.from_env(timeout=600)
        if self.client.api.base_url.startswith("http+docker://"):
            # docker-py's own transports (a Unix socket, a named pipe, SSH) take no proxy,
            # yet requests reads the environment's proxy settings on every call: a quarter
            # of a call's CPU here (0.14 of 0.58 ms).
            self.client.api.trust_env = False
        self.tarball_dir = config.paths.path("shared_dir") / config.docker.container_dir
        self.ssh_ports = SshPorts()
        # Task ids whose failed containers are kept for inspection (keep_failed_containers).
        self.kept: set[int] = set()
        self._replaced = ReplacedImages()
        # Containers whose wait or output follow lost the daemon (a dockerd restart).
        self._interrupted: set[str] = set()
        # Containers created ahead for queued tasks, by task id (see ``prepare``), and the
        # tasks whose prepared container is being started. The lock guards both: a load, a
        # scan after a reconnect and the old stream's threads touch them at once. Loads
        # begun and scans made are counted, so that a container created across either is
        # not kept.
        self.prepared: dict[int, Prepared] = {}
        self._starting: set[int] = set()
        self._preparing = threading.Lock()
        self._loads_seen = 0
        self._scans = 0
        # Command containers this Runner started, attached to before their start, by
        # container id: ``follow`` reads their output from the attachment.
        self._attached: dict[str, tuple[int, Attached]] = {}
        self._attaching = threading.Lock()
        # Exits already read when an attachment ended (the wait's result and the inspected
        # container), for ``wait``.
        self._exited: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        # Command containers this Runner just started, by id, and when: ``state`` answers
        # for them without asking the daemon (an inspect right after a start waits behind
        # the daemon's other starts, ~30 ms on a busy node, before the task's output is
        # read and its end seen). Their exit reports carry Docker's own times, but for a
        # released container's start: its release.
        self._just_started: dict[str, datetime] = {}
        # Containers held at their gate by this Runner (started ahead, never released), and
        # when each released one was let go: its task's start, not Docker's (also on disk,
        # for a Runner that starts again: see start_gate.ReleaseLog).
        self._held: set[str] = set()
        self._released_at: dict[str, datetime] = {}
        self._release_log = ReleaseLog(config.runner.state_dir.expanduser() / RELEASED_FILE)
        # Off once the release log cannot be written: a held container could not be let go.
        self._gating = True
        # Whether an image may be held at a gate (it has no ENTRYPOINT), by image and
        # environment loads seen; and whether its gate's /bin/sh runs, by image, loads and
        # a task's own mounts (which may cover it): True once a gate was seen
        # waiting (later containers are held without asking Docker's ``top``, ~13 ms of
        # the daemon's CPU a call, a tenth of a container's start), False once one could
        # not start (later containers are prepared created only).
        self._gateable: dict[tuple[str, int], bool] = {}
        self._gate_runs: dict[_GateKey, bool] = {}

    def _image_timestamp(self, name: str) -> tuple[Any, int]:
        """The loaded image of an environment and the tarball timestamp it came from."""
        try:
            image = self.client.images.get(image_for(name))
        except docker.errors.ImageNotFound:
            return None, -1
        labels = (image.attrs.get("Config") or {}).get("Labels") or {}
        try:
            return image, int(labels.get(TIMESTAMP_LABEL, 0))
        except ValueError:
            return image, 0

    def tarball_to_load(self, name: str) -> TarballFile | None:
        """The newest tarball of an environment when it is newer than the loaded image."""
        newest = newest_tarball(self.tarball_dir, name)
        if newest is None:
            return None
        _, loaded = self._image_timestamp(name)
        return newest if newest.timestamp > loaded else None

    def load(self, tarball: TarballFile) -> None:
        """docker load a tarball; keep the previous image if anything goes wrong.

        The previous image of the environment is removed afterwards, or when a later load
        finds no container using it.
        """
        previous, _ = self._image_timestamp(tarball.name)
        self._drop_prepared_of(tarball.name)
        try:
            with tarball.path.open("rb") as data:
                self.client.images.load(data)
        except (OSError, docker.errors.DockerException) as exc:
            reason = exc.explanation if isinstance(exc, docker.errors.APIError) else exc
            error = TarballGone if isinstance(exc, FileNotFoundError) else StartError
            raise error(
                f"environment {tarball.name!r}: cannot load {tarball.path}: {reason}; the "
                "previously loaded image is kept"
            ) from None
        current, timestamp = self._image_timestamp(tarball.name)
        if timestamp != tarball.timestamp:
            raise StartError(
                f"environment {tarball.name!r}: {tarball.path} did not contain image "
                f"{image_for(tarball.name)} of that time"
            )
        log.info("loaded environment %s from %s", tarball.name, tarball.path)
        self._drop_prepared_of(tarball.name)
        replaced = previous is not None and current is not None and previous.id != current.id
        self._replaced.drop(self.client, previous.id if replaced and previous else None)

    def inventory(self) -> tuple[list[str], dict[str, int]]:
        """Environment names with a local image, and the tarball timestamp of each image
        that came from a tarball. One listing call: ``images.list()`` would also inspect
        every image, a dozen API calls per heartbeat on a busy node."""
        names: set[str] = set()
        loaded: dict[str, int] = {}
        for summary in self.client.api.images():
            labels = summary.get("Labels") or {}
            for tag in summary.get("RepoTags") or []:
                name = environment_of(tag)
                if not name:
                    continue
                names.add(name)
                if TIMESTAMP_LABEL in labels:
                    with contextlib.suppress(ValueError):
                        loaded[name] = int(labels[TIMESTAMP_LABEL])
        return sorted(names), loaded

    def follow(
        self, handle: Any, skips: tuple[int, int], emits: tuple[Emit, Emit], follow: LogFollow
    ) -> tuple[int, int]:
        """Emit output past the skips until the container ends: from its attachment when
        this Runner started it (see docker_logs), else, or once the attachment ends early,
        from its log. A lost connection to the daemon (a restart of dockerd) is followed
        again from where it stopped, for up to DAEMON_AWAY_SECONDS; a removed container
        ends the follow."""
        sent = list(skips)

        def tracked(index: int) -> Emit:
            def emit(offset: int, data: bytes) -> None:
                emits[index](offset, data)
                sent[index] = max(sent[index], offset + len(data))

            return emit

        trackers = (tracked(0), tracked(1))
        with self._attaching:
            _, attached = self._attached.pop(handle.id, (0, None))
        if attached is not None:
            follow.on_cancel(attached.close)
            try:
                emit_past(attached.blocks(), (sent[0], sent[1]), trackers, follow)
            except OSError as exc:
                log.info("%s: attachment lost (%s)", handle.id, exc)
            finally:
                attached.close()
            if follow.cancelled or self._ended_with(handle, time.time()):
                return sent[0], sent[1]
            log.info("%s: its attachment ended early; following its log", handle.id)
        away_since: float | None = None
        while not follow.cancelled:
            try:
                stream = follow_output(handle)
                follow.on_cancel(stream.close)
                emit_past(stream, (sent[0], sent[1]), trackers, follow)
                if not follow.cancelled:
                    # The daemon's follow often ends at the exit before a last unterminated
                    # line ("printf done"), which its log holds: read that once more.
                    with contextlib.closing(follow_output(handle, follow=False)) as rest:
                        emit_past(rest, (sent[0], sent[1]), trackers, follow)
                return sent[0], sent[1]
            except docker.errors.NotFound:
                break
            except Exception as exc:
                if follow.cancelled:
                    break
                now = time.monotonic()
                away_since = away_since or now
                if now - away_since > DAEMON_AWAY_SECONDS:
                    log.warning("%s: gave up following its output: %s", handle.name, exc)
                    break
                log.info("%s: output follow interrupted (%s); resuming", handle.name, exc)
                self._interrupted.add(handle.id)
                follow.wait(DAEMON_RETRY_SECONDS)
        return sent[0], sent[1]

    def _ended_with(self, container: Any, ended_at: float) -> bool:
        """Did the container's output end with the container, its attachment having ended at
        ``ended_at``? An attachment ends a moment after its container exits (the daemon
        says so a moment later still); one that ended while the container ran on was cut
        (the daemon went away), and the log holds the rest."""
        api = self.client.api
        try:
            result = api.wait(container.id, timeout=ATTACH_END_SECONDS)
            attrs = api.inspect_container(container.id)
        except docker.errors.NotFound:
            return True
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            return False
        with self._attaching:
            self._exited[container.id] = (result, attrs)  # ``wait`` need not ask again
        finished = _parse_docker_time(attrs["State"].get("FinishedAt"))
        return finished is not None and finished.timestamp() <= ended_at + ATTACH_END_SLACK

    def _labels(self) -> list[str]:
        return [f"{LABEL_CLUSTER}={self.cluster_id}", f"{LABEL_RUNNER}={self.runner_name}"]

    def task_states(self) -> dict[int, str]:
        """This runner's task containers and Docker's state of each ("running", "paused",
        "exited", "created", ...), from one listing call."""
        if not self.cluster_id:
            return {}
        found: dict[int, str] = {}
        for summary in self._listed():
            with contextlib.suppress(KeyError, ValueError, TypeError):
                found[int(summary["Labels"][LABEL_TASK])] = str(summary.get("State", ""))
        return found

    def _container_ids(self) -> set[str]:
        """Ids of this runner's containers, from one listing call."""
        return {summary["Id"] for summary in self._listed()}

    def _listed(self) -> list[dict[str, Any]]:
        """This runner's containers as the daemon lists them (one call, all states)."""
        listed: list[dict[str, Any]] = self.client.api.containers(
            all=True, filters={"label": self._labels()}
        )
        return listed

    def tasks(self) -> dict[int, Any]:
        """This runner's task containers, running or exited, by task id."""
        found: dict[int, Any] = {}
        if not self.cluster_id:
            return found
        with self._preparing:
            self._scans += 1
            for held in self.prepared.values():
                held.close()
            self.prepared.clear()
            starting = set(self._starting)
        with self._attaching:  # a new stream: its watchers ask the daemon afresh
            self._just_started.clear()
        released = self._release_log.read()
        for container in self.client.containers.list(
            all=True, ignore_removed=True, filters={"label": self._labels()}
        ):
            try:
                task_id = int(container.labels[LABEL_TASK])
            except (KeyError, ValueError):
                continue
            if self._unstarted_ahead(container, released) and task_id not in starting:
                # Only a hint, which the Host gives again if it still holds.
                self._remove_ahead(container.id)
                continue
            found[task_id] = container
        ids = {container.id for container in found.values()}
        with self._attaching:
            for cid in ids & released.keys():
                self._released_at.setdefault(cid, released[cid])
            for cid in self._released_at.keys() - ids:
                del self._released_at[cid]
        with contextlib.suppress(OSError):
            self._release_log.keep_only(ids)
        return found

    def _unstarted_ahead(self, container: Any, released: dict[str, datetime] | None = None) -> bool:
        """Made ahead for a queued task (``prepare``) and its command never run: never
        started, or held at its gate and not in the release log (``released``: read already)."""
        if not container.labels.get(LABEL_PREPARED):
            return False
        if container.status == "created":
            return True
        if not container.labels.get(LABEL_GATED):
            return False
        with self._attaching:
            if container.id in self._held:
                return True
            if container.id in self._released_at:
                return False
        if released is None:
            released = self._release_log.read()
        if container.id not in released:
            return True
        # Logged, and then the Runner went away before the line was sent: the gate says so.
        return container.status == "exited" and never_released(container)

    def container_name(self, task_id: int) -> str:
        return f"hakuriver-{self.cluster_id}-{self.runner_name}-task-{task_id}"

    def _mounts(self, dispatch: rpb.DispatchCommand) -> list[Mount]:
        paths = self.config.paths
        shared_data = paths.path("shared_dir") / "shared_data"
        local_temp = paths.path("local_temp_dir")
        for directory in (shared_data, local_temp):
            Path(directory).mkdir(parents=True, exist_ok=True)
        mounts = [
            Mount(SHARED_MOUNT_POINT, str(shared_data), type="bind"),
            Mount(LOCAL_TEMP_MOUNT_POINT, str(local_temp), type="bind"),
        ]
        for text in self.config.docker.additional_mounts:
            spec = parse_mount(text)
            mounts.append(
                Mount(spec.container_path, spec.host_path, type="bind", read_only=spec.read_only)
            )
        for m in dispatch.mounts:
            source = real_source(m.host_path)
            mounts.append(Mount(m.container_path, source, type="bind", read_only=m.read_only))
        return mounts

    def _vps_ports(self) -> set[int]:
        """The sshd ports of the VPS containers on this machine (any Runner's: they share
        the host's network), those whose sshd has not bound its port yet among them."""
        found = self.client.api.containers(all=True, filters={"label": LABEL_SSH_PORT})
        return {int(c["Labels"][LABEL_SSH_PORT]) for c in found}

    def _create(
        self, dispatch: rpb.DispatchCommand, ahead: bool = False, gated: bool = False
    ) -> Any:
        """Create the task's container, not started; ``ahead``: labelled as prepared ahead of
        its dispatch; ``gated``: its command behind a gate (start_gate). One API call: the
        image's absence is the daemon's 404 (the API never pulls), and the handle is read
        in full only once the container runs."""
        api = self.client.api
        labels = {
            LABEL_CLUSTER: self.cluster_id,
            LABEL_RUNNER: self.runner_name,
            LABEL_TASK: str(dispatch.task_id),
            LABEL_KIND: TaskKind.COMMAND.value,
            LABEL_ENV: dispatch.container_name,
        }
        if ahead:
            labels[LABEL_PREPARED] = "1"
        if gated:
            labels[LABEL_GATED] = "1"
        # A privileged container sees every GPU of the node (Docker lets it have every
        # device), whatever its device request: CUDA must be told which are its own.
        cuda = dispatch.gpu_ids if dispatch.privileged else range(len(dispatch.gpu_ids))
        variables = {**task_variables(dispatch, cuda), **nvidia_devices(dispatch)}
        environment = {**dict(dispatch.env), **variables}
        command = [dispatch.command, *dispatch.arguments]
        if dispatch.kind == task_pb2.TASK_KIND_VPS:
            port = self.ssh_ports.take(self._vps_ports())
            labels[LABEL_KIND] = TaskKind.VPS.value
            labels[LABEL_SSH_PORT] = str(port)
            # The task's variables are for its sessions, not for sshd and the script that
            # starts it (a PATH or LD_PRELOAD of the user's must not change how they run).
            environment = {
                **variables,
                "HAKURIVER_SSH_KEY": dispatch.ssh_public_key,
                "HAKURIVER_SSH_PORT": str(port),
                "HAKURIVER_SSH_ENVIRONMENT": session_environment(environment),
            }
            command = ["/bin/sh", "-c", VPS_SCRIPT]
        host: dict[str, Any] = {
            "init": True,
            "mounts": self._mounts(dispatch),
            "network_mode": "none" if dispatch.network == task_pb2.TASK_NETWORK_NONE else "host",
            "nano_cpus": int(dispatch.cores * 1e9),
            "privileged": dispatch.privileged,
            "log_config": TASK_LOG,
        }
        if not dispatch.privileged:
            # Raw sockets would let a task on the node's network read all of the node's
            # traffic, loopback included (SSH proxy tickets, the metrics token, other
            # tasks' connections).
            host["cap_drop"] = ["NET_RAW"]
        if dispatch.memory_bytes > 0:
            host["mem_limit"] = dispatch.memory_bytes
            host["memswap_limit"] = dispatch.memory_bytes
        host.update(cpusets(dispatch))
        gpus = [str(g) for g in dispatch.gpu_ids]
        if gpus:
            host["device_requests"] = [DeviceRequest(device_ids=gpus, capabilities=[["gpu"]])]
        try:
            created = api.create_container(
                dispatch.image,
                command=command,
                entrypoint=ENTRYPOINT if gated else None,
                stdin_open=gated,
                name=self.container_name(dispatch.task_id),
                labels=labels,
                environment=environment,
                host_config=api.create_host_config(**host),
            )
        except docker.errors.ImageNotFound:
            raise StartError(
                f"environment {dispatch.container_name!r} is not loaded on runner "
                f"{self.runner_name}: image {dispatch.image} not found"
            ) from None
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise
            raise StartError(f"docker could not create the container: {_why(exc)}") from None
        return self.client.containers.prepare_model({"Id": created["Id"]})

    def prepare(self, dispatch: rpb.DispatchCommand) -> bool:
        """Make a queued task's container ahead of its dispatch: created and, when its image
        allows, started and held at its gate (start_gate), so that its dispatch only lets
        the command run; else created only, and the dispatch starts it. False when there is
        nothing to do: it is prepared already as dispatched, or a container of it exists.
        The Supervisor runs one command per task at a time on a stream; a scan or a load
        may come at any time."""
        held = self.prepared.get(dispatch.task_id)
        if held is not None:
            if held.dispatch == dispatch:
                return False
            self._drop_prepared(dispatch.task_id)
        with self._preparing:
            loads, scans = self._loads_seen, self._scans
        gated = self._may_hold(dispatch, loads)
        try:
            container = self._create(dispatch, ahead=True, gated=gated)
        except docker.errors.APIError:  # 409: a container of the task exists
            return False
        made = Prepared(dispatch, container, loads)
        prepared = self._hold(made) if gated else made
        if prepared is None:
            return False
        with self._preparing:
            kept = (loads, scans) == (self._loads_seen, self._scans)
            if kept:
                self.prepared[dispatch.task_id] = prepared
        if not kept:
            # A load may have changed its image, or a scan forgot what was prepared.
            self._discard(prepared)
        return kept

    def _may_hold(self, dispatch: rpb.DispatchCommand, loads: int) -> bool:
        """Whether the task's container may be held at a gate: its image has no ENTRYPOINT
        (the gate takes its place) nor HEALTHCHECK (asked once per image between
        environment loads), the gate's shell passes on the image's and the task's variables
        as they are (``keeps_environment``), its command is not one the gate would take for
        an option or a variable, and no gate of its image and mounts was found unable to
        start."""
        if not self._gating or self._gate_runs.get(_gate_key(dispatch, loads)) is False:
            return False
        if not keeps_environment(dispatch.env):
            return False
        if dispatch.command.startswith("-") or "=" in dispatch.command:
            # The gate's ``exec`` (and under bash its ``env``) would take it for an
            # option or a variable, where Docker runs it as the program it names.
            return False
        key = (dispatch.image, loads)
        known = self._gateable.get(key)
        if known is None:
            for old in [k for k in list(self._gateable) if k[1] != loads]:  # before a load
                self._gateable.pop(old, None)  # (another prepare may be at it too)
            for stale in [k for k in list(self._gate_runs) if k[1] != loads]:
                self._gate_runs.pop(stale, None)
            try:
                config = self.client.api.inspect_image(dispatch.image).get("Config") or {}
            except docker.errors.DockerException:
                return False  # the create says what is wrong
            image_sets = {str(each).partition("=")[0] for each in config.get("Env") or []}
            # A HEALTHCHECK would run against the gate, and mark the task unhealthy before
            # its command ran.
            checked = ((config.get("Healthcheck") or {}).get("Test") or ["NONE"])[0] != "NONE"
            known = not (config.get("Entrypoint") or checked or not keeps_environment(image_sets))
            self._gateable[key] = known
        return known

    def _hold(self, prepared: Prepared) -> Prepared | None:
        """Start a gated container, attached first (its gate and its output, one
        attachment); None (and nothing left) if the daemon would not."""
        container = prepared.container
        key = _gate_key(prepared.dispatch, prepared.loads)
        gate = None
        try:
            gate = Gate(container)
            with self._attaching:
                self._held.add(container.id)
            container.start()
            up = self._gate_runs.get(key) is True or self._gate_waits(container)
            if up:
                self._gate_runs[key] = True
        except (docker.errors.DockerException, OSError) as exc:
            log.info("task %s: could not hold it ahead (%s)", prepared.dispatch.task_id, exc)
            up = False
        made = replace(prepared, gate=gate)
        if not up:
            if self._without_shell(container):  # prepared unheld from now, with these mounts
                self._gate_runs[key] = False
            self._discard(made)
            return None
        return made

    def _without_shell(self, container: Any) -> bool:
        """Did a held container end because its gate could not start (no /bin/sh: Docker's
        init exits 126 or 127), rather than for this container alone (a scan removed it,
        its memory limit, the daemon)?"""
        try:
            state = self.client.api.inspect_container(container.id)["State"]
        except docker.errors.DockerException:
            return False
        return not state.get("Running") and state.get("ExitCode") in (126, 127)

    def _gate_waits(self, container: Any) -> bool:
        """Wait until a held container's gate is seen waiting for its line (False: it ended,
        or did not show within GATE_UP_SECONDS). Only then can its release run the command
        and nothing else: a container whose gate cannot start (an image without /bin/sh)
        still runs for a moment, and a line sent then would be taken for a release. Asked
        for an image's first held container with a task's own mounts (``_gate_runs``)."""
        deadline = time.monotonic() + GATE_UP_SECONDS
        while True:
            try:
                if waiting(self.client.api.top(container.id)):
                    return True
            except docker.errors.APIError:  # not running
                return False
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def _discard(self, prepared: Prepared) -> None:
        """Remove a prepared container, closing what attaches to it (a held gate then ends
        without running the command)."""
        prepared.close()
        self._remove_ahead(prepared.container.id)

    def _remove_ahead(self, container_id: str) -> None:
        """Remove a container made ahead; a held one is held no more."""
        self._remove_quietly(container_id)
        with self._attaching:
            self._held.discard(container_id)

    def _drop_prepared_of(self, name: str) -> None:
        """Drop the containers prepared from an environment's image (it is being loaded)."""
        with self._preparing:
            self._loads_seen += 1
            stale = [t for t, held in self.prepared.items() if held.dispatch.container_name == name]
        for task_id in stale:
            self._drop_prepared(task_id)

    def _drop_prepared(self, task_id: int) -> None:
        with self._preparing:
            held = self.prepared.pop(task_id, None)
        if held is not None:
            self._discard(held)

    def start(self, dispatch: rpb.DispatchCommand) -> Any:
        """Start the task's container: the one prepared for exactly this dispatch (with no
        load since), else a new one; idempotent by task id (a container of it that was
        started, or created by a dispatch, is adopted)."""
        with self._preparing:
            held = self.prepared.pop(dispatch.task_id, None)
            usable = (
                held is not None and held.dispatch == dispatch and held.loads == self._loads_seen
            )
            if usable:
                self._starting.add(dispatch.task_id)
        container = None
        try:
            if usable and held is not None and held.gate is not None:
                container = self._release(held)
            elif usable and held is not None:
                container = self._start_new(dispatch, held.container)
            elif held is not None:
                self._discard(held)
        finally:
            with self._preparing:
                self._starting.discard(dispatch.task_id)
        if container is not None:
            return container
        for _ in range(2):
            try:
                created = self._create(dispatch)
            except docker.errors.APIError:  # 409: a container of the task exists
                existing = self._existing(dispatch.task_id)
                if existing is None:
                    continue
                log.info("task %s: container already exists, adopting it", dispatch.task_id)
                self._start_if_created(existing)
                return existing
            started = self._start_new(dispatch, created)
            if started is not None:
                return started
        raise StartError(
            "docker could not create the container: a container of the task was in the way"
        )

    def _release(self, held: Prepared) -> Any | None:
        """Let a held container's command run; None (and the container removed) when its
        gate is gone (killed from outside: its attachment ended): the dispatch then makes a
        new container. The release is in the log before the line goes, so that no Runner
        takes it back."""
        container, gate = held.container, held.gate
        ended = gate.ended() if gate is not None else True
        if ended is None:  # cannot be told from the attachment: ask the daemon
            try:
                ended = not self.client.api.inspect_container(container.id)["State"]["Running"]
            except docker.errors.DockerException:
                ended = True
        if ended or gate is None:
            self._discard(held)
            return None
        now = datetime.now(UTC)
        try:
            self._release_log.record(container.id, now)
        except OSError as exc:
            log.warning(
                "task %s: cannot log its release (%s); containers are prepared unheld from now",
                held.dispatch.task_id,
                exc,
            )
            self._gating = False
            self._discard(held)
            return None
        if not gate.release():
            self._discard(held)
            return None
        # Registered once the line went (its follow and watch begin after this returns).
        with self._attaching:
            self._attached[container.id] = (held.dispatch.task_id, gate)
            self._just_started[container.id] = now
            self._released_at[container.id] = now
            self._held.discard(container.id)
        return container

    def _existing(self, task_id: int) -> Any | None:
        """The task's container to adopt; None if there is none (any more). One made ahead
        and never started is not adopted (it may be for another dispatch): it is removed."""
        try:
            existing = self.client.containers.get(self.container_name(task_id))
        except docker.errors.NotFound:
            return None
        if self._unstarted_ahead(existing):
            self._remove_ahead(existing.id)
            return None
        return existing

    def _start_new(self, dispatch: rpb.DispatchCommand, container: Any) -> Any | None:
        """Start a container created for this dispatch, a command task's attached to first
        (see ``follow``); None when it was removed meanwhile (a prepared one a scan took).
        What else fails is the task's start failure."""
        command = dispatch.kind == task_pb2.TASK_KIND_COMMAND
        attached = self._attach(dispatch.task_id, container) if command else None
        # Taken before the start: a quick command can exit (the daemon's FinishedAt) before
        # the start's answer comes back, and a task must not start after it completed.
        starting = datetime.now(UTC)
        try:
            container.start()
            if command:
                with self._attaching:
                    self._just_started[container.id] = starting
        except docker.errors.NotFound:
            self._detach(container.id, attached)
            return None
        except docker.errors.APIError as exc:
            self._detach(container.id, attached)
            if self.config.docker.keep_failed_containers:
                self.kept.add(dispatch.task_id)
            else:
                self._remove_quietly(self.container_name(dispatch.task_id))
            raise StartError(f"docker could not start the container: {_why(exc)}") from None
        return container

    def _attach(self, task_id: int, container: Any) -> Attached | None:
        """Attach to a created container's output; None if the daemon would not (its log
        is followed instead)."""
        try:
            attached = Attached(container)
        except (docker.errors.DockerException, OSError) as exc:
            log.info("%s: could not attach (%s); its log will be followed", container.id, exc)
            return None
        with self._attaching:
            self._attached[container.id] = (task_id, attached)
        return attached

    def _detach(self, container_id: str, attached: Attached | None) -> None:
        if attached is None:
            return
        with self._attaching:
            if self._attached.get(container_id, (0, None))[1] is attached:
                del self._attached[container_id]
        attached.close()

    def detach_unread(self, task_id: int | None = None) -> None:
        """Close the attachments no follow has taken yet: every one when the stream to the
        Host is gone (nobody may read them for a long time, and an unread attachment holds
        its container's writes once the daemon's buffer is full; their output is followed
        from the log when the stream is back), or a task's when it is removed."""
        with self._attaching:
            unread = [cid for cid, (tid, _) in self._attached.items() if task_id in (None, tid)]
            closing = [self._attached.pop(cid)[1] for cid in unread]
        for attached in closing:
            attached.close()

    def _remove_quietly(self, name: str) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            self.client.api.remove_container(name, force=True)

    def _start_if_created(self, container: Any) -> None:
        """Start a container that was created and never started (the Runner stopped in
        between): its task never ran, so this runs it once. Docker would otherwise report
        it exited with code 0."""
        if container.status != "created":
            return
        log.info("%s: created but never started; starting it", container.name)
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise StartError(f"docker could not start the container: {_why(exc)}") from None
        container.reload()

    def state(self, container: Any) -> tuple[str, datetime | None]:
        """As the backend protocol says; a container created but never started is started
        first (see ``_start_if_created``)."""
        with self._attaching:
            started_at = self._just_started.pop(container.id, None)
        if started_at is not None:
            return "running", started_at
        container.reload()
        self._start_if_created(container)
        state = container.attrs["State"]
        status = container.status if container.status in ("running", "paused") else "exited"
        with self._attaching:
            released_at = self._released_at.get(container.id)
        return status, released_at or _parse_docker_time(state.get("StartedAt"))

    def wait(self, container: Any) -> ExitInfo:
        """The container's exit. Waits through a restart of dockerd (which stops it) for
        up to DAEMON_AWAY_SECONDS; a container removed behind the Runner's back ends with
        no exit code and an error saying so."""
        away_since: float | None = None
        with self._attaching:
            known = self._exited.pop(container.id, None)
            self._just_started.pop(container.id, None)
        while True:
            if known is not None:
                result, container.attrs = known
                break
            try:
                result = container.wait()
                container.reload()
                break
            except docker.errors.NotFound:
                return ExitInfo(None, False, None, None, GONE_MESSAGE)
            except Exception as exc:
                now = time.monotonic()
                away_since = away_since or now
                if now - away_since > DAEMON_AWAY_SECONDS:
                    return ExitInfo(
                        None,
                        False,
                        None,
                        None,
                        f"the Docker daemon did not answer: {unreachable(exc)}",
                    )
                log.info("%s: waiting for its exit failed (%s); asking again", container.name, exc)
                self._interrupted.add(container.id)
                time.sleep(DAEMON_RETRY_SECONDS)
        state = container.attrs["State"]
        error = (result.get("Error") or {}).get("Message", "") if result else ""
        if state.get("Status") in ("removing", "dead"):  # ``docker rm -f`` ended it
            error = GONE_MESSAGE
        interrupted = container.id in self._interrupted
        self._interrupted.discard(container.id)
        if interrupted and not error and state.get("ExitCode") != 0:
            error = (
                "the Docker daemon went away while the task ran (a restart of dockerd stops "
                f"its containers); it exited with code {state.get('ExitCode')}"
            )
        with self._attaching:
            released_at = self._released_at.pop(container.id, None)
        return ExitInfo(
            exit_code=int(state.get("ExitCode", result.get("StatusCode", -1))),
            oom_killed=bool(state.get("OOMKilled")),
            started_at=released_at or _parse_docker_time(state.get("StartedAt")),
            finished_at=_parse_docker_time(state.get("FinishedAt")),
            error=error or state.get("Error", ""),
        )

    def last_output(self, container: Any) -> str:
        """The container's last few lines of output, in one line."""
        try:
            text = container.logs(tail=5).decode(errors="replace")
        except docker.errors.DockerException:
            return ""
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())

    def stop(self, container: Any, grace: float) -> None:
        try:
            container.reload()
            if container.status == "paused":
                container.unpause()
            container.stop(timeout=max(0, round(grace)))
        except docker.errors.NotFound:
            raise Gone(GONE_MESSAGE) from None

    def pause(self, container: Any) -> None:
        container.pause()

    def resume(self, container: Any) -> None:
        container.unpause()

    def remove(self, task_id: int) -> None:
        with self._preparing:
            held = self.prepared.pop(task_id, None)
        if held is not None:
            held.close()
            with self._attaching:
                self._held.discard(held.container.id)
        self.detach_unread(task_id)
        if task_id in self.kept:
            log.info("task %s: keeping its failed container for inspection", task_id)
            return
        self._remove_quietly(self.container_name(task_id))
        if self.cluster_id:  # (else no container of this cluster can be listed)
            with contextlib.suppress(OSError, docker.errors.DockerException):
                self._release_log.prune(self._container_ids)
