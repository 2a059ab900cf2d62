"""Hardware settings applied per unit (DVFS): applied, read back, journaled, restored.

Terms:
- *hardware factor*: a plan factor that changes the machine rather than the engine:
  ``cpu_governor`` and ``cpu_max_freq_khz`` (cpufreq sysfs, every online CPU),
  ``gpu_power_limit_w`` and ``gpu_locked_clocks_mhz`` (NVML, every chosen GPU).  A level of
  ``gpu_locked_clocks_mhz`` is ``[sm_min, sm_max]`` or ``[sm_min, sm_max, memory]``.
- *knob*: one thing that can be set, named by its *target* (a JSON string stored in the
  journal, enough to find the knob again in another process): a cpufreq file, or one NVML
  setting of one GPU (by UUID) through one NVML module.
- *restore journal*: table ``restore_journal``.  A row holding the value before a change is
  committed *before* the change is made (status ``pending``); it becomes ``applied`` once
  the change is in force (with the value read back), and ``restored`` once the previous
  value is back.  Any row not ``restored`` (a crash, SIGKILL, a failed restore) is restored
  by the next daemon start or ``greenmon restore``, newest first, so the oldest previous
  value is the one left in force.  A write the hardware refuses changes nothing: its row
  becomes ``unchanged``.
- *in force*: the value read back after a write.  Hardware clamps or rounds (cpufreq to a
  listed frequency, NVML to a supported clock): the value in force is what is recorded.

NVML has no query for locked clocks: their previous value is journaled as ``reset`` and
restoring resets them (the driver default, which is what an unlocked GPU has).  Their read
back is the SM (or memory) clock in MHz just after locking.  GPUs without locked clocks
(before Volta) get application clocks instead (``sm_max`` at ``memory``, or at the highest
supported memory clock).

Privileges: NVML power limits and clocks need root or CAP_SYS_ADMIN; cpufreq needs write
access to the ``scaling_*`` files.  ``check_hardware`` says what is missing before a plan
starts.  A fake NVML module sets ``GREENMON_FAKE_PRIVILEGED = True`` to skip the check.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from greenmon.clock import now_ns
from greenmon.errors import GreenmonError, PlanError

if TYPE_CHECKING:
    from greenmon.plan import Hardware, Plan
    from greenmon.privhelper import HelperClient
    from greenmon.store import Store

CPU_FACTORS = ("cpu_governor", "cpu_max_freq_khz")
GPU_FACTORS = ("gpu_power_limit_w", "gpu_locked_clocks_mhz")
HARDWARE_FACTORS = CPU_FACTORS + GPU_FACTORS

CAP_SYS_ADMIN_BIT = 21  # linux/capability.h
NVML_NOT_SUPPORTED = 3
NVML_NO_PERMISSION = 4
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2


class SettingError(GreenmonError):
    title = "Hardware setting failed"


# -- cpufreq -------------------------------------------------------------------------------
def _parse_cpu_list(text: str) -> set[int]:
    """Kernel CPU lists: ``0-3,6,8-9``."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def online_cpufreq_dirs(root: Path) -> list[Path]:
    """``cpuN/cpufreq`` of every online CPU (root/online, else each cpuN/online)."""
    cpus: list[tuple[int, Path]] = []
    for entry in root.glob("cpu[0-9]*"):
        match = re.fullmatch(r"cpu(\d+)", entry.name)
        if match and (entry / "cpufreq").is_dir():
            cpus.append((int(match.group(1)), entry))
    online: set[int] | None = None
    with contextlib.suppress(OSError):
        online = _parse_cpu_list((root / "online").read_text())
    out = []
    for number, entry in sorted(cpus):
        if online is not None:
            if number not in online:
                continue
        else:
            # cpu0 usually has no online file: it cannot be taken offline.
            with contextlib.suppress(OSError):
                if (entry / "online").read_text().strip() == "0":
                    continue
        out.append(entry / "cpufreq")
    return out


def _read(path: Path) -> str:
    return path.read_text().strip()


@dataclass(frozen=True)
class CpufreqRange:
    governors: frozenset[str]
    min_khz: int
    max_khz: int
    listed_khz: tuple[int, ...]  # scaling_available_frequencies, where the driver has it


def cpufreq_range(cpufreq_dir: Path) -> CpufreqRange:
    governors = frozenset(_read(cpufreq_dir / "scaling_available_governors").split())
    min_khz = int(_read(cpufreq_dir / "cpuinfo_min_freq"))
    max_khz = int(_read(cpufreq_dir / "cpuinfo_max_freq"))
    listed: tuple[int, ...] = ()
    with contextlib.suppress(OSError, ValueError):
        listed = tuple(
            sorted(int(v) for v in _read(cpufreq_dir / "scaling_available_frequencies").split())
        )
    if listed:
        min_khz, max_khz = max(min_khz, listed[0]), min(max_khz, listed[-1])
    return CpufreqRange(governors, min_khz, max_khz, listed)


