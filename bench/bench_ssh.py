"""SSH proxy throughput: a bulk copy through the Host's proxy vs directly to the same sshd.

Starts a real cluster and a VPS (hakuriver/hakuriver-sshd:base), then streams N bytes from
the VPS to the client over SSH, once connected directly to sshd on loopback and once through
the proxy (Host -> the Runner's connection to the proxy port -> sshd), each proxied
connection opened with a one-time ticket from SshService.CreateSshTicket (asyncssh as the
client). Then as users connect: OpenSSH's ssh directly, and with ``hakuriver.ssh
--proxy-command`` as its ProxyCommand (which gets the ticket and relays ssh's stdin and
stdout). Prints the rates, their ratios to direct, and the CPU the Host, the Runner, the
client and its children used in each.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import asyncssh
import psutil

from hakuriver_common.proto.hakuriver.v1 import (
    ssh_service_pb2 as spb,
    ssh_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
)
from tests.e2e.harness import SSHD_ENV, ProcessCluster, running_cluster

BYTES = int(os.environ.get("HAKURIVER_BENCH_SSH_BYTES", str(200 * 10**6)))
ROUNDS = 3


def proxied_socket(cluster: ProcessCluster, task_id: int) -> socket.socket:
    """A tunnel through the proxy port, opened with a one-time ticket as hakuriver.ssh does."""
    assert cluster.channel is not None
    ticket = (
        ssh_service_pb2_grpc.SshServiceStub(cluster.channel)
        .CreateSshTicket(spb.CreateSshTicketRequest(task_id=task_id), timeout=10)
        .ticket
    )
    sock = socket.create_connection(("127.0.0.1", cluster.ssh_proxy_port))
    sock.sendall(f"TICKET {ticket}\n".encode())
    answer = b""
    while not answer.endswith(b"\n"):
        answer += sock.recv(1)
    assert answer == b"SUCCESS\n", answer
    return sock


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


class Cpu:
    """CPU of the Host, the Runner and this process (the SSH client) over one copy: where
    a proxied byte's cost goes. (sshd's own is gone with its connection's process.)"""

    def __init__(self, cluster: ProcessCluster) -> None:
        assert cluster.host is not None
        self.procs = {
            "Host": psutil.Process(cluster.host.pid),
            "Runner": psutil.Process(next(iter(cluster.runners.values())).pid),
            "client": psutil.Process(),
        }

    def sample(self) -> dict[str, float]:
        cpu = {name: cpu_seconds(proc) for name, proc in self.procs.items()}
        # OpenSSH and its ProxyCommand: children of this process, counted once reaped.
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu["children"] = children.ru_utime + children.ru_stime
        return cpu

    def add(self, before: dict[str, float], elapsed: float) -> str:
        after = self.sample()
        return ", ".join(f"{n} {100 * (after[n] - before[n]) / elapsed:.0f}%" for n in after)


async def copy_rate(key: asyncssh.SSHKey, **where: object) -> float:
    async with asyncssh.connect(
        username="root", client_keys=[key], known_hosts=None, **where
    ) as conn:  # type: ignore[arg-type]
        start = time.perf_counter()
        process = await conn.create_process(f"head -c {BYTES} /dev/zero", encoding=None)
        received = 0
        while chunk := await process.stdout.read(1 << 20):
            received += len(chunk)
        await process.wait()
        elapsed = time.perf_counter() - start
    assert received == BYTES, received
    return BYTES / elapsed


