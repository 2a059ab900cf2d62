"""greenmon's own process tree, read from /proc: which processes are ours, and their CPU time.

Terms:
- *own tree*: the root processes (the daemon, which runs engines in-process, and a watched
  process such as a served engine) and all their descendants (a server greenmon started,
  the workers it forked).
- *background*: every other process on the machine.  The host probe splits the system's
  busy CPU time into the own tree and the background (probes/host.py); the NVML probe
  counts the background's processes on each GPU (probes/nvml.py).
- *steal*: on a virtual machine, time a virtual CPU was ready to run while the hypervisor
  ran something else.  /proc/stat (and psutil) count it as busy, but no process here used
  it: on a quiet 2-core VM, steal rose to 6-42 % of a core exactly while greenmon measured
  (the host gives a busy guest less), and counted as background it flagged a unit
  ``background_load`` with nothing else running.  So it is kept out of the background and
  recorded on its own (``steal.cpu_percent``).

Descendants come from ``/proc/PID/task/TID/children`` (each thread lists the children it
started); a kernel without that file (CONFIG_PROC_CHILDREN off) is answered by one scan of
``/proc/*/stat`` for parent ids.  Membership is refreshed at most once per
``REFRESH_NS``: a process that starts in between is counted as background until then, a
bounded error that keeps the per-read cost to one small read per known process.

CPU time of the tree counts each member's ``utime + stime + cutime + cstime``: when a
child exits and its parent reaps it, its time moves into the parent's ``cutime``, so the
total does not drop when a member disappears.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

REFRESH_NS = 1_000_000_000


def _stat_fields(proc_root: Path, pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (field 3 on), or None if gone."""
    try:
        raw = (proc_root / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(b")") + 2 :].split()


def _children(proc: str, pid: int) -> list[int] | None:
    """Children of ``pid`` from its threads' ``children`` files; None if the kernel has none.

    Plain string paths and ``os`` calls: this runs once per refresh for every thread of
    every member (a daemon has dozens), where pathlib's parsing cost more than the reads."""
    task = f"{proc}/{pid}/task"
    try:
        tids = os.listdir(task)
    except OSError:
        return []  # the process is gone
    found: list[int] = []
    for tid in tids:
        try:
            fd = os.open(f"{task}/{tid}/children", os.O_RDONLY)
        except FileNotFoundError:
            if os.path.isdir(f"{task}/{tid}"):
                return None  # the thread is there, its children file is not
            continue  # the thread ended since the listing
        except OSError:
            continue
        try:
            text = os.read(fd, 65536)
        except OSError:
            continue
        finally:
            os.close(fd)
        found += [int(child) for child in text.split()]
    return found


def _parents(proc_root: Path) -> dict[int, int]:
    """pid -> parent pid of every process (the fallback scan)."""
    out: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(proc_root):
            if name.isdigit():
                fields = _stat_fields(proc_root, int(name))
                if fields and len(fields) > 1:
                    out[int(name)] = int(fields[1])
    return out


def tree_pids(proc_root: Path, roots: Iterable[int]) -> set[int]:
    """The roots that exist and all their descendants."""
    proc = str(proc_root)
    pending = [pid for pid in roots if os.path.exists(f"{proc}/{pid}")]
    members: set[int] = set()
    parents: dict[int, int] | None = None
    while pending:
        pid = pending.pop()
        if pid in members:
            continue
        members.add(pid)
        children = _children(proc, pid)
        if children is None:
            if parents is None:
                parents = _parents(proc_root)
            children = [child for child, parent in parents.items() if parent == pid]
        pending += children
    return members


class ProcessTree:
    """The own tree of ``roots`` under ``proc_root``: members and their CPU time in ticks.

    Each member's stat file stays open between reads (``os.pread`` on a kept descriptor
    costs a fraction of opening it again, as in probes/host.py); ``close()`` releases them."""

    def __init__(self, proc_root: str | Path, roots: Iterable[int]) -> None:
        self.proc_root = Path(proc_root)
        self.roots = list(dict.fromkeys(roots))
        self._fds: dict[int, int] = {}
        self._refresh_at_ns = 0
        # Each member's stat fields (after the command name) as the last cpu_ticks() read
        # them, for a caller that wants one of them in the same tick (probes/host.py).
        self.stat_fields: dict[int, list[bytes]] = {}

    def pids(self) -> set[int]:
        """The members, refreshed when the last look is older than REFRESH_NS."""
        now = time.monotonic_ns()
        if now >= self._refresh_at_ns:
            members = tree_pids(self.proc_root, self.roots)
            for pid in set(self._fds) - members:
                with contextlib.suppress(OSError):
                    os.close(self._fds.pop(pid))
            for pid in members - set(self._fds):
                with contextlib.suppress(OSError):
                    self._fds[pid] = os.open(self.proc_root / str(pid) / "stat", os.O_RDONLY)
            self._refresh_at_ns = now + REFRESH_NS
        return set(self._fds)

    def cpu_ticks(self) -> int:
        """CPU time of every member (own and reaped children's), in clock ticks."""
        total = 0
        self.pids()
        self.stat_fields = {}
        for pid, fd in self._fds.items():
            try:
                raw = os.pread(fd, 1024, 0)
            except OSError:
                continue  # gone since the last refresh
            fields = raw[raw.rfind(b")") + 2 :].split()
            self.stat_fields[pid] = fields
            if len(fields) >= 15:
                # utime stime cutime cstime are fields 14-17 (1-based), 11-14 here
                total += sum(int(f) for f in fields[11:15])
        return total

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}
        self.stat_fields = {}
        self._refresh_at_ns = 0


def split_percent(
    busy_ticks: int, total_ticks: int, own_ticks: int, cores: int, steal: int = 0
) -> tuple[float, float, float]:
    """(own, background, steal) CPU over one interval, in percent of one core (100 = one
    core busy, as ``top`` shows it): the system's busy ticks, less the hypervisor's steal,
    less the own tree's, are the background's.

    ``total_ticks`` (busy + idle over every core) gives the interval's length in core-ticks,
    so every figure uses the same reading of /proc/stat.  Tick accounting differs slightly
    between /proc/stat and a process's stat, so each share is clamped to what was busy."""
    if total_ticks <= 0 or cores <= 0:
        return 0.0, 0.0, 0.0
    ticks_per_core = total_ticks / cores
    steal = min(max(steal, 0), max(busy_ticks, 0))
    ran = busy_ticks - steal  # ticks a process or the kernel on this machine used
    own = min(max(own_ticks, 0), ran)
    background = max(ran - own, 0)
    return (
        100.0 * own / ticks_per_core,
        100.0 * background / ticks_per_core,
        100.0 * steal / ticks_per_core,
    )