# -- NVML ----------------------------------------------------------------------------------
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


def _nvml_code(error: BaseException) -> int | None:
    value = getattr(error, "value", None)
    return value if isinstance(value, int) else None


def _gpu_handles(nvml: Any, devices: Sequence[int | str] | None) -> list[tuple[str, Any]]:
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
    """NVML modules opened by spec (initialised once, shut down on close)."""

    def __init__(self, modules: Mapping[str, Any] | None = None) -> None:
        # Pre-built modules by spec (tests pass a FakeNvml instance here).
        self._given = dict(modules or {})
        self._open: dict[str, Any] = {}

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


# -- knobs ---------------------------------------------------------------------------------
class Knob(Protocol):
    @property
    def target(self) -> str: ...

    def read(self) -> str: ...

    def write(self, value: str) -> None: ...


@dataclass
class CpufreqKnob:
    path: Path

    @property
    def target(self) -> str:
        return json.dumps({"kind": "cpufreq", "path": str(self.path)})

    def read(self) -> str:
        return _read(self.path)

    def write(self, value: str) -> None:
        try:
            self.path.write_text(value)
        except OSError as error:
            raise SettingError(
                f"cannot write {value!r} to {self.path}: {error.strerror}. cpufreq settings "
                "need write access to the scaling_* files (run as root, or grant the group "
                "write access to them)."
            ) from None


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
            code = _nvml_code(error)
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


@dataclass
class HelperKnob:
    """A knob the greenmon helper writes (greenmon/privhelper.py), for a process that is
    not root; reading needs no privilege and stays direct."""

    knob: Knob
    helper: HelperClient

    @property
    def target(self) -> str:
        return self.knob.target

    def read(self) -> str:
        return self.knob.read()

    def write(self, value: str) -> None:
        from greenmon.privhelper import HelperRefused

        try:
            self.helper.setting_write(self.target, value)
        except HelperRefused as error:
            raise SettingError(str(error), title=error.title) from None


def settings_helper(hardware: Hardware | None = None) -> HelperClient | None:
    """Who writes hardware settings: None when this process is root (directly), else a
    client of the greenmon helper (connected on first use)."""
    if os.geteuid() == 0:
        return None
    from greenmon.privhelper import HelperClient

    return HelperClient(hardware.helper_socket if hardware is not None else None)


def _writer(knob: Knob, helper: HelperClient | None) -> Knob:
    return knob if helper is None else HelperKnob(knob, helper)


def knob_from_target(target: str, session: NvmlSession) -> Knob:
    data = json.loads(target)
    if data["kind"] == "cpufreq":
        return CpufreqKnob(Path(data["path"]))
    return NvmlKnob(session, data["module"], data["gpu"], data["setting"])


# -- checking a plan ---------------------------------------------------------------------
def hardware_levels(plan: Plan) -> dict[str, list[Any]]:
    """The plan's hardware factors and their levels (empty: nothing to check or apply)."""
    factors = plan.spec.factors
    return {
        key: list(getattr(factors, key))
        for key in HARDWARE_FACTORS
        if getattr(factors, key) is not None
    }


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
    from greenmon.privhelper import helper_answers

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


def _check_gpu(levels: Mapping[str, list[Any]], hardware: Hardware, nvml: Any) -> list[str]:
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
        gpus = _gpu_handles(module, hardware.gpu_devices)
        if not gpus:
            return ["GPU factors are set but NVML finds no GPU"]
        for uuid, handle in gpus:
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


def check_hardware(plan: Plan, *, nvml: Any = None) -> list[str]:
    """Problems that would stop the plan's hardware factors here: levels outside the
    hardware's range and missing privileges.  No hardware factor: nothing is read."""
    levels = hardware_levels(plan)
    problems: list[str] = []
    if any(key in levels for key in CPU_FACTORS):
        problems += _check_cpu(levels, plan.spec.hardware)
    if any(key in levels for key in GPU_FACTORS):
        problems += _check_gpu(levels, plan.spec.hardware, nvml)
    return problems


def hardware_access(plan: Plan) -> str | None:
    """How the plan's hardware factors would be written here, in words (None: it has none)."""
    if not hardware_levels(plan):
        return None
    if os.geteuid() == 0:
        return "hardware settings are written directly (greenmon runs as root)"
    from greenmon.privhelper import helper_socket_path

    path = helper_socket_path(plan.spec.hardware.helper_socket)
    problem = _helper_problem(plan.spec.hardware)
    if problem is None:
        return f"hardware settings are written through the greenmon helper at {path}"
    return (
        "hardware settings cannot be written: greenmon is not root and the helper does not "
        f"answer ({problem})"
    )


