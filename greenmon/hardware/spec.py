"""The hardware part of a plan: its hardware factors, their levels, and where they apply.

greenmon/plan/schema.py builds its ``[factors]`` and ``[hardware]`` tables from these types, and
the rest of greenmon/hardware/ reads a plan only through ``HardwareSpec``: this package
imports nothing from greenmon.plan, so the two do not import each other.

Terms:
- *hardware factor*: a plan factor that changes the machine rather than the engine:
  ``cpu_governor`` and ``cpu_max_freq_khz`` (cpufreq sysfs, every online CPU),
  ``gpu_power_limit_w`` and ``gpu_locked_clocks_mhz`` (NVML, every chosen GPU).  A level of
  ``gpu_locked_clocks_mhz`` is ``[sm_min, sm_max]`` or ``[sm_min, sm_max, memory]``.
- *hardware spec*: a plan's hardware factors with their levels, and its ``[hardware]``
  table (where they are applied).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec

CPU_FACTORS = ("cpu_governor", "cpu_max_freq_khz")
GPU_FACTORS = ("gpu_power_limit_w", "gpu_locked_clocks_mhz")
HARDWARE_FACTORS = CPU_FACTORS + GPU_FACTORS


class HardwareFactors(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The hardware factors of a plan's ``[factors]`` table (plan.Factors adds the rest)."""

    gpu_power_limit_w: list[float] | None = None
    gpu_locked_clocks_mhz: list[list[int]] | None = None
    cpu_governor: list[str] | None = None
    cpu_max_freq_khz: list[int] | None = None

    def hardware_levels(self) -> dict[str, list[Any]]:
        """The hardware factors given and their levels (empty: nothing to check or apply)."""
        return {
            key: list(getattr(self, key))
            for key in HARDWARE_FACTORS
            if getattr(self, key) is not None
        }


class Hardware(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where hardware factors are applied (a plan's ``[hardware]`` table); tests point these
    at fakes."""

    # The cpufreq sysfs directory holding cpuN/cpufreq/.
    cpufreq_root: str = "/sys/devices/system/cpu"
    # "pynvml", or "package.module:factory" returning an object shaped like pynvml.
    nvml_module: str = "pynvml"
    # Whose GPUs the GPU factors set: "nvidia" (NVML) or "amd" (amdsmi: power caps only).
    gpu_vendor: Literal["nvidia", "amd"] = "nvidia"
    # "amdsmi", or "package.module:factory" returning an object shaped like it.
    amdsmi_module: str = "amdsmi"
    # NVML (or amdsmi) indices or UUIDs of the GPUs the GPU factors apply to; None: every GPU.
    gpu_devices: list[int | str] | None = None
    # The greenmon helper's socket, used when greenmon is not root (greenmon/privhelper/);
    # None: $GREENMON_HELPER_SOCKET, else /run/greenmon-helper.sock.
    helper_socket: str | None = None


@dataclass(frozen=True)
class HardwareSpec:
    """A plan's hardware factors with their levels, and where they are applied."""

    levels: dict[str, list[Any]]
    hardware: Hardware


class HasHardwareSpec(Protocol):
    """Anything that has a hardware spec (a plan)."""

    @property
    def hardware_spec(self) -> HardwareSpec: ...
