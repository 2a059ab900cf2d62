"""A fake amdsmi module: the subset of AMD SMI's Python API greenmon uses, with stateful GPUs.

Same shape as the real ``amdsmi`` package (7.x): module-level functions taking a processor
handle, dicts as results (``"N/A"`` where the hardware has no value), and
``AmdSmiLibraryException`` carrying an error code (``get_error_code()``).

Each ``FakeAmdGpu`` draws a known power on the fake's own clock (``FakeAmdsmi.now_s``,
advanced by ``sleep(seconds)`` and by ``seconds_per_read`` at every energy read), so the
energy its counter must show between two reads is known.  ``log`` keeps every energy
read as the fake returned it (raw accumulator, resolution), so a test can compare the
probe's figures with what the "hardware" said.  ``counter_bits`` makes the accumulator wrap
(the real one is 64-bit); ``counter_scale`` makes the counter disagree with power (a
driver that reports it wrong: 0.01 counts a hundredth of the energy).

The power-cap setters keep their state on the GPU (microwatts, like amdsmi);
``file_backed()`` keeps the GPUs in the JSON file named by ``GREENMON_FAKE_AMDSMI_STATE``
so a ``greenmon`` subprocess and the test see the same GPU (plan key
``[hardware] amdsmi_module = "tests.fakes.amdsmi:file_backed"``).  What this fake shares
with the NVML one is in tests/fakes/gpu_library.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes import gpu_library
from tests.fakes.gpu_library import FakeGpuLibrary

AMDSMI_STATUS_SUCCESS = 0
AMDSMI_STATUS_INVAL = 1
AMDSMI_STATUS_NOT_SUPPORTED = 2
AMDSMI_STATUS_NO_PERM = 10
AMDSMI_STATUS_INIT_ERROR = 18
AMDSMI_STATUS_NOT_FOUND = 31
AMDSMI_STATUS_NOT_INIT = 32
AMDSMI_STATUS_DRIVER_NOT_LOADED = 34
AMDSMI_STATUS_NO_DRV = 51


class AmdSmiException(Exception):
    """amdsmi's base exception."""


class AmdSmiLibraryException(AmdSmiException):
    """Like amdsmi's: ``get_error_code()`` is the AMDSMI_STATUS_* value."""

    def __init__(self, err_code: int) -> None:
        super().__init__(err_code)
        self.err_code = err_code

    def get_error_code(self) -> int:
        return self.err_code

    def get_error_info(self) -> str:
        return f"AMDSMI status {self.err_code}"

    def __str__(self) -> str:
        return f"Error code:\n\t{self.err_code} | AMDSMI status {self.err_code}"


@dataclass
class FakeAmdGpu:
    uuid: str
    market_name: str = "AMD Instinct MI300X (fake)"
    power_w: float = 300.0
    # the counter's unit in microjoules, as amdsmi_get_energy_count reports it
    counter_resolution_uj: float = 15.3
    # raw accumulator value (in counter units) and its width
    accumulator: float = 1_000_000.0
    counter_bits: int = 64
    # energy the counter shows per joule drawn: 1.0 is right, 0.01 a driver that is wrong
    counter_scale: float = 1.0
    gfx_activity: int = 40
    umc_activity: int = 15
    vram_total_bytes: int = 192 * 2**30
    vram_used_bytes: int = 12 * 2**30
    # (pid, vram bytes) of the processes using the GPU
    processes: list[tuple[int, int]] = field(default_factory=list)
    power_cap_uw: int = 750_000_000
    default_power_cap_uw: int = 750_000_000
    min_power_cap_uw: int = 200_000_000
    max_power_cap_uw: int = 750_000_000
    no_permission: bool = False
    # amdsmi function names that fail with AMDSMI_STATUS_NOT_SUPPORTED on this GPU
    not_supported: set[str] = field(default_factory=set)
    # power fields amdsmi_get_power_info reports as "N/A"
    power_na: set[str] = field(default_factory=set)
    # (fake clock s, raw accumulator returned) of every energy read
    log: list[tuple[float, int]] = field(default_factory=list)
    setter_calls: list[str] = field(default_factory=list)

    @property
    def counter_range_units(self) -> int:
        return 2**self.counter_bits


