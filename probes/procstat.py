"""The one reader of /proc/stat: the machine's CPU ticks since boot.

The host probe (per-core utilisation, background and steal), the estimate probe (its
linear model's utilisation), greenmon/interference.py (waiting for quiet) and
greenmon/attribution.py (a process's share of busy time) all read the same counters, so
they read them here, with the same arithmetic as psutil: busy = total - idle - iowait,
guest time counted once inside user time, steal (the time a virtual machine's hypervisor
ran something else) reported apart so each caller decides what it means.

``ProcStat`` keeps one descriptor open and reads with ``os.pread``: the host and estimate
probes call it on the sampling thread at every tick, where re-opening the file would cost
more than the data.  ``proc_root`` points at a fake tree in tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

# The longest /proc/stat cpu line (ten 20-digit counters); the cpu lines come first.
STAT_LINE_BYTES = 256


def tick_ns() -> int:
    """How often /proc/stat's counters advance: one tick of the kernel's USER_HZ (10 ms on
    every common kernel), the unit its CPU times are written in."""
    ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return round(1e9 / ticks_per_s)


def busy_total(fields: Sequence[bytes]) -> tuple[int, int]:
    """(busy, total) ticks of one /proc/stat cpu line, as psutil counts them."""
    times = [int(f) for f in fields[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice: guest and
    # guest_nice are already inside user and nice.
    total = sum(times[:8])
    idle = times[3] + (times[4] if len(times) > 4 else 0)
    return total - idle, total


def steal_ticks(fields: Sequence[bytes]) -> int:
    """Steal ticks of one /proc/stat cpu line (0 on kernels that do not report it)."""
    return int(fields[8]) if len(fields) > 8 else 0


def count_cores(lines: Sequence[bytes]) -> int:
    """The ``cpuN`` lines of /proc/stat: the logical CPUs the kernel counts."""
    return sum(1 for line in lines if line[:3] == b"cpu" and line[3:4].isdigit())


class ProcStat:
    """/proc/stat on a descriptor kept open from construction to ``close()``.

    ``cores`` is counted once, at opening; ``lines(n)`` reads only the first ``n`` cpu
    lines' worth of bytes.  Raises OSError when the file cannot be opened (not Linux)."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.path = Path(proc_root) / "stat"
        self._fd: int | None = os.open(self.path, os.O_RDONLY)
        self.cores = count_cores(self.lines(read_all=True))

    def lines(self, cpu_lines: int = 1, *, read_all: bool = False) -> list[bytes]:
        """The file's lines, at least its first ``cpu_lines`` whole (or all of it)."""
        assert self._fd is not None, "read after close()"
        size = 1 << 20 if read_all else STAT_LINE_BYTES * cpu_lines
        return os.pread(self._fd, size, 0).split(b"\n")

    def machine_fields(self) -> list[bytes]:
        """The first line's fields: every core's ticks together."""
        assert self._fd is not None, "read after close()"
        return os.pread(self._fd, STAT_LINE_BYTES, 0).split(b"\n", 1)[0].split()

    def machine_ticks(self) -> tuple[int, int, int]:
        """(busy, total, steal) ticks of every core since boot; busy includes steal."""
        fields = self.machine_fields()
        busy, total = busy_total(fields)
        return busy, total, steal_ticks(fields)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
