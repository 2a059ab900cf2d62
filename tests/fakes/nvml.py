"""A fake NVML module: the subset of pynvml the NVML probe uses, with stateful GPUs.

``FakeNvml`` instances stand in for the ``pynvml`` module (functions and constants as
attributes, ``NVMLError`` with ``.value`` codes as in pynvml).  Each ``FakeGpu`` advances
its energy counter on every read, can be told that a function is not supported, and can
fall off the bus (``lost = True``) so the probe sees ``NVML_ERROR_GPU_IS_LOST``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_FI_DEV_POWER_INSTANT = 186
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_TEMPERATURE_GPU = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1


class NVMLError(Exception):
    """Like pynvml.NVMLError: ``value`` is the NVML return code."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return f"NVML error {self.value}"


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA Fake 24GB"
    # energy added per nvmlDeviceGetTotalEnergyConsumption call (mJ)
    energy_step_mj: int = 1500
    energy_mj: int = 10_000_000
    power_mw: int = 75_000
    power_limit_mw: int = 300_000
    memory_total_bytes: int = 24 * 2**30
    memory_used_bytes: int = 6 * 2**30
    util_gpu_percent: int = 40
    util_memory_percent: int = 15
    sm_clock_mhz: int = 1410
    memory_clock_mhz: int = 9501
    temperature_c: int = 55
    # pynvml function names that fail with NVML_ERROR_NOT_SUPPORTED for this GPU
    not_supported: set[str] = field(default_factory=set)
    has_instant_power_field: bool = True
    lost: bool = False
    energy_reads: int = 0


class FakeNvml:
    """Pass an instance where the probe takes the NVML module."""

    NVMLError = NVMLError

    def __init__(self, gpus: list[FakeGpu], *, init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.initialised = False
        self.shutdowns = 0
        self.calls = 0
        for name, value in globals().items():
            if name.startswith("NVML_"):
                setattr(self, name, value)

    # -- helpers -------------------------------------------------------------------------
    def _gpu(self, handle: Any, function: str) -> FakeGpu:
        self.calls += 1
        if not self.initialised:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        gpu: FakeGpu = handle
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if function in gpu.not_supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu

    # -- the pynvml subset ---------------------------------------------------------------
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeGpu:
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            if gpu.uuid == text:
                return gpu
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetIndex(self, handle: FakeGpu) -> int:
        return self.gpus.index(handle)

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTotalEnergyConsumption")
        gpu.energy_reads += 1
        gpu.energy_mj += gpu.energy_step_mj
        return gpu.energy_mj

    def nvmlDeviceGetFieldValues(self, handle: FakeGpu, field_ids: list[int]) -> list[Any]:
        gpu = self._gpu(handle, "nvmlDeviceGetFieldValues")
        out: list[Any] = []
        for field_id in field_ids:
            ok = field_id == NVML_FI_DEV_POWER_INSTANT and gpu.has_instant_power_field
            out.append(
                SimpleNamespace(
                    fieldId=field_id,
                    nvmlReturn=NVML_SUCCESS if ok else NVML_ERROR_NOT_SUPPORTED,
                    valueType=NVML_VALUE_TYPE_UNSIGNED_INT,
                    value=SimpleNamespace(uiVal=gpu.power_mw + 1 if ok else 0),
                )
            )
        return out

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=gpu.util_gpu_percent, memory=gpu.util_memory_percent)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(
            total=gpu.memory_total_bytes,
            used=gpu.memory_used_bytes,
            free=gpu.memory_total_bytes - gpu.memory_used_bytes,
        )

    def nvmlDeviceGetClockInfo(self, handle: FakeGpu, clock: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetClockInfo")
        return gpu.sm_clock_mhz if clock == NVML_CLOCK_SM else gpu.memory_clock_mhz

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:
        return self._gpu(handle, "nvmlDeviceGetTemperature").temperature_c


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu("GPU-11111111-aaaa-bbbb-cccc-000000000000"),
            FakeGpu("GPU-22222222-aaaa-bbbb-cccc-000000000000", energy_step_mj=900),
        ]
    )