async def measure(cluster: ProcessCluster, task_id: int, port: int, key: asyncssh.SSHKey) -> None:
    cpu = Cpu(cluster)
    rates: dict[str, list[tuple[float, str]]] = {"direct": [], "proxied": []}
    for _ in range(ROUNDS):
        for name in rates:
            before, start = cpu.sample(), time.perf_counter()
            if name == "direct":
                rate = await copy_rate(key, host="127.0.0.1", port=port)
            else:
                rate = await copy_rate(key, sock=proxied_socket(cluster, task_id))
            rates[name].append((rate, cpu.add(before, time.perf_counter() - start)))
    (direct, direct_cpu), (proxied, proxied_cpu) = max(rates["direct"]), max(rates["proxied"])
    print(f"ssh bulk copy of {BYTES / 1e6:.0f} MB, best of {ROUNDS} (CPU of a core, that round):")
    print(f"  direct to sshd on loopback   {direct / 1e6:8.1f} MB/s   {direct_cpu}")
    print(f"  through the Host's proxy     {proxied / 1e6:8.1f} MB/s   {proxied_cpu}")
    print(f"  ratio proxied/direct         {proxied / direct:8.2f}")


def openssh_rate(argv: list[str]) -> float:
    """OpenSSH's ``ssh`` copying BYTES from the VPS to a pipe."""
    start = time.perf_counter()
    with subprocess.Popen([*argv, f"head -c {BYTES} /dev/zero"], stdout=subprocess.PIPE) as ssh:
        assert ssh.stdout is not None
        received = 0
        while chunk := ssh.stdout.read(1 << 20):
            received += len(chunk)
    assert ssh.returncode == 0 and received == BYTES, (ssh.returncode, received)
    return BYTES / (time.perf_counter() - start)


def measure_openssh(cluster: ProcessCluster, task_id: int, port: int, key_file: Path) -> None:
    """As users connect: OpenSSH with ``hakuriver.ssh --proxy-command`` as its ProxyCommand
    (which gets the ticket and relays ssh's stdin and stdout), against OpenSSH direct."""
    if shutil.which("ssh") is None:
        print("  OpenSSH: no ssh(1) on this machine, not measured")
        return
    os.environ["HAKURIVER_CONFIG"] = str(cluster.config_path)
    tool = " ".join([*cluster.cli_argv("ssh"), "--proxy-command"])
    options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"]
    ssh = ["ssh", "-i", str(key_file), "-o", "UserKnownHostsFile=/dev/null", *options]
    cpu = Cpu(cluster)
    paths = {
        "direct": [*ssh, "-p", str(port), "root@127.0.0.1"],
        "tool": [*ssh, "-o", f"ProxyCommand={tool} %h", f"root@{task_id}"],
    }
    rates: dict[str, list[tuple[float, str]]] = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, argv in paths.items():
            before, start = cpu.sample(), time.perf_counter()
            rate = openssh_rate(argv)
            rates[name].append((rate, cpu.add(before, time.perf_counter() - start)))
    (direct, direct_cpu), (through, through_cpu) = max(rates["direct"]), max(rates["tool"])
    print("  as users connect, OpenSSH's ssh (its CPU and hakuriver.ssh's as 'children'):")
    print(f"  direct to sshd on loopback   {direct / 1e6:8.1f} MB/s   {direct_cpu}")
    print(f"  ProxyCommand hakuriver.ssh   {through / 1e6:8.1f} MB/s   {through_cpu}")
    print(f"  ratio through/direct         {through / direct:8.2f}")


def main() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    with tempfile.TemporaryDirectory() as tmp, running_cluster(Path(tmp)) as cluster:
        reply = cluster.tasks.SubmitTask(
            tpb.SubmitTaskRequest(
                kind=task_pb2.TASK_KIND_VPS,
                container_name=SSHD_ENV,
                ssh_public_key=key.export_public_key().decode(),
            ),
            timeout=10,
        )
        task_id = reply.tasks[0].task_id
        task = cluster.wait_status(task_id, {task_pb2.TASK_STATUS_RUNNING}, timeout=60)
        asyncio.run(measure(cluster, task_id, task.ssh_port, key))
        key_file = Path(tmp) / "id_ed25519"
        key_file.write_bytes(key.export_private_key())
        key_file.chmod(0o600)
        measure_openssh(cluster, task_id, task.ssh_port, key_file)


if __name__ == "__main__":
    main()
