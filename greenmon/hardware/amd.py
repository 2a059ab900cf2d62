"""AMD GPU power caps, read and written through an amdsmi module.

The module is named by a plan's ``[hardware] amdsmi_module``: ``amdsmi`` (AMD SMI's Python
package), or ``package.module:factory`` returning an object shaped like it (tests: a fake
amdsmi).  A plan's ``gpu_power_limit_w`` goes to AMD GPUs when ``[hardware] gpu_vendor``
is ``"amd"``; ``gpu_devices`` then names amdsmi indices or UUIDs.

amdsmi speaks microwatts (``amdsmi_get_power_cap_info``: ``power_cap``, ``min_power_cap``,
``max_power_cap``; ``amdsmi_set_power_cap(handle, sensor_ind, cap)``); the knob's values
are milliwatts, as NVML's, so the journal and the unit's settings read alike.  Setting a
cap needs root (or the greenmon helper).  AMD clocks are not a factor here: amdsmi sets
clock ranges, not the locked clocks NVML has, and nothing has tested them.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenmon.errors import PlanError
from greenmon.hardware.knob import SettingError

AMDSMI_NO_PERM = 10
POWER_CAP_SETTING = "power_cap_mw"


def load_amdsmi(spec: str) -> Any:
    """The amdsmi module a plan names: ``amdsmi``, or ``package.module:factory``."""
    module_name, _, factory = spec.partition(":")
    try:
        # amdsmi prints to stdout, and raises more than ImportError, when ROCm is missing
        with contextlib.redirect_stdout(io.StringIO()):
            module = importlib.import_module(module_name)
    except (ImportError, KeyError, OSError, AttributeError) as error:
        raise PlanError(
            f"amdsmi module {module_name!r} cannot be loaded ({type(error).__name__}: "
            f"{error}): install ROCm >= 6.2 and `pip install 'greenmon[amd]'` to set AMD "
            "GPU power caps."
        ) from None
    return getattr(module, factory)() if factory else module


class AmdsmiSession:
    """amdsmi modules opened by spec (initialised once, shut down on close)."""

    def __init__(self, modules: Mapping[str, Any] | None = None) -> None:
        # Pre-built modules by spec (tests pass a FakeAmdsmi instance here).
        self._given = dict(modules or {})
        self._open: dict[str, Any] = {}

    def module(self, spec: str) -> Any:
        if spec not in self._open:
            amdsmi = self._given.get(spec) or load_amdsmi(spec)
            try:
                amdsmi.amdsmi_init()
            except Exception as error:
                raise SettingError(
                    f"amdsmi ({spec}) cannot start: {error}. AMD GPU factors need the amdgpu "
                    "driver and ROCm."
                ) from None
            self._open[spec] = amdsmi
        return self._open[spec]

    def handle(self, spec: str, uuid: str) -> Any:
        for found, handle in gpu_handles(self.module(spec), None):
            if found == uuid:
                return handle
        raise SettingError(f"amdsmi ({spec}) knows no GPU {uuid!r}")

    def close(self) -> None:
        for amdsmi in self._open.values():
            with contextlib.suppress(Exception):
                amdsmi.amdsmi_shut_down()
        self._open.clear()


def gpu_handles(amdsmi: Any, devices: Sequence[int | str] | None) -> list[tuple[str, Any]]:
    """(uuid, handle) of each chosen GPU (amdsmi index or UUID); amdsmi is initialised."""
    handles = list(amdsmi.amdsmi_get_processor_handles())
    pairs = [(str(amdsmi.amdsmi_get_gpu_device_uuid(h)), h) for h in handles]
    if devices is None:
        return pairs
    chosen = []
    for device in devices:
        match = [p for i, p in enumerate(pairs) if device in (i, p[0])]
        if not match:
            raise SettingError(
                f"[hardware] gpu_devices names GPU {device!r}, which amdsmi does not know "
                f"(GPUs: {', '.join(u for u, _ in pairs) or 'none'})"
            )
        chosen.append(match[0])
    return chosen


def power_cap_range_mw(amdsmi: Any, handle: Any) -> tuple[int, int]:
    info = amdsmi.amdsmi_get_power_cap_info(handle)
    return int(info["min_power_cap"]) // 1000, int(info["max_power_cap"]) // 1000


def check_power_cap_value(amdsmi: Any, handle: Any, value: str) -> str | None:
    """Why ``value`` (mW) is outside this GPU's power-cap range (None: it is inside)."""
    low_mw, high_mw = power_cap_range_mw(amdsmi, handle)
    if not value.isdigit() or not low_mw <= int(value) <= high_mw:
        return f"power cap {value!r} mW is outside {low_mw}..{high_mw} mW"
    return None


