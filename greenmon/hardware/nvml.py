"""NVML: GPU power limits and clocks, read and written through an NVML module.

The module is named by a plan's ``[hardware] nvml_module``: ``pynvml`` (nvidia-ml-py), or
``package.module:factory`` returning an object shaped like pynvml (tests: a fake NVML).

NVML has no query for locked clocks: their previous value is journaled as ``reset`` and
restoring resets them (the driver default, which is what an unlocked GPU has).  Their read
back is the SM (or memory) clock in MHz just after locking.  GPUs without locked clocks
(before Volta) get application clocks instead (``sm_max`` at ``memory``, or at the highest
supported memory clock).

Power limits and clocks need root or CAP_SYS_ADMIN (or the greenmon helper).
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenmon.errors import PlanError
from greenmon.hardware.amd import AmdsmiSession
from greenmon.hardware.knob import SettingError

NVML_NOT_SUPPORTED = 3
NVML_NO_PERMISSION = 4
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2


def load_nvml(spec: str) -> Any:
    """The NVML module named by a plan: ``pynvml``, or ``package.module:factory``."""
    module_name, _, factory = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PlanError(
            f"NVML module {module_name!r} cannot be imported ({error}): install nvidia-ml-py "
            "(`pip install 'greenmon[nvml]'`) to set GPU power limits and clocks."
        ) from None
    return getattr(module, factory)() if factory else module


def nvml_code(error: BaseException) -> int | None:
    value = getattr(error, "value", None)
    return value if isinstance(value, int) else None


def gpu_handles(nvml: Any, devices: Sequence[int | str] | None) -> list[tuple[str, Any]]:
    """(uuid, handle) of each chosen GPU; NVML must be initialised."""
    if devices is None:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    else:
        handles = [
            nvml.nvmlDeviceGetHandleByUUID(d)
            if isinstance(d, str)
            else nvml.nvmlDeviceGetHandleByIndex(d)
            for d in devices
        ]
    out = []
    for handle in handles:
        uuid = nvml.nvmlDeviceGetUUID(handle)
        out.append((uuid.decode() if isinstance(uuid, bytes) else str(uuid), handle))
    return out


def power_limit_range_mw(nvml: Any, handle: Any) -> tuple[int, int]:
    low_mw, high_mw = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
    return int(low_mw), int(high_mw)


def supported_clocks_mhz(nvml: Any, handle: Any) -> tuple[list[int], dict[int, list[int]]]:
    """Supported memory clocks, and the SM clocks supported at each, ascending."""
    memory = sorted(int(m) for m in nvml.nvmlDeviceGetSupportedMemoryClocks(handle))
    graphics = {
        m: sorted(int(c) for c in nvml.nvmlDeviceGetSupportedGraphicsClocks(handle, m))
        for m in memory
    }
    return memory, graphics


def check_nvml_value(nvml: Any, handle: Any, setting: str, value: str) -> str | None:
    """Why ``value`` is outside what this GPU supports for ``setting`` (None: it is not).
    Values are as NvmlKnob writes them: milliwatts, ``min,max`` or ``memory,sm`` MHz, or
    ``reset`` for clocks."""
    if setting == "power_limit_mw":
        low_mw, high_mw = power_limit_range_mw(nvml, handle)
        if not value.isdigit() or not low_mw <= int(value) <= high_mw:
            return f"power limit {value!r} mW is outside {low_mw}..{high_mw} mW"
        return None
    if value == "reset" and setting != "applications_clocks_mhz":
        return None
    try:
        first, second = (int(v) for v in value.split(","))
    except ValueError:
        return f"{setting} value {value!r} is not two clocks in MHz ('a,b') or 'reset'"
    memory, graphics = supported_clocks_mhz(nvml, handle)
    sm = sorted({c for clocks in graphics.values() for c in clocks})
    if setting == "gpu_locked_clocks_mhz":
        if not sm[0] <= first <= second <= sm[-1]:
            return f"SM clocks {first}..{second} MHz are outside {sm[0]}..{sm[-1]} MHz"
    elif setting == "memory_locked_clocks_mhz":
        if not memory[0] <= first <= second <= memory[-1]:
            return f"memory clocks {first}..{second} MHz are outside {memory[0]}..{memory[-1]} MHz"
    elif first not in graphics or second not in graphics[first]:
        return f"application clocks {first} MHz memory, {second} MHz SM are not a supported pair"
    return None


class NvmlSession:
    """NVML modules opened by spec (initialised once, shut down on close), and beside them
    the amdsmi modules of AMD power caps, so one session finds the module of any journal
    row."""

    def __init__(
        self,
        modules: Mapping[str, Any] | None = None,
        amdsmi_modules: Mapping[str, Any] | None = None,
    ) -> None:
        # Pre-built modules by spec (tests pass a FakeNvml / FakeAmdsmi instance here).
        self._given = dict(modules or {})
        self._open: dict[str, Any] = {}
        self.amdsmi = AmdsmiSession(amdsmi_modules)

    def module(self, spec: str) -> Any:
        if spec not in self._open:
            nvml = self._given.get(spec) or load_nvml(spec)
            try:
                nvml.nvmlInit()
            except Exception as error:
                raise SettingError(
                    f"NVML ({spec}) cannot start: {error}. GPU factors need the NVIDIA driver."
                ) from None
            self._open[spec] = nvml
        return self._open[spec]

    def handle(self, spec: str, uuid: str) -> Any:
        return self.module(spec).nvmlDeviceGetHandleByUUID(uuid)

    def close(self) -> None:
        for nvml in self._open.values():
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
        self._open.clear()
        self.amdsmi.close()


@dataclass
class NvmlKnob:
    """One NVML setting of one GPU: power_limit_mw, gpu_locked_clocks_mhz,
    memory_locked_clocks_mhz or applications_clocks_mhz."""

    session: NvmlSession
    module_spec: str
    uuid: str
    setting: str

    @property
    def target(self) -> str:
        return json.dumps(
            {"kind": "nvml", "module": self.module_spec, "gpu": self.uuid, "setting": self.setting}
        )

    def _call(self, function: str, *args: Any) -> Any:
        nvml = self.session.module(self.module_spec)
        handle = self.session.handle(self.module_spec, self.uuid)
        try:
            return getattr(nvml, function)(handle, *args)
        except Exception as error:
            code = nvml_code(error)
            if code == NVML_NO_PERMISSION:
                raise SettingError(
                    f"{function} on GPU {self.uuid}: no permission. NVML power limits and "
                    "clocks need root or CAP_SYS_ADMIN."
                ) from None
            raise

    def read(self) -> str:
        if self.setting == "power_limit_mw":
            return str(int(self._call("nvmlDeviceGetPowerManagementLimit")))
        if self.setting == "applications_clocks_mhz":
            mem = int(self._call("nvmlDeviceGetApplicationsClock", NVML_CLOCK_MEM))
            sm = int(self._call("nvmlDeviceGetApplicationsClock", NVML_CLOCK_SM))
            return f"{mem},{sm}"
        # No NVML query returns locked clocks: the clock running now is the evidence.
        clock = NVML_CLOCK_SM if self.setting == "gpu_locked_clocks_mhz" else NVML_CLOCK_MEM
        return str(int(self._call("nvmlDeviceGetClockInfo", clock)))

    def previous(self) -> str:
        if self.setting in ("gpu_locked_clocks_mhz", "memory_locked_clocks_mhz"):
            return "reset"
        return self.read()

    def write(self, value: str) -> None:
        if self.setting == "power_limit_mw":
            self._call("nvmlDeviceSetPowerManagementLimit", int(value))
            return
        kind = {
            "gpu_locked_clocks_mhz": "GpuLockedClocks",
            "memory_locked_clocks_mhz": "MemoryLockedClocks",
            "applications_clocks_mhz": "ApplicationsClocks",
        }[self.setting]
        if value == "reset":
            self._call(f"nvmlDeviceReset{kind}")
        else:
            first, second = (int(v) for v in value.split(","))
            self._call(f"nvmlDeviceSet{kind}", first, second)
