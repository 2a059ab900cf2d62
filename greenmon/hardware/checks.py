"""Checking a plan's hardware factors before it runs: ranges and privileges.

``check_hardware`` says what would stop a plan's hardware factors on this machine (levels
outside the hardware's range, missing privileges) before anything is changed;
``require_hardware`` raises it as a PlanError.  NVML power limits and clocks need root or
CAP_SYS_ADMIN, cpufreq write access to the ``scaling_*`` files, or else the greenmon helper
(greenmon/privhelper/).  A fake NVML module sets ``GREENMON_FAKE_PRIVILEGED = True`` to
skip the privilege check.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from greenmon.errors import GreenmonError, PlanError
from greenmon.hardware.amd import check_amd_gpu
from greenmon.hardware.cpufreq import cpufreq_range, online_cpufreq_dirs
from greenmon.hardware.nvml import (
    NvmlSession,
    gpu_handles,
    power_limit_range_mw,
    supported_clocks_mhz,
)
from greenmon.hardware.spec import CPU_FACTORS, GPU_FACTORS, Hardware, HasHardwareSpec

CAP_SYS_ADMIN_BIT = 21  # linux/capability.h


def has_cap_sys_admin() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN_BIT & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _helper_problem(hardware: Hardware) -> str | None:
    """Why the greenmon helper cannot write settings for this process (None: it can)."""
    from greenmon.privhelper.client import helper_answers

    return helper_answers(hardware.helper_socket)


def _check_cpu(levels: Mapping[str, list[Any]], hardware: Hardware) -> list[str]:
    root = Path(hardware.cpufreq_root)
    problems: list[str] = []
    dirs = online_cpufreq_dirs(root)
    if not dirs:
        return [
            f"CPU factors need cpufreq, and {root} has no online cpuN/cpufreq directory "
            "(no cpufreq driver, or a virtual machine without frequency scaling)"
        ]
    try:
        ranges = [cpufreq_range(d) for d in dirs]
    except (OSError, ValueError) as error:
        return [f"cannot read the cpufreq limits under {root}: {error}"]
    governors = frozenset.intersection(*(r.governors for r in ranges))
    for governor in levels.get("cpu_governor", []):
        if governor not in governors:
            problems.append(
                f"cpu_governor level {governor!r} is not available here (available on every "
                f"online CPU: {', '.join(sorted(governors)) or 'none'})"
            )
    low_khz = max(r.min_khz for r in ranges)
    high_khz = min(r.max_khz for r in ranges)
    for khz in levels.get("cpu_max_freq_khz", []):
        if not low_khz <= khz <= high_khz:
            problems.append(
                f"cpu_max_freq_khz level {khz} is outside this CPU's range "
                f"{low_khz}..{high_khz} kHz (cpuinfo_min_freq..cpuinfo_max_freq"
                + (", scaling_available_frequencies" if any(r.listed_khz for r in ranges) else "")
                + ")"
            )
    files = [
        d / name
        for d in dirs
        for key, name in (
            ("cpu_governor", "scaling_governor"),
            ("cpu_max_freq_khz", "scaling_max_freq"),
        )
        if key in levels
    ]
    denied = [f for f in files if not os.access(f, os.W_OK)]
    helper_problem = _helper_problem(hardware) if denied and os.geteuid() != 0 else "root"
    if denied and helper_problem is not None:
        problems.append(
            f"cpufreq files are not writable by this user ({denied[0]}"
            + (f" and {len(denied) - 1} more" if len(denied) > 1 else "")
            + "): run greenmon as root, or run the greenmon helper as root for it, or give "
            f"its user write access to {root}/cpu*/cpufreq/scaling_governor and "
            "scaling_max_freq"
            + ("" if helper_problem == "root" else f" (helper: {helper_problem})")
        )
    return problems


def _check_gpu_ranges(
    levels: Mapping[str, list[Any]], module: Any, uuid: str, handle: Any
) -> list[str]:
    """The GPU levels outside what this GPU supports (power limit range, clocks)."""
    problems: list[str] = []
    if "gpu_power_limit_w" in levels:
        low_mw, high_mw = power_limit_range_mw(module, handle)
        for watts in levels["gpu_power_limit_w"]:
            if not low_mw <= watts * 1000 <= high_mw:
                problems.append(
                    f"gpu_power_limit_w level {watts:g} is outside GPU {uuid}'s "
                    f"range {low_mw / 1000:g}..{high_mw / 1000:g} W "
                    "(nvmlDeviceGetPowerManagementLimitConstraints)"
                )
    if "gpu_locked_clocks_mhz" in levels:
        memory, graphics = supported_clocks_mhz(module, handle)
        sm = sorted({c for clocks in graphics.values() for c in clocks})
        for level in levels["gpu_locked_clocks_mhz"]:
            if level[0] < sm[0] or level[1] > sm[-1]:
                problems.append(
                    f"gpu_locked_clocks_mhz level {level}: SM clocks "
                    f"{level[0]}..{level[1]} MHz are outside GPU {uuid}'s supported "
                    f"{sm[0]}..{sm[-1]} MHz "
                    "(nvmlDeviceGetSupportedGraphicsClocks)"
                )
            if len(level) == 3 and not memory[0] <= level[2] <= memory[-1]:
                problems.append(
                    f"gpu_locked_clocks_mhz level {level}: memory clock {level[2]} MHz "
                    f"is outside GPU {uuid}'s supported {memory[0]}..{memory[-1]} MHz "
                    "(nvmlDeviceGetSupportedMemoryClocks)"
                )
    return problems


def _check_gpu(
    levels: Mapping[str, list[Any]], hardware: Hardware, nvml: Any, amdsmi: Any = None
) -> list[str]:
    if hardware.gpu_vendor == "amd":
        return check_amd_gpu(
            levels, hardware.amdsmi_module, hardware.gpu_devices, amdsmi,
            has_cap_sys_admin(), lambda: _helper_problem(hardware),
        )
    problems: list[str] = []
    for level in levels.get("gpu_locked_clocks_mhz", []):
        if len(level) not in (2, 3) or level[0] > level[1]:
            problems.append(
                f"gpu_locked_clocks_mhz level {level} must be [sm_min, sm_max] or "
                "[sm_min, sm_max, memory] with sm_min <= sm_max"
            )
    if problems:
        return problems
    session = NvmlSession({hardware.nvml_module: nvml} if nvml is not None else None)
    try:
        module = session.module(hardware.nvml_module)
        gpus = gpu_handles(module, hardware.gpu_devices)
        if not gpus:
            return ["GPU factors are set but NVML finds no GPU"]
        for uuid, handle in gpus:
            problems += _check_gpu_ranges(levels, module, uuid, handle)
        privileged = getattr(module, "GREENMON_FAKE_PRIVILEGED", False) or has_cap_sys_admin()
        helper_problem = None if privileged else _helper_problem(hardware)
        if helper_problem is not None:
            problems.append(
                "GPU power limits and clocks need root or CAP_SYS_ADMIN: run the greenmon "
                "helper as root for this user, or run greenmon with sudo, or `sudo setcap "
                f"cap_sys_admin+ep` on its Python interpreter (helper: {helper_problem})"
            )
    except GreenmonError as error:
        problems.append(str(error))
    except Exception as error:
        problems.append(f"NVML cannot check the GPU factors: {type(error).__name__}: {error}")
    finally:
        session.close()
    return problems


def check_hardware(plan: HasHardwareSpec, *, nvml: Any = None, amdsmi: Any = None) -> list[str]:
    """Problems that would stop the plan's hardware factors here: levels outside the
    hardware's range and missing privileges.  No hardware factor: nothing is read."""
    spec = plan.hardware_spec
    problems: list[str] = []
    if any(key in spec.levels for key in CPU_FACTORS):
        problems += _check_cpu(spec.levels, spec.hardware)
    if any(key in spec.levels for key in GPU_FACTORS):
        problems += _check_gpu(spec.levels, spec.hardware, nvml, amdsmi)
    return problems


def hardware_access(plan: HasHardwareSpec) -> str | None:
    """How the plan's hardware factors would be written here, in words (None: it has none)."""
    spec = plan.hardware_spec
    if not spec.levels:
        return None
    if os.geteuid() == 0:
        return "hardware settings are written directly (greenmon runs as root)"
    from greenmon.privhelper.client import helper_socket_path

    path = helper_socket_path(spec.hardware.helper_socket)
    problem = _helper_problem(spec.hardware)
    if problem is None:
        return f"hardware settings are written through the greenmon helper at {path}"
    return (
        "hardware settings cannot be written: greenmon is not root and the helper does not "
        f"answer ({problem})"
    )


def require_hardware(plan: HasHardwareSpec, *, nvml: Any = None) -> None:
    problems = check_hardware(plan, nvml=nvml)
    if problems:
        raise PlanError(
            "The plan's hardware factors cannot be applied here: "
            + " ".join(f"({i}) {p}." for i, p in enumerate(problems, start=1))
        )