@dataclass
class AmdPowerCapKnob:
    """One AMD GPU's power cap (``power_cap_mw``), by UUID, through one amdsmi module."""

    session: AmdsmiSession
    module_spec: str
    uuid: str
    setting: str = POWER_CAP_SETTING

    @property
    def target(self) -> str:
        return json.dumps(
            {"kind": "amdsmi", "module": self.module_spec, "gpu": self.uuid,
             "setting": self.setting}
        )  # fmt: skip

    def _call(self, function: str, *args: Any) -> Any:
        amdsmi = self.session.module(self.module_spec)
        handle = self.session.handle(self.module_spec, self.uuid)
        try:
            return getattr(amdsmi, function)(handle, *args)
        except Exception as error:
            getter = getattr(error, "get_error_code", None)
            if callable(getter) and getter() == AMDSMI_NO_PERM:
                raise SettingError(
                    f"{function} on AMD GPU {self.uuid}: no permission. AMD power caps need "
                    "root (or the greenmon helper)."
                ) from None
            raise

    def read(self) -> str:
        return str(int(self._call("amdsmi_get_power_cap_info")["power_cap"]) // 1000)

    def previous(self) -> str:
        return self.read()

    def write(self, value: str) -> None:
        # sensor 0: the GPU's package power, the one amdsmi_get_power_cap_info reports
        self._call("amdsmi_set_power_cap", 0, int(value) * 1000)


def check_amd_gpu(
    levels: Mapping[str, list[Any]],
    module_spec: str,
    devices: Sequence[int | str] | None,
    amdsmi: Any,
    privileged: bool,
    helper_problem: Callable[[], str | None],
) -> list[str]:
    """Problems that would stop a plan's GPU factors on AMD GPUs (ranges, privileges)."""
    problems: list[str] = []
    if "gpu_locked_clocks_mhz" in levels:
        problems.append(
            "gpu_locked_clocks_mhz is an NVIDIA factor: on AMD GPUs ([hardware] gpu_vendor = "
            '"amd") greenmon sets power caps only (gpu_power_limit_w)'
        )
    session = AmdsmiSession({module_spec: amdsmi} if amdsmi is not None else None)
    try:
        module = session.module(module_spec)
        gpus = gpu_handles(module, devices)
        if not gpus:
            return [*problems, "GPU factors are set but amdsmi finds no AMD GPU"]
        for uuid, handle in gpus:
            low_mw, high_mw = power_cap_range_mw(module, handle)
            for watts in levels.get("gpu_power_limit_w", []):
                if not low_mw <= watts * 1000 <= high_mw:
                    problems.append(
                        f"gpu_power_limit_w level {watts:g} is outside AMD GPU {uuid}'s range "
                        f"{low_mw / 1000:g}..{high_mw / 1000:g} W (amdsmi_get_power_cap_info)"
                    )
        privileged = privileged or getattr(module, "GREENMON_FAKE_PRIVILEGED", False)
        problem = None if privileged else helper_problem()
        if problem is not None:
            problems.append(
                "AMD GPU power caps need root: run the greenmon helper as root for this "
                f"user, or run greenmon with sudo (helper: {problem})"
            )
    except (PlanError, SettingError) as error:
        problems.append(str(error))
    except Exception as error:
        problems.append(f"amdsmi cannot check the GPU factors: {type(error).__name__}: {error}")
    finally:
        session.close()
    return problems