def require_hardware(plan: Plan, *, nvml: Any = None) -> None:
    problems = check_hardware(plan, nvml=nvml)
    if problems:
        raise PlanError(
            "The plan's hardware factors cannot be applied here: "
            + " ".join(f"({i}) {p}." for i, p in enumerate(problems, start=1))
        )


# -- applying and restoring --------------------------------------------------------------
@dataclass
class Applied:
    journal_id: int
    knob: Knob


@dataclass
class UnitSettings:
    """Applies one unit's hardware levels through the journal and restores them after."""

    store: Store
    hardware: Hardware
    session_id: str
    experiment_id: str
    unit_id: int
    nvml: Any = None  # a pre-built NVML module (tests); else hardware.nvml_module
    applied: list[Applied] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = {self.hardware.nvml_module: self.nvml} if self.nvml is not None else None
        self._session = NvmlSession(given)
        self._helper = settings_helper(self.hardware)

    # one journaled change
    def _set(self, knob: Knob, value: str, previous: str) -> str:
        rows = self.store.execute(
            """INSERT INTO restore_journal (session_id, experiment_id, unit_id, target,
                   previous_value, applied_value, status)
               VALUES (?, ?, ?, ?, ?, ?, 'pending') RETURNING journal_id""",
            [self.session_id, self.experiment_id, self.unit_id, knob.target, previous, value],
        )
        journal_id = int(rows[0][0])
        try:
            _writer(knob, self._helper).write(value)
        except BaseException:
            # Refused (unsupported, no permission, invalid): nothing changed to restore.
            self.store.execute(
                "UPDATE restore_journal SET status = 'unchanged' WHERE journal_id = ?",
                [journal_id],
            )
            raise
        self.applied.append(Applied(journal_id, knob))
        in_force = knob.read()
        self.store.execute(
            "UPDATE restore_journal SET status = 'applied', read_back = ?, applied_ns = ? "
            "WHERE journal_id = ?",
            [in_force, now_ns(), journal_id],
        )
        return in_force

    def _note(self, key: str, requested: Any, in_force: Mapping[str, str]) -> None:
        values = set(in_force.values())
        self.record[key] = {
            "requested": requested,
            "in_force": values.pop() if len(values) == 1 else dict(in_force),
        }

    def apply(self, levels: Mapping[str, Any]) -> dict[str, Any]:
        """Apply the unit's hardware levels; returns what is in force (units.settings)."""
        root = Path(self.hardware.cpufreq_root)
        for key, file_name in (
            ("cpu_governor", "scaling_governor"),
            ("cpu_max_freq_khz", "scaling_max_freq"),
        ):
            if key in levels:
                in_force = {}
                for directory in online_cpufreq_dirs(root):
                    knob = CpufreqKnob(directory / file_name)
                    in_force[directory.parent.name] = self._set(knob, str(levels[key]), knob.read())
                self._note(key, levels[key], in_force)
        if any(key in levels for key in GPU_FACTORS):
            self._apply_gpu(levels)
        return self.record

    def _apply_gpu(self, levels: Mapping[str, Any]) -> None:
        spec = self.hardware.nvml_module
        gpus = _gpu_handles(self._session.module(spec), self.hardware.gpu_devices)
        if "gpu_power_limit_w" in levels:
            in_force = {}
            for uuid, _ in gpus:
                knob = NvmlKnob(self._session, spec, uuid, "power_limit_mw")
                milliwatts = str(round(float(levels["gpu_power_limit_w"]) * 1000))
                in_force[uuid] = self._set(knob, milliwatts, knob.previous())
            self._note("gpu_power_limit_mw", round(levels["gpu_power_limit_w"] * 1000), in_force)
        if "gpu_locked_clocks_mhz" in levels:
            level = [int(v) for v in levels["gpu_locked_clocks_mhz"]]
            sm_in_force: dict[str, str] = {}
            mem_in_force: dict[str, str] = {}
            method: dict[str, str] = {}
            for uuid, handle in gpus:
                knob = NvmlKnob(self._session, spec, uuid, "gpu_locked_clocks_mhz")
                try:
                    sm_in_force[uuid] = self._set(knob, f"{level[0]},{level[1]}", "reset")
                    method[uuid] = "locked"
                except Exception as error:
                    if _nvml_code(error) != NVML_NOT_SUPPORTED:
                        raise
                    # Before Volta: application clocks, one (memory, SM) pair.
                    pair = self._applications_pair(handle, level)
                    app = NvmlKnob(self._session, spec, uuid, "applications_clocks_mhz")
                    mem, sm = self._set(app, pair, app.previous()).split(",")
                    sm_in_force[uuid], mem_in_force[uuid] = sm, mem
                    method[uuid] = "applications"
                    continue
                if len(level) == 3:
                    mem_knob = NvmlKnob(self._session, spec, uuid, "memory_locked_clocks_mhz")
                    try:
                        mem_in_force[uuid] = self._set(mem_knob, f"{level[2]},{level[2]}", "reset")
                    except Exception as error:
                        if _nvml_code(error) != NVML_NOT_SUPPORTED:
                            raise
                        mem_in_force[uuid] = "not supported"
            self._note("gpu_sm_clock_mhz", level[:2], sm_in_force)
            if mem_in_force:
                self._note(
                    "gpu_memory_clock_mhz", level[2] if len(level) == 3 else None, mem_in_force
                )
            self._note("gpu_clock_method", None, method)

    def _applications_pair(self, handle: Any, level: Sequence[int]) -> str:
        nvml = self._session.module(self.hardware.nvml_module)
        memory = sorted(int(m) for m in nvml.nvmlDeviceGetSupportedMemoryClocks(handle))
        mem = level[2] if len(level) == 3 else memory[-1]
        graphics = sorted(int(c) for c in nvml.nvmlDeviceGetSupportedGraphicsClocks(handle, mem))
        # The highest supported SM clock not above sm_max (application clocks are one pair).
        sm = max([c for c in graphics if c <= level[1]] or graphics[:1])
        return f"{mem},{sm}"

    def restore(self) -> list[str]:
        """Restore this unit's changes, newest first; the problems that remain."""
        problems = restore_rows(
            self.store, [a.journal_id for a in self.applied], self._session, self._helper
        )
        self.applied.clear()
        self._session.close()
        if self._helper is not None:
            self._helper.close()
        return problems


