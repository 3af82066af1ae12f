"""A stand-in for NVML (the ``pynvml`` module): the one piece of hardware we cannot have here.

Put this directory first on PYTHONPATH of a Runner process and set HAKURIVER_FAKE_GPUS to a
GPU count; the Runner then reports that many GPUs exactly as it would real ones.
HAKURIVER_FAKE_NVML_LOST names a file that, while it exists, holds the GPU indices that fell
off the bus (comma separated, or ``all`` for the whole driver failing): NVML calls about
them raise, as a real NVML does after an Xid 79. ``hang`` makes every call block until the
file changes, as NVML does on a GPU stuck in a bad state. HAKURIVER_FAKE_MIG names the GPU
indices in MIG mode (comma separated), whose utilisation NVML does not read ("Not Supported").
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    """What the real pynvml raises; its subclasses name the NVML return code."""


class NVMLError_GpuIsLost(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class FakeNvml:
    def __init__(self, count: int, lost_file: str | None = None, mig: Iterable[int] = ()) -> None:
        self.count = count
        self.lost_file = Path(lost_file) if lost_file else None
        self.mig = set(mig)

    def _lost(self) -> set[int] | None:
        """Indices that fell off the bus now; None for the whole driver failing."""
        text = self._fault()
        while text == "hang":
            time.sleep(0.05)
            text = self._fault()
        if text == "all":
            return None
        return {int(part) for part in text.split(",") if part.strip()}

    def _fault(self) -> str:
        if self.lost_file is None or not self.lost_file.exists():
            return ""
        return self.lost_file.read_text().strip()

    def _check(self, index: int | None = None) -> None:
        lost = self._lost()
        if lost is None or (index is not None and index in lost):
            raise NVMLError_GpuIsLost("GPU is lost")

    def nvmlInit(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54"

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._check(index)
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        self._check(handle)
        return b"NVIDIA A100"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        self._check(handle)
        return f"GPU-{handle}"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(total=40 * 10**9, used=handle * 10**9)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        if handle in self.mig:
            raise NVMLError_NotSupported("Not Supported")
        return SimpleNamespace(gpu=50 + handle, memory=10)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 60

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if handle == 0:
            raise RuntimeError("not supported")  # a reading some boards lack: must be "unknown"
        return 180_000

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return 250_000


_instance = FakeNvml(
    int(os.environ.get("HAKURIVER_FAKE_GPUS", "0")),
    os.environ.get("HAKURIVER_FAKE_NVML_LOST"),
    [int(part) for part in os.environ.get("HAKURIVER_FAKE_MIG", "").split(",") if part.strip()],
)


def __getattr__(name: str) -> Any:
    return getattr(_instance, name)
