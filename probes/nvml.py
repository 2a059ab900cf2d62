"""NVML probe: energy, power, utilisation, memory, clocks and temperature of NVIDIA GPUs.

Reads through nvidia-ml-py (imported as ``pynvml`` inside ``open()``, so the core never
imports it).  The NVML module is a constructor parameter: tests pass a fake module with the
same functions, constants and ``NVMLError`` (carrying ``.value`` codes like pynvml's).

Channels, per GPU ``N`` (NVML's index), each only where the driver supports it:
- ``gpuN.energy_mj``: ``nvmlDeviceGetTotalEnergyConsumption``, mJ since the driver was
  loaded (Volta and newer), kind ``counter``, domain ``gpu``.  A 64-bit counter: it does not
  wrap in practice, so no ``counter_range``; a driver reload shows as a reset.
- ``gpuN.power_mw``: the instantaneous field ``NVML_FI_DEV_POWER_INSTANT`` through
  ``nvmlDeviceGetFieldValues`` where the driver has it, else ``nvmlDeviceGetPowerUsage``
  (on Ampere and newer a one-second average); metadata ``power_field`` says which
  (``"instant"`` or ``"usage_1s_average"``).  Its domain is ``gpu`` only when the energy
  counter is missing (older GPUs): otherwise energy comes from the counter and the gauge
  carries no domain, so the GPU is never counted twice.  Metadata ``measures: "gpu"``
  says what it is either way.
- ``gpuN.util_gpu_percent`` / ``gpuN.util_memory_percent``: the share of the driver's last
  sample period in which a kernel ran / device memory was read or written.
- ``gpuN.memory_used_bytes``, ``gpuN.memory_total_bytes``, ``gpuN.memory_percent``.
- ``gpuN.background_processes``: how many processes outside greenmon's own
  process tree (probes/proctree.py) run compute or graphics work on the GPU.
- ``gpuN.sm_clock_mhz``, ``gpuN.memory_clock_mhz``, ``gpuN.temperature_c``,
  ``gpuN.power_limit_mw`` (the enforced limit).
Every channel's metadata carries the GPU's ``uuid``, ``name`` and ``nvml_index``.

Errors are translated at this boundary: no nvidia-ml-py, no libnvidia-ml or no driver ->
ProbeUnavailable with the fix; ``NVML_ERROR_NOT_SUPPORTED`` at ``open()`` -> that channel
is absent (and ``None`` if a driver stops supporting it mid-run); ``NVML_ERROR_GPU_IS_LOST``
-> ProbeLost (the sampler records an event, stops this probe, the others go on); any
other NVML error during ``read()`` is transient (a gap and a retry).

Choosing GPUs (option ``devices``: NVML indices or UUIDs, default all).  NVML numbers GPUs
in PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``.  CUDA numbers them fastest first
unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, and renumbers from 0 whatever
``CUDA_VISIBLE_DEVICES`` leaves visible.  So ``cuda:0`` in an engine is not necessarily
NVML's GPU 0: name GPUs by UUID (``nvidia-smi -L`` lists them, and
``CUDA_VISIBLE_DEVICES`` accepts UUIDs too) so that both sides mean the same card.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar

from greenmon.probes.base import Channel, ProbeLost, ProbeUnavailable
from greenmon.probes.gpu_base import GpuProbe, Query, Unsupported
from greenmon.probes.options import ProbeOptions

# How often the driver updates the total-energy counter: with its power sampling, every
# few tens of milliseconds on recent GPUs; 100 ms is the conservative figure (the same
# as the power field's update), the time resolution of a window whose edges read it.
NVML_ENERGY_UPDATE_NS = 100_000_000

# pynvml's values, used when a (fake) module does not define a constant.
_CODES = {
    "NVML_SUCCESS": 0,
    "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_NO_PERMISSION": 4,
    "NVML_ERROR_NOT_FOUND": 6,
    "NVML_ERROR_DRIVER_NOT_LOADED": 9,
    "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "NVML_ERROR_FUNCTION_NOT_FOUND": 13,
    "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_FI_DEV_POWER_INSTANT": 186,
    "NVML_CLOCK_SM": 1,
    "NVML_CLOCK_MEM": 2,
    "NVML_TEMPERATURE_GPU": 0,
}
# c_nvmlValue_t member by valueType (NVML_VALUE_TYPE_*).
_VALUE_MEMBERS = {
    0: "dVal",
    1: "uiVal",
    2: "ulVal",
    3: "ullVal",
    4: "sllVal",
    5: "siVal",
    6: "usVal",
}

class Options(ProbeOptions, kw_only=True, forbid_unknown_fields=True):
    # NVML indices (PCI bus order) or UUIDs ("GPU-..."); None reads every GPU.
    devices: list[int | str] | None = None
    # the roots of greenmon's own process tree, whose GPU processes are not
    # background; None: this process.  ``proc_root`` points at a fake /proc in tests.
    tree_pids: list[int] | None = None
    proc_root: str = "/proc"


# The gauge queries beyond power, in channel order: (query name, [(channel, unit), ...]).
_GAUGES: tuple[tuple[str, list[tuple[str, str]]], ...] = (
    ("utilisation", [("util_gpu_percent", "%"), ("util_memory_percent", "%")]),
    ("memory", [("memory_used_bytes", "B"), ("memory_total_bytes", "B"), ("memory_percent", "%")]),
    ("sm_clock", [("sm_clock_mhz", "MHz")]),
    ("memory_clock", [("memory_clock_mhz", "MHz")]),
    ("temperature", [("temperature_c", "C")]),
    ("power_limit", [("power_limit_mw", "mW")]),
    ("background_processes", [("background_processes", "1")]),
)


class NvmlProbe(GpuProbe):
    name: ClassVar[str] = "nvml"
    # The energy counter is read at every edge; the power field NVML updates about every
    # 100 ms, and utilisation over a similar period: polling faster reads repeats.
    default_rate_hz: ClassVar[float] = 10.0

    def __init__(self, options: Options | None = None, *, nvml: Any = None) -> None:
        self.options = options or Options()
        super().__init__(self.options.proc_root, self.options.tree_pids)
        self._nvml = nvml

    # -- NVML access ---------------------------------------------------------------------
    def _code(self, name: str) -> int:
        return int(getattr(self._nvml, name, _CODES[name]))

    def _error_code(self, error: BaseException) -> int | None:
        value = getattr(error, "value", None)
        return int(value) if isinstance(value, int) else None

    def _is_nvml_error(self, error: BaseException) -> bool:
        error_type = getattr(self._nvml, "NVMLError", None)
        return isinstance(error_type, type) and isinstance(error, error_type)

    def _import(self) -> None:
        if self._nvml is not None:
            return
        try:
            import pynvml
        except ImportError:
            raise ProbeUnavailable(
                "nvidia-ml-py is not installed: `pip install 'greenmon[nvml]'` "
                "(or `pip install nvidia-ml-py`) to read NVIDIA GPUs."
            ) from None
        self._nvml = pynvml

    def _init(self) -> None:
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as error:
            if not self._is_nvml_error(error):
                raise
            code = self._error_code(error)
            if code == self._code("NVML_ERROR_LIBRARY_NOT_FOUND"):
                raise ProbeUnavailable(
                    "libnvidia-ml.so was not found: no NVIDIA driver is installed on this "
                    "machine (no NVIDIA GPU, or install the driver: `nvidia-smi` must work)."
                ) from None
            if code == self._code("NVML_ERROR_DRIVER_NOT_LOADED"):
                raise ProbeUnavailable(
                    "the NVIDIA driver is not loaded (`nvidia-smi` fails too): load it "
                    "(`sudo modprobe nvidia`) or reboot after installing it."
                ) from None
            if code == self._code("NVML_ERROR_NO_PERMISSION"):
                raise ProbeUnavailable(
                    "NVML refused access: the user running greenmon may not open "
                    "/dev/nvidia*; add it to the group owning those devices."
                ) from None
            raise ProbeUnavailable(f"NVML could not start: {error}") from None
        self._initialised = True

    # -- open ----------------------------------------------------------------------------
    def _handles(self) -> list[tuple[int, Any]]:
        nvml = self._nvml
        count = int(nvml.nvmlDeviceGetCount())
        if count == 0:
            raise ProbeUnavailable("NVML reports no NVIDIA GPU on this machine.")
        wanted = self.options.devices
        handles: list[tuple[int, Any]] = []
        for device in wanted if wanted is not None else list(range(count)):
            try:
                if isinstance(device, int):
                    handle = nvml.nvmlDeviceGetHandleByIndex(device)
                else:
                    handle = nvml.nvmlDeviceGetHandleByUUID(device)
                index = int(nvml.nvmlDeviceGetIndex(handle))
            except Exception as error:
                if not self._is_nvml_error(error):
                    raise
                raise ProbeUnavailable(
                    f"[probes.nvml] devices names GPU {device!r}, which NVML does not know "
                    f"({error}). GPUs here: {self._list_gpus()}. Use an NVML index (PCI bus "
                    "order, not CUDA's) or a UUID."
                ) from None
            handles.append((index, handle))
        return handles

    def _list_gpus(self) -> str:
        nvml = self._nvml
        names: list[str] = []
        with contextlib.suppress(Exception):
            for index in range(int(nvml.nvmlDeviceGetCount())):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                names.append(f"{index}: {nvml.nvmlDeviceGetUUID(handle)}")
        return ", ".join(names) or "none"

    def _try(self, query: Query) -> tuple[float | None, ...]:
        """Run a query once at open(); NOT_SUPPORTED (or a missing function) -> Unsupported."""
        try:
            return query()
        except Unsupported:
            raise
        except Exception as error:
            if not self._is_nvml_error(error):
                raise
            code = self._error_code(error)
            if code in (
                self._code("NVML_ERROR_NOT_SUPPORTED"),
                self._code("NVML_ERROR_FUNCTION_NOT_FOUND"),
            ):
                raise Unsupported(str(error)) from None
            if code == self._code("NVML_ERROR_GPU_IS_LOST"):
                raise ProbeUnavailable(f"the GPU is lost (fell off the bus): {error}") from None
            raise

    def _gpu_channels(self, index: int, handle: Any) -> list[tuple[Query, list[Channel]]]:
        """The channels this GPU answers, each with the query that reads it."""
        info: dict[str, Any] = {"nvml_index": index}
        for key, fn in (("uuid", "nvmlDeviceGetUUID"), ("name", "nvmlDeviceGetName")):
            with contextlib.suppress(Exception):
                value = getattr(self._nvml, fn)(handle)
                info[key] = value.decode() if isinstance(value, bytes) else str(value)
        p = f"gpu{index}"

        def meta(**extra: Any) -> dict[str, Any]:
            return {**info, **extra}

        queries = self._gpu_queries(handle)
        found: list[tuple[Query, list[Channel]]] = []
        has_counter = False
        with contextlib.suppress(Unsupported):
            self._try(queries["energy"])
            found.append(
                (
                    queries["energy"],
                    [
                        Channel(
                            f"{p}.energy_mj",
                            "mJ",
                            "counter",
                            "gpu",
                            meta(counter_update_ns=NVML_ENERGY_UPDATE_NS),
                        )
                    ],
                )
            )
            has_counter = True
        for name, field_name in (("power_instant", "instant"), ("power_usage", "usage_1s_average")):
            try:
                self._try(queries[name])
            except Unsupported:
                continue
            domain = None if has_counter else "gpu"
            channel = Channel(
                f"{p}.power_mw", "mW", "gauge", domain, meta(power_field=field_name, measures="gpu")
            )
            found.append((queries[name], [channel]))
            break
        for name, specs in _GAUGES:
            try:
                self._try(queries[name])
            except Unsupported:
                continue
            channels = [Channel(f"{p}.{c}", unit, "gauge", None, meta()) for c, unit in specs]
            found.append((queries[name], channels))
        return found

    def _gpu_queries(self, handle: Any) -> dict[str, Query]:
        """One query per NVML reading of this GPU, by name (``_GAUGES`` and the power ones)."""
        nvml = self._nvml
        instant_id = self._code("NVML_FI_DEV_POWER_INSTANT")
        success = self._code("NVML_SUCCESS")
        sm_clock_id = self._code("NVML_CLOCK_SM")
        mem_clock_id = self._code("NVML_CLOCK_MEM")
        temperature_id = self._code("NVML_TEMPERATURE_GPU")

        def power_instant() -> tuple[float | None, ...]:
            [field] = nvml.nvmlDeviceGetFieldValues(handle, [instant_id])
            if int(field.nvmlReturn) != success:
                raise Unsupported(f"field {instant_id} returned {field.nvmlReturn}")
            member = _VALUE_MEMBERS.get(int(field.valueType), "uiVal")
            return (float(getattr(field.value, member)),)

        def utilisation() -> tuple[float | None, ...]:
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            return (float(rates.gpu), float(rates.memory))

        def memory() -> tuple[float | None, ...]:
            info_ = nvml.nvmlDeviceGetMemoryInfo(handle)
            total = float(info_.total)
            used = float(info_.used)
            return (used, total, 100.0 * used / total if total else None)

        def background_processes() -> tuple[float | None, ...]:
            # A process doing both compute and graphics work is listed by both calls.
            pids = {
                int(process.pid)
                for function in (
                    "nvmlDeviceGetComputeRunningProcesses",
                    "nvmlDeviceGetGraphicsRunningProcesses",
                )
                for process in getattr(nvml, function)(handle)
            }
            return (self._background_count(pids),)

        def one(fn: str, *args: Any) -> Query:
            return lambda: (float(getattr(nvml, fn)(handle, *args)),)

        return {
            "energy": one("nvmlDeviceGetTotalEnergyConsumption"),
            "power_instant": power_instant,
            "power_usage": one("nvmlDeviceGetPowerUsage"),
            "utilisation": utilisation,
            "memory": memory,
            "sm_clock": one("nvmlDeviceGetClockInfo", sm_clock_id),
            "memory_clock": one("nvmlDeviceGetClockInfo", mem_clock_id),
            "temperature": one("nvmlDeviceGetTemperature", temperature_id),
            "power_limit": one("nvmlDeviceGetEnforcedPowerLimit"),
            "background_processes": background_processes,
        }

    def open(self) -> Sequence[Channel]:
        self._import()
        self._init()
        try:
            return self._queries.open(self._handles(), self._gpu_channels, "NVML")
        except BaseException:
            self.close()
            raise

    # -- read ----------------------------------------------------------------------------
    def _read_error(self, error: Exception) -> Exception | None:
        if not self._is_nvml_error(error):
            return error
        code = self._error_code(error)
        if code == self._code("NVML_ERROR_GPU_IS_LOST"):
            return ProbeLost(f"GPU lost (NVML_ERROR_GPU_IS_LOST): {error}")
        if code == self._code("NVML_ERROR_NOT_SUPPORTED"):
            return None
        return RuntimeError(f"NVML error {code}: {error}")

    def _shut_down(self) -> None:
        self._nvml.nvmlShutdown()


def create(options: Options) -> NvmlProbe:
    return NvmlProbe(options)
