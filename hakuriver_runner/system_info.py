"""What the runner reports about its host: cores, memory, NUMA, GPUs and load."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from google.protobuf.timestamp_pb2 import Timestamp

from hakuriver_common.proto.hakuriver.v1 import node_pb2

log = logging.getLogger(__name__)

SYS_NODE_DIR = Path("/sys/devices/system/node")


def parse_cpulist(text: str) -> list[int]:
    """Parse a kernel cpulist such as ``0-3,8,10-11``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            start, end = part.split("-", 1)
            cpus.extend(range(int(start), int(end) + 1))
        else:
            cpus.append(int(part))
    return cpus


def _node_memory_bytes(meminfo: Path) -> int:
    for line in meminfo.read_text().splitlines():
        # "Node 0 MemTotal:       16318412 kB"
        if "MemTotal:" in line:
            return int(line.split()[-2]) * 1024
    return 0


@dataclass(frozen=True)
class NumaInfo:
    id: int
    cpus: tuple[int, ...]
    memory_bytes: int


def read_numa_topology(root: Path = SYS_NODE_DIR) -> list[NumaInfo]:
    """NUMA nodes from sysfs; empty when the kernel exposes none."""
    nodes: list[NumaInfo] = []
    if not root.is_dir():
        return nodes
    for path in sorted(root.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        cpulist = path / "cpulist"
        meminfo = path / "meminfo"
        nodes.append(
            NumaInfo(
                id=int(path.name[4:]),
                cpus=tuple(parse_cpulist(cpulist.read_text())) if cpulist.exists() else (),
                memory_bytes=_node_memory_bytes(meminfo) if meminfo.exists() else 0,
            )
        )
    return nodes


class GpuProbe:
    """GPUs through NVML. Absent NVML (no driver, no GPU) is normal: no GPUs."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self.available = False
        self._problem = ""
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self.available = True
        except Exception as exc:
            log.info("NVML not available (%s): reporting no GPUs", exc.__class__.__name__)

    def _optional(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            return None

    def sample(self) -> list[node_pb2.Gpu]:
        """Every GPU NVML can read now. A failing NVML (the driver gone, a GPU fallen off
        the bus) is logged, not raised: the heartbeat and registration that sample must go
        on, or the whole node, CPU tasks and all, would drop off the cluster."""
        if not self.available:
            return []
        nv = self._nvml
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception as exc:
            self._note_problem(f"NVML cannot count GPUs ({_nvml_error(exc)}): reporting none")
            return []
        driver = self._optional(nv.nvmlSystemGetDriverVersion) or ""
        gpus: list[node_pb2.Gpu] = []
        lost: list[str] = []
        for index in range(count):
            try:
                gpus.append(self._read_gpu(index, driver))
            except Exception as exc:
                lost.append(f"GPU {index} ({_nvml_error(exc)})")
        self._note_problem(f"NVML cannot read {', '.join(lost)}: not reported" if lost else "")
        return gpus

    def _note_problem(self, problem: str) -> None:
        """Log a change of NVML's trouble once, not every heartbeat."""
        if problem != self._problem:
            if problem:
                log.warning("%s", problem)
            else:
                log.info("NVML reads every GPU again")
        self._problem = problem

    def _read_gpu(self, index: int, driver: Any) -> node_pb2.Gpu:
        """One GPU's readings; raises when NVML cannot even name it."""
        nv = self._nvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        name = nv.nvmlDeviceGetName(handle)
        uuid = nv.nvmlDeviceGetUUID(handle)
        memory = self._optional(nv.nvmlDeviceGetMemoryInfo, handle)
        util = self._optional(nv.nvmlDeviceGetUtilizationRates, handle)
        temp = self._optional(nv.nvmlDeviceGetTemperature, handle, 0)
        power = self._optional(nv.nvmlDeviceGetPowerUsage, handle)
        limit = self._optional(nv.nvmlDeviceGetEnforcedPowerLimit, handle)
        return node_pb2.Gpu(
            index=index,
            uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
            name=name.decode() if isinstance(name, bytes) else str(name),
            driver_version=driver.decode() if isinstance(driver, bytes) else str(driver),
            memory_total_bytes=int(memory.total) if memory else 0,
            memory_used_bytes=int(memory.used) if memory else 0,
            utilization_gpu_percent=float(util.gpu) if util else 0.0,
            utilization_memory_percent=float(util.memory) if util else 0.0,
            utilization_unknown=util is None,  # NVML reads none in MIG mode: not idle
            temperature_celsius=float(temp) if temp is not None else None,
            power_draw_watts=power / 1000.0 if power is not None else None,
            power_limit_watts=limit / 1000.0 if limit is not None else None,
        )


def _nvml_error(exc: Exception) -> str:
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


def _temperatures() -> tuple[float | None, float | None]:
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return None, None
    readings = [entry.current for entries in sensors.values() for entry in entries if entry.current]
    if not readings:
        return None, None
    return sum(readings) / len(readings), max(readings)


class CpuMeter:
    """The machine's CPU utilisation between one reading and the next, whichever thread
    reads. psutil.cpu_percent(None) keeps its last reading per thread: on the Runner's pool
    it answered a meaningless 0.0 on each thread's first sample (a busy node read as idle
    in health and /metrics) and otherwise the average since that thread's last sample,
    however long before."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = psutil.cpu_times()

    def percent(self) -> float:
        with self._lock:
            before, self._last = self._last, psutil.cpu_times()
            now = self._last
        total = _cpu_total(now) - _cpu_total(before)
        idle = _cpu_idle(now) - _cpu_idle(before)
        if total <= 0:
            return 0.0
        return round(min(100.0, max(0.0, 100.0 * (total - idle) / total)), 1)


def _cpu_total(times: Any) -> float:
    """All CPU time; Linux counts guest time in user and nice already."""
    return float(sum(times)) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def _cpu_idle(times: Any) -> float:
    return float(times.idle) + getattr(times, "iowait", 0.0)


def sample_health(cpu: CpuMeter, gpus: list[node_pb2.Gpu]) -> node_pb2.Health:
    """One health sample with GPU readings taken apart (``GpuReadings``); blocking (reads
    /proc and /sys): call off the event loop."""
    memory = psutil.virtual_memory()
    avg_temp, max_temp = _temperatures()
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return node_pb2.Health(
        sampled_at=stamp,
        cpu_percent=cpu.percent(),
        memory_percent=memory.percent,
        memory_used_bytes=memory.total - memory.available,
        memory_total_bytes=memory.total,
        current_avg_temp=avg_temp,
        current_max_temp=max_temp,
        gpus=gpus,
    )


def usable_cpus() -> list[int]:
    """CPU ids this process may run on (cgroup/cpuset aware); tasks are pinned within them."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(psutil.cpu_count(logical=True) or 1))


def total_memory_bytes() -> int:
    return int(psutil.virtual_memory().total)
