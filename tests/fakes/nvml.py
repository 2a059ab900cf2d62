"""A fake NVML module: the subset of pynvml the NVML probe uses, with stateful GPUs.

``FakeNvml`` instances stand in for the ``pynvml`` module (functions and constants as
attributes, ``NVMLError`` with ``.value`` codes as in pynvml).  Each ``FakeGpu`` advances
its energy counter on every read, can be told that a function is not supported, and can
fall off the bus (``lost = True``) so the probe sees ``NVML_ERROR_GPU_IS_LOST``.

The setters greenmon/hardware/nvml.py uses (power limit, locked and application clocks) keep
their state on the ``FakeGpu``: a power limit outside the constraints is refused with
``NVML_ERROR_INVALID_ARGUMENT``; locked clocks snap to the nearest supported clock, as the
driver does, and the running clock follows; ``no_permission = True`` refuses every setter.
``file_backed()`` keeps that state in the JSON file named by ``GREENMON_FAKE_NVML_STATE``
so a test can look at a GPU that a ``greenmon`` subprocess changed (plan key
``[hardware] nvml_module = "tests.fakes.nvml:file_backed"``).  What this fake shares with
the amdsmi one is in tests/fakes/gpu_library.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.fakes import gpu_library
from tests.fakes.gpu_library import FakeGpuLibrary

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
    # when set, the energy counter / the power readings change only once per
    # this many seconds (of time.monotonic), like a driver that refreshes them slowly.
    energy_update_period_s: float | None = None
    power_update_period_s: float | None = None
    # -- settable state (greenmon/hardware/nvml.py) --
    power_limit_min_mw: int = 100_000
    power_limit_max_mw: int = 350_000
    supported_memory_clocks_mhz: list[int] = field(default_factory=lambda: [9501, 5001, 810])
    # 210, 225, ..., 1410 MHz: 1400 is not one of them, so a lock at 1400 runs at 1395/1410.
    supported_graphics_clocks_mhz: list[int] = field(
        default_factory=lambda: list(range(210, 1411, 15))
    )
    default_sm_clock_mhz: int = 1410
    default_memory_clock_mhz: int = 9501
    locked_sm_clocks_mhz: list[int] | None = None
    locked_memory_clocks_mhz: list[int] | None = None
    applications_clocks_mhz: list[int] = field(default_factory=lambda: [9501, 1410])  # mem, sm
    no_permission: bool = False
    # pids of the processes running compute work on this GPU
    compute_pids: list[int] = field(default_factory=list)
    # pid -> SM utilisation (%) that nvmlDeviceGetProcessUtilization reports for it (no
    # entry: the driver has no samples for the process)
    process_sm_percent: dict[int, int] = field(default_factory=dict)
    setter_calls: list[str] = field(default_factory=list)


def _nearest(value: int, supported: list[int]) -> int:
    return min(supported, key=lambda c: (abs(c - value), c))


def _refreshes(period_s: float) -> int:
    return int(time.monotonic() / period_s)


def _power_mw(gpu: FakeGpu) -> int:
    """The power reading: constant, or stepping through 7 levels once per update period."""
    if gpu.power_update_period_s is None:
        return gpu.power_mw
    return gpu.power_mw + 100 * (_refreshes(gpu.power_update_period_s) % 7)


class FakeNvml(FakeGpuLibrary[FakeGpu]):
    """Pass an instance where the probe takes the NVML module."""

    NVMLError = NVMLError
    # greenmon/hardware/nvml.py skips its root / CAP_SYS_ADMIN check for this module.
    GREENMON_FAKE_PRIVILEGED = True
    NOT_INITIALISED = NVML_ERROR_UNINITIALIZED
    NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        init_error: int | None = None,
        state_path: Path | None = None,
    ) -> None:
        constants = {name: value for name, value in globals().items() if name.startswith("NVML_")}
        super().__init__(gpus, constants=constants, init_error=init_error, state_path=state_path)

    def _error(self, code: int) -> Exception:
        return NVMLError(code)

    def _refusal(self, gpu: FakeGpu) -> int | None:
        return NVML_ERROR_GPU_IS_LOST if gpu.lost else None

    # -- the pynvml subset ---------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._start()

    def nvmlShutdown(self) -> None:
        self._stop()

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
        if gpu.energy_update_period_s is not None:
            return gpu.energy_mj + gpu.energy_step_mj * _refreshes(gpu.energy_update_period_s)
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
                    value=SimpleNamespace(uiVal=_power_mw(gpu) + 1 if ok else 0),
                )
            )
        return out

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        return _power_mw(self._gpu(handle, "nvmlDeviceGetPowerUsage"))

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

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list[Any]:
        gpu = self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=pid, usedGpuMemory=2**30) for pid in gpu.compute_pids]

    def nvmlDeviceGetProcessUtilization(self, handle: FakeGpu, last_seen_us: int) -> list[Any]:
        """One sample per process, stamped now (NOT_FOUND when there are none, as NVML)."""
        gpu = self._gpu(handle, "nvmlDeviceGetProcessUtilization")
        if not gpu.process_sm_percent:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        now_us = time.monotonic_ns() // 1000
        return [
            SimpleNamespace(pid=pid, timeStamp=now_us, smUtil=sm, memUtil=0, encUtil=0, decUtil=0)
            for pid, sm in gpu.process_sm_percent.items()
        ]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeGpu) -> list[Any]:
        self._gpu(handle, "nvmlDeviceGetGraphicsRunningProcesses")
        return []

    # -- the setters (and their getters) ---------------------------------------------------
    def _setter(self, handle: Any, function: str) -> FakeGpu:
        gpu = self._gpu(handle, function)
        if gpu.no_permission:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)
        gpu.setter_calls.append(function)
        return gpu

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerManagementLimit").power_limit_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: FakeGpu) -> tuple[int, int]:
        gpu = self._gpu(handle, "nvmlDeviceGetPowerManagementLimitConstraints")
        return gpu.power_limit_min_mw, gpu.power_limit_max_mw

    def nvmlDeviceSetPowerManagementLimit(self, handle: FakeGpu, limit_mw: int) -> None:
        gpu = self._setter(handle, "nvmlDeviceSetPowerManagementLimit")
        if not gpu.power_limit_min_mw <= limit_mw <= gpu.power_limit_max_mw:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu.power_limit_mw = int(limit_mw)
        self._save()

    def nvmlDeviceGetSupportedMemoryClocks(self, handle: FakeGpu) -> list[int]:
        return list(
            self._gpu(handle, "nvmlDeviceGetSupportedMemoryClocks").supported_memory_clocks_mhz
        )

    def nvmlDeviceGetSupportedGraphicsClocks(self, handle: FakeGpu, memory_mhz: int) -> list[int]:
        gpu = self._gpu(handle, "nvmlDeviceGetSupportedGraphicsClocks")
        if memory_mhz not in gpu.supported_memory_clocks_mhz:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return list(gpu.supported_graphics_clocks_mhz)

    def nvmlDeviceSetGpuLockedClocks(self, handle: FakeGpu, min_mhz: int, max_mhz: int) -> None:
        gpu = self._setter(handle, "nvmlDeviceSetGpuLockedClocks")
        if min_mhz > max_mhz:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        supported = gpu.supported_graphics_clocks_mhz
        gpu.locked_sm_clocks_mhz = [_nearest(min_mhz, supported), _nearest(max_mhz, supported)]
        gpu.sm_clock_mhz = gpu.locked_sm_clocks_mhz[1]
        self._save()

    def nvmlDeviceResetGpuLockedClocks(self, handle: FakeGpu) -> None:
        gpu = self._setter(handle, "nvmlDeviceResetGpuLockedClocks")
        gpu.locked_sm_clocks_mhz = None
        gpu.sm_clock_mhz = gpu.default_sm_clock_mhz
        self._save()

    def nvmlDeviceSetMemoryLockedClocks(self, handle: FakeGpu, min_mhz: int, max_mhz: int) -> None:
        gpu = self._setter(handle, "nvmlDeviceSetMemoryLockedClocks")
        supported = gpu.supported_memory_clocks_mhz
        gpu.locked_memory_clocks_mhz = [_nearest(min_mhz, supported), _nearest(max_mhz, supported)]
        gpu.memory_clock_mhz = gpu.locked_memory_clocks_mhz[1]
        self._save()

    def nvmlDeviceResetMemoryLockedClocks(self, handle: FakeGpu) -> None:
        gpu = self._setter(handle, "nvmlDeviceResetMemoryLockedClocks")
        gpu.locked_memory_clocks_mhz = None
        gpu.memory_clock_mhz = gpu.default_memory_clock_mhz
        self._save()

    def nvmlDeviceGetApplicationsClock(self, handle: FakeGpu, clock: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetApplicationsClock")
        mem, sm = gpu.applications_clocks_mhz
        return sm if clock == NVML_CLOCK_SM else mem

    def nvmlDeviceSetApplicationsClocks(self, handle: FakeGpu, mem_mhz: int, sm_mhz: int) -> None:
        gpu = self._setter(handle, "nvmlDeviceSetApplicationsClocks")
        if mem_mhz not in gpu.supported_memory_clocks_mhz or (
            sm_mhz not in gpu.supported_graphics_clocks_mhz
        ):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu.applications_clocks_mhz = [int(mem_mhz), int(sm_mhz)]
        self._save()

    def nvmlDeviceResetApplicationsClocks(self, handle: FakeGpu) -> None:
        gpu = self._setter(handle, "nvmlDeviceResetApplicationsClocks")
        gpu.applications_clocks_mhz = [gpu.default_memory_clock_mhz, gpu.default_sm_clock_mhz]
        self._save()


STATE_ENV = "GREENMON_FAKE_NVML_STATE"


def load_state(path: Path) -> list[FakeGpu]:
    return gpu_library.load_gpus(path, FakeGpu)


def file_backed() -> FakeNvml:
    """A FakeNvml whose GPUs live in $GREENMON_FAKE_NVML_STATE (one GPU when it is new)."""
    return gpu_library.file_backed(
        STATE_ENV,
        FakeGpu,
        lambda: FakeGpu("GPU-33333333-aaaa-bbbb-cccc-000000000000"),
        lambda gpus, path: FakeNvml(gpus, state_path=path),
    )


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu("GPU-11111111-aaaa-bbbb-cccc-000000000000"),
            FakeGpu("GPU-22222222-aaaa-bbbb-cccc-000000000000", energy_step_mj=900),
        ]
    )
