"""What runners report: NUMA topology from sysfs fixtures, GPUs through a fake NVML."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from hakuriver_runner.system_info import (
    CpuMeter,
    GpuProbe,
    NumaInfo,
    parse_cpulist,
    read_numa_topology,
    sample_health,
)
from tests.fake_nvml.pynvml import FakeNvml

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_parse_cpulist() -> None:
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist("") == []


def test_numa_topology_from_sysfs_with_several_nodes() -> None:
    nodes = read_numa_topology(FIXTURES / "numa")
    assert nodes == [
        NumaInfo(0, (0, 1, 2, 3, 8, 9, 10, 11), 16318412 * 1024),
        NumaInfo(1, (4, 5, 6, 7, 12, 13, 14, 15), 16512000 * 1024),
        NumaInfo(10, (), 0),
    ]


def test_no_numa_directory_means_no_nodes(tmp_path: Path) -> None:
    assert read_numa_topology(tmp_path / "missing") == []


class BrokenNvml(FakeNvml):
    def nvmlInit(self) -> None:
        raise OSError("libnvidia-ml.so.1 not found")


def test_gpus_reported_through_nvml() -> None:
    gpus = GpuProbe(FakeNvml(2)).sample()
    assert [(g.index, g.uuid, g.name, g.driver_version) for g in gpus] == [
        (0, "GPU-0", "NVIDIA A100", "550.54"),
        (1, "GPU-1", "NVIDIA A100", "550.54"),
    ]
    assert gpus[1].memory_used_bytes == 10**9 and gpus[1].utilization_gpu_percent == 51
    assert gpus[0].temperature_celsius == 60
    assert not gpus[0].HasField("power_draw_watts")  # unsupported reading: unknown, not an error
    assert gpus[0].power_limit_watts == 250.0


def test_a_gpu_in_mig_mode_reads_its_utilisation_as_unknown() -> None:
    """NVML reads no utilisation for a GPU in MIG mode ("Not Supported"): it was reported
    as 0 %, an idle GPU, while its instances ran tasks."""
    idle, mig = GpuProbe(FakeNvml(2, mig=[1])).sample()
    assert (idle.utilization_unknown, idle.utilization_gpu_percent) == (False, 50)
    assert mig.utilization_unknown
    assert mig.memory_total_bytes == 40 * 10**9  # its other readings are read as ever


def test_absent_nvml_means_no_gpus() -> None:
    probe = GpuProbe(BrokenNvml(1))
    assert probe.available is False
    assert probe.sample() == []


def test_a_gpu_nvml_cannot_read_is_left_out_and_a_failing_nvml_reports_none(
    tmp_path: Path,
) -> None:
    lost = tmp_path / "lost"
    probe = GpuProbe(FakeNvml(4, str(lost)))
    lost.write_text("1")
    assert [g.index for g in probe.sample()] == [0, 2, 3]  # NVML's own indices, with a gap
    lost.write_text("all")
    assert probe.sample() == []
    lost.unlink()
    assert [g.index for g in probe.sample()] == [0, 1, 2, 3]


def test_cpu_is_read_since_the_last_sample_whichever_thread_takes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Runner samples on any thread of its pool: psutil.cpu_percent(None), which keeps
    its last reading per thread, said 0.0 on each thread's first sample (a busy node read
    as idle in health and /metrics), and otherwise averaged since that thread's last one."""
    shape = type(psutil.cpu_times())
    now: list[Any] = []

    def times(busy: float, idle: float) -> Any:
        values = {"user": busy, "idle": idle}
        return shape(*(values.get(field, 0.0) for field in shape._fields))

    monkeypatch.setattr(psutil, "cpu_times", lambda percpu=False: now[-1])
    now.append(times(busy=100, idle=100))
    cpu = CpuMeter()
    readings = []
    with ThreadPoolExecutor(1) as first, ThreadPoolExecutor(1) as second:
        for thread, (busy, idle) in zip(
            (first, second, first), ((150, 150), (250, 150), (250, 250)), strict=True
        ):
            now.append(times(busy, idle))
            readings.append(thread.submit(sample_health, cpu, []).result().cpu_percent)
    assert readings == [50.0, 100.0, 0.0]
