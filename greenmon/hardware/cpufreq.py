"""cpufreq: the online CPUs' frequency limits and governor, read and written through sysfs.

The knobs are ``cpuN/cpufreq/scaling_governor`` and ``scaling_max_freq`` of every online
CPU under a cpufreq root (``/sys/devices/system/cpu``; tests give a fake tree).  Writing
needs write access to the ``scaling_*`` files (root, or the greenmon helper).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from greenmon.hardware.knob import SettingError


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


def read_value(path: Path) -> str:
    return path.read_text().strip()


@dataclass(frozen=True)
class CpufreqRange:
    governors: frozenset[str]
    min_khz: int
    max_khz: int
    listed_khz: tuple[int, ...]  # scaling_available_frequencies, where the driver has it


def cpufreq_range(cpufreq_dir: Path) -> CpufreqRange:
    governors = frozenset(read_value(cpufreq_dir / "scaling_available_governors").split())
    min_khz = int(read_value(cpufreq_dir / "cpuinfo_min_freq"))
    max_khz = int(read_value(cpufreq_dir / "cpuinfo_max_freq"))
    listed: tuple[int, ...] = ()
    with contextlib.suppress(OSError, ValueError):
        listed = tuple(
            sorted(
                int(v) for v in read_value(cpufreq_dir / "scaling_available_frequencies").split()
            )
        )
    if listed:
        min_khz, max_khz = max(min_khz, listed[0]), min(max_khz, listed[-1])
    return CpufreqRange(governors, min_khz, max_khz, listed)


@dataclass
class CpufreqKnob:
    path: Path

    @property
    def target(self) -> str:
        return json.dumps({"kind": "cpufreq", "path": str(self.path)})

    def read(self) -> str:
        return read_value(self.path)

    def write(self, value: str) -> None:
        try:
            self.path.write_text(value)
        except OSError as error:
            raise SettingError(
                f"cannot write {value!r} to {self.path}: {error.strerror}. cpufreq settings "
                "need write access to the scaling_* files (run as root, or grant the group "
                "write access to them)."
            ) from None
