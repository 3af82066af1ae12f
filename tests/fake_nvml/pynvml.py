"""A stand-in for NVML (the ``pynvml`` module): the one piece of hardware we cannot have here.

Put this directory first on PYTHONPATH of a Runner process and set HAKURIVER_FAKE_GPUS to a
GPU count; the Runner then reports that many GPUs exactly as it would real ones.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any


class FakeNvml:
    def __init__(self, count: int) -> None:
        self.count = count

    def nvmlInit(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54"

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA A100"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle}"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(total=40 * 10**9, used=handle * 10**9)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=50 + handle, memory=10)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 60

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if handle == 0:
            raise RuntimeError("not supported")  # a reading some boards lack: must be "unknown"
        return 180_000

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return 250_000


_instance = FakeNvml(int(os.environ.get("HAKURIVER_FAKE_GPUS", "0")))


def __getattr__(name: str) -> Any:
    return getattr(_instance, name)