class FakeAmdsmi(FakeGpuLibrary[FakeAmdGpu]):
    """Pass an instance where the probe takes the amdsmi module."""

    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException
    # greenmon/hardware/amd.py skips its root check for this module.
    GREENMON_FAKE_PRIVILEGED = True
    NOT_INITIALISED = AMDSMI_STATUS_NOT_INIT
    NOT_SUPPORTED = AMDSMI_STATUS_NOT_SUPPORTED

    def __init__(
        self,
        gpus: list[FakeAmdGpu],
        *,
        init_error: int | None = None,
        seconds_per_read: float = 0.05,
        state_path: Path | None = None,
        realtime: bool = False,
    ) -> None:
        constants = {name: value for name, value in globals().items() if name.startswith("AMDSMI_")}
        super().__init__(gpus, constants=constants, init_error=init_error, state_path=state_path)
        self.seconds_per_read = seconds_per_read
        self.now_s = 0.0
        # realtime: the GPUs draw their power over real (monotonic) time between energy
        # reads, for a caller that waits with time.sleep (scripts/gpu-check's tests)
        self.realtime = realtime
        self._last_read_s = time.monotonic()
        if realtime:
            # the fake clock is time.monotonic(): its log lines up with greenmon's samples
            self.now_s = self._last_read_s

    def _error(self, code: int) -> Exception:
        return AmdSmiLibraryException(code)

    # -- the fake's clock ----------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        """Advance the fake clock: every GPU draws its power for ``seconds``."""
        for gpu in self.gpus:
            drawn_uj = gpu.power_w * seconds * 1e6 * gpu.counter_scale
            gpu.accumulator = (
                gpu.accumulator + drawn_uj / gpu.counter_resolution_uj
            ) % gpu.counter_range_units
        self.now_s += seconds

    # -- the amdsmi subset ---------------------------------------------------------------
    def amdsmi_init(self, flags: int = 0) -> None:
        self._start()

    def amdsmi_shut_down(self) -> None:
        self._stop()

    def amdsmi_get_processor_handles(self) -> list[FakeAmdGpu]:
        if not self.initialised:
            raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_INIT)
        return list(self.gpus)

    def amdsmi_get_gpu_device_uuid(self, handle: FakeAmdGpu) -> str:
        return self._gpu(handle, "amdsmi_get_gpu_device_uuid").uuid

    def amdsmi_get_gpu_asic_info(self, handle: FakeAmdGpu) -> dict[str, Any]:
        gpu = self._gpu(handle, "amdsmi_get_gpu_asic_info")
        return {"market_name": gpu.market_name, "vendor_name": "Advanced Micro Devices"}

    def amdsmi_get_energy_count(self, handle: FakeAmdGpu) -> dict[str, Any]:
        gpu = self._gpu(handle, "amdsmi_get_energy_count")
        if self.realtime:
            now = time.monotonic()
            self.sleep(now - self._last_read_s)
            self._last_read_s = now
        else:
            self.sleep(self.seconds_per_read)
        raw = int(gpu.accumulator)
        gpu.log.append((self.now_s, raw))
        return {
            "energy_accumulator": raw,
            "counter_resolution": gpu.counter_resolution_uj,
            "timestamp": int(self.now_s * 1e9),
        }

    def amdsmi_get_power_info(self, handle: FakeAmdGpu) -> dict[str, Any]:
        gpu = self._gpu(handle, "amdsmi_get_power_info")
        watts = round(gpu.power_w)
        info: dict[str, Any] = {
            "socket_power": watts,
            "current_socket_power": watts,
            "average_socket_power": watts,
            "gfx_voltage": 800,
            "soc_voltage": 900,
            "mem_voltage": 1100,
            "power_limit": gpu.power_cap_uw // 1_000_000,
        }
        return {key: "N/A" if key in gpu.power_na else value for key, value in info.items()}

    def amdsmi_get_gpu_activity(self, handle: FakeAmdGpu) -> dict[str, Any]:
        gpu = self._gpu(handle, "amdsmi_get_gpu_activity")
        return {
            "gfx_activity": gpu.gfx_activity,
            "umc_activity": gpu.umc_activity,
            "mm_activity": "N/A",
        }

    def amdsmi_get_gpu_vram_usage(self, handle: FakeAmdGpu) -> dict[str, Any]:
        gpu = self._gpu(handle, "amdsmi_get_gpu_vram_usage")
        # amdsmi reports VRAM in MB
        return {
            "vram_total": gpu.vram_total_bytes // 2**20,
            "vram_used": gpu.vram_used_bytes // 2**20,
        }

    def amdsmi_get_gpu_process_list(self, handle: FakeAmdGpu) -> list[dict[str, Any]]:
        gpu = self._gpu(handle, "amdsmi_get_gpu_process_list")
        return [
            {
                "name": f"proc{pid}",
                "pid": pid,
                "mem": vram,
                "engine_usage": {"gfx": 0, "enc": 0},
                "memory_usage": {"gtt_mem": 0, "cpu_mem": 0, "vram_mem": vram},
                "cu_occupancy": "N/A",
            }
            for pid, vram in gpu.processes
        ]

    def amdsmi_get_power_cap_info(self, handle: FakeAmdGpu) -> dict[str, int]:
        gpu = self._gpu(handle, "amdsmi_get_power_cap_info")
        return {
            "power_cap": gpu.power_cap_uw,
            "default_power_cap": gpu.default_power_cap_uw,
            "dpm_cap": 0,
            "min_power_cap": gpu.min_power_cap_uw,
            "max_power_cap": gpu.max_power_cap_uw,
        }

    def amdsmi_set_power_cap(self, handle: FakeAmdGpu, sensor_ind: int, cap: int) -> None:
        gpu = self._gpu(handle, "amdsmi_set_power_cap")
        if not isinstance(cap, int) or not isinstance(sensor_ind, int):
            raise AmdSmiException("amdsmi_set_power_cap takes integers")
        if gpu.no_permission:
            raise AmdSmiLibraryException(AMDSMI_STATUS_NO_PERM)
        if not gpu.min_power_cap_uw <= cap <= gpu.max_power_cap_uw:
            raise AmdSmiLibraryException(AMDSMI_STATUS_INVAL)
        gpu.setter_calls.append(f"amdsmi_set_power_cap({cap})")
        gpu.power_cap_uw = cap
        self._save()


