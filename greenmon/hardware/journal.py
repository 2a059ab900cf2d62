"""The restore journal: a unit's hardware settings applied, read back and restored.

Terms:
- *restore journal*: table ``restore_journal``.  A row holding the value before a change is
  committed *before* the change is made (status ``pending``); it becomes ``applied`` once
  the change is in force (with the value read back), and ``restored`` once the previous
  value is back.  Any row not ``restored`` (a crash, SIGKILL, a failed restore) is restored
  by the next daemon start or ``greenmon restore``, newest first, so the oldest previous
  value is the one left in force.  A write the hardware refuses changes nothing: its row
  becomes ``unchanged``.
- *in force*: the value read back after a write; what ``UnitSettings.apply`` returns is
  stored in the ``units.settings`` column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenmon.clock import now_ns
from greenmon.hardware.amd import AmdPowerCapKnob
from greenmon.hardware.amd import gpu_handles as amd_gpu_handles
from greenmon.hardware.cpufreq import CpufreqKnob, online_cpufreq_dirs
from greenmon.hardware.knob import Knob, describe_target, settings_helper, writer
from greenmon.hardware.nvml import NVML_NOT_SUPPORTED, NvmlKnob, NvmlSession, gpu_handles, nvml_code
from greenmon.hardware.spec import GPU_FACTORS, Hardware

if TYPE_CHECKING:
    from greenmon.privhelper.client import HelperClient
    from greenmon.store import Store


def knob_from_target(target: str, session: NvmlSession) -> Knob:
    """The knob a journal row's target names."""
    data = json.loads(target)
    if data["kind"] == "cpufreq":
        return CpufreqKnob(Path(data["path"]))
    if data["kind"] == "amdsmi":
        return AmdPowerCapKnob(session.amdsmi, data["module"], data["gpu"], data["setting"])
    return NvmlKnob(session, data["module"], data["gpu"], data["setting"])


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
    amdsmi: Any = None  # a pre-built amdsmi module (tests); else hardware.amdsmi_module
    applied: list[Applied] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = {self.hardware.nvml_module: self.nvml} if self.nvml is not None else None
        amd = {self.hardware.amdsmi_module: self.amdsmi} if self.amdsmi is not None else None
        self._session = NvmlSession(given, amd)
        self._helper = settings_helper(self.hardware)

    # one journaled change
    def _set(self, knob: Knob, value: str, previous: str) -> str:
        journal_id = self.store.journal_setting(
            self.session_id, self.experiment_id, self.unit_id, knob.target, previous, value
        )
        try:
            writer(knob, self._helper).write(value)
        except BaseException:
            # Refused (unsupported, no permission, invalid): nothing changed to restore.
            self.store.set_setting_status(journal_id, "unchanged")
            raise
        self.applied.append(Applied(journal_id, knob))
        in_force = knob.read()
        self.store.set_setting_status(
            journal_id, "applied", read_back=in_force, applied_ns=now_ns()
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
        if self.hardware.gpu_vendor == "amd":
            self._apply_amd(levels)
            return
        spec = self.hardware.nvml_module
        gpus = gpu_handles(self._session.module(spec), self.hardware.gpu_devices)
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
                    if nvml_code(error) != NVML_NOT_SUPPORTED:
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
                        if nvml_code(error) != NVML_NOT_SUPPORTED:
                            raise
                        mem_in_force[uuid] = "not supported"
            self._note("gpu_sm_clock_mhz", level[:2], sm_in_force)
            if mem_in_force:
                self._note(
                    "gpu_memory_clock_mhz", level[2] if len(level) == 3 else None, mem_in_force
                )
            self._note("gpu_clock_method", None, method)

    def _apply_amd(self, levels: Mapping[str, Any]) -> None:
        """AMD GPUs: the power cap only (greenmon/hardware/amd.py)."""
        if "gpu_power_limit_w" not in levels:
            return
        spec = self.hardware.amdsmi_module
        session = self._session.amdsmi
        in_force = {}
        milliwatts = round(float(levels["gpu_power_limit_w"]) * 1000)
        for uuid, _ in amd_gpu_handles(session.module(spec), self.hardware.gpu_devices):
            knob = AmdPowerCapKnob(session, spec, uuid)
            in_force[uuid] = self._set(knob, str(milliwatts), knob.previous())
        self._note("gpu_power_limit_mw", milliwatts, in_force)

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
    try:
        return [
            _restore_row(store, int(journal_id), str(target), str(previous), session, helper)
            for journal_id, target, previous in rows
        ]
    finally:
        if own_session:
            session.close()
        if own_helper and helper is not None:
            helper.close()


def _restore_row(
    store: Store,
    journal_id: int,
    target: str,
    previous: str,
    session: NvmlSession,
    helper: HelperClient | None,
) -> Restored:
    """Write one row's previous value back and mark the row restored (or restore_failed)."""
    try:
        writer(knob_from_target(target, session), helper).write(previous)
    except Exception as error:
        store.set_setting_status(journal_id, "restore_failed")
        return Restored(
            journal_id,
            target,
            previous,
            False,
            f"could not restore {describe_target(target)} to {previous}: "
            f"{error} (it stays in the journal; `greenmon restore` retries)",
        )
    store.set_setting_status(journal_id, "restored", restored_ns=now_ns())
    return Restored(
        journal_id, target, previous, True, f"restored {describe_target(target)} to {previous}"
    )