@dataclass
class Restored:
    journal_id: int
    target: str
    value: str
    ok: bool
    message: str


def restore_rows(
    store: Store,
    journal_ids: Sequence[int] | None,
    session: NvmlSession | None = None,
    helper: HelperClient | None = None,
) -> list[str]:
    """Restore the given rows (None: every row not 'restored'); the problems left."""
    return [r.message for r in restore_journal(store, journal_ids, session, helper) if not r.ok]


def restore_journal(
    store: Store,
    journal_ids: Sequence[int] | None = None,
    session: NvmlSession | None = None,
    helper: HelperClient | None = None,
) -> list[Restored]:
    """Write back the previous value of each journal row not yet restored, newest first.
    Not root: through ``helper``, else the greenmon helper at the default socket."""
    if journal_ids is not None and not journal_ids:
        return []
    sql = (
        "SELECT journal_id, target, previous_value FROM restore_journal "
        "WHERE status NOT IN ('restored', 'unchanged')"
    )
    params: list[Any] = []
    if journal_ids is not None:
        sql += f" AND journal_id IN ({', '.join('?' * len(journal_ids))})"
        params = list(journal_ids)
    rows = store.execute(sql + " ORDER BY journal_id DESC", params)
    own_session = session is None
    session = session or NvmlSession()
    own_helper = helper is None and bool(rows)
    if own_helper:
        helper = settings_helper()
    results: list[Restored] = []
    try:
        for journal_id, target, previous in rows:
            try:
                knob = knob_from_target(str(target), session)
                _writer(knob, helper).write(str(previous))
            except Exception as error:
                store.execute(
                    "UPDATE restore_journal SET status = 'restore_failed' WHERE journal_id = ?",
                    [journal_id],
                )
                results.append(
                    Restored(
                        int(journal_id),
                        str(target),
                        str(previous),
                        False,
                        f"could not restore {describe_target(str(target))} to {previous}: "
                        f"{error} (it stays in the journal; `greenmon restore` retries)",
                    )
                )
                continue
            store.execute(
                "UPDATE restore_journal SET status = 'restored', restored_ns = ? "
                "WHERE journal_id = ?",
                [now_ns(), journal_id],
            )
            results.append(
                Restored(
                    int(journal_id),
                    str(target),
                    str(previous),
                    True,
                    f"restored {describe_target(str(target))} to {previous}",
                )
            )
    finally:
        if own_session:
            session.close()
        if own_helper and helper is not None:
            helper.close()
    return results


def describe_target(target: str) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        data = json.loads(target)
        if data["kind"] == "cpufreq":
            return str(data["path"])
        return f"GPU {data['gpu']} {data['setting']} (via {data['module']})"
    return target