STATE_ENV = "GREENMON_FAKE_AMDSMI_STATE"


def load_state(path: Path) -> list[FakeAmdGpu]:
    return gpu_library.load_gpus(path, FakeAmdGpu)


def file_backed() -> FakeAmdsmi:
    """A FakeAmdsmi whose GPUs live in $GREENMON_FAKE_AMDSMI_STATE (one GPU when it is new)."""
    return gpu_library.file_backed(
        STATE_ENV,
        FakeAmdGpu,
        lambda: FakeAmdGpu("aa000000-0000-0000-0000-000000000001"),
        lambda gpus, path: FakeAmdsmi(gpus, state_path=path, realtime=True),
    )


# Every module ``logged()`` made in this process, for a test that runs a plan in-process
# and compares its figures with the fake's own log.
INSTANCES: list[FakeAmdsmi] = []


def logged() -> FakeAmdsmi:
    amdsmi = FakeAmdsmi([FakeAmdGpu("aa000000-0000-0000-0000-000000000001")], realtime=True)
    INSTANCES.append(amdsmi)
    return amdsmi


def one_gpu() -> FakeAmdsmi:
    return FakeAmdsmi([FakeAmdGpu("aa000000-0000-0000-0000-000000000001")], realtime=True)


def disagreeing() -> FakeAmdsmi:
    """One GPU whose counter counts a hundredth of the energy its power says (real time)."""
    gpu = FakeAmdGpu("aa000000-0000-0000-0000-000000000002", counter_scale=0.01)
    return FakeAmdsmi([gpu], realtime=True)
