"""Host probe: system CPU, memory and swap, and one watched process, from /proc.

The observer's own cost: ``greenmon.cpu_s``, the CPU time (user + system, seconds) of the
process the probe runs in, the daemon (with any engine it runs in-process), and
``greenmon.sampling_cpu_s``, that of the sampling thread that reads this probe, which no
engine shares.  Both are counters (kind ``counter``, unit ``s``): their increase over a
window is what measuring cost in it, read at its edges like the energy counters.

Channels: ``cpu.percent`` and ``cpuN.percent`` (utilisation since the previous read, so
each sample covers exactly one sampling period), ``cpu.freq_mhz``, ``ram.used_bytes``,
``ram.percent``, ``swap.used_bytes``, ``swap.percent``, and for the watched process
(default: this process, i.e. the daemon and the engines it runs in-process)
``proc.cpu_percent`` (of one core, so it can exceed 100) and ``proc.rss_bytes``.

``tree.cpu_percent`` is the CPU of greenmon's own process tree
(the daemon with its in-process engines, the watched process, and their descendants such
as a served engine's server: probes/proctree.py) and ``background.cpu_percent`` that of
everything else (the system's busy time minus the tree's, and minus ``steal.cpu_percent``,
the time a virtual machine's hypervisor ran something else: probes/proctree.py), all in
percent of one core, so one busy core elsewhere reads 100 on any machine.

The figures are psutil's (the same files, the same arithmetic: busy = total - idle -
iowait, guest time counted once inside user time; used RAM = MemTotal - MemAvailable),
but read here with ``os.pread`` on descriptors kept open from ``open()``: one read costs
about 60 µs against 850 µs through psutil, whose per-call machinery (named tuples, a
``/proc/cpuinfo`` parse for the frequency, re-opening every file) costs far more than the
data.  The frequency comes from cpufreq's ``scaling_cur_freq`` where the kernel exposes
it; otherwise from ``/proc/cpuinfo`` (a 100 µs parse) at most once per second, the channel
having no value in between.  ``proc_root`` / ``sys_root`` point at a fake tree in tests.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from greenmon.probes.base import Channel, ProbeUnavailable, Values
from greenmon.probes.options import ProbeOptions
from greenmon.probes.procstat import ProcStat, busy_total, steal_ticks
from greenmon.probes.proctree import ProcessTree, split_percent

# /proc/cpuinfo is parsed at most this often when cpufreq is absent (virtual machines).
CPUINFO_PERIOD_NS = 1_000_000_000


class Options(ProbeOptions, kw_only=True, forbid_unknown_fields=True):
    per_core: bool = True
    # The process to watch; None watches the daemon itself.
    pid: int | None = None
    # the roots of greenmon's own process tree; None: this process and ``pid``.
    tree_pids: list[int] | None = None
    proc_root: str = "/proc"
    sys_root: str = "/sys"


def _percent(now: tuple[int, int], before: tuple[int, int]) -> float:
    busy, total = now[0] - before[0], now[1] - before[1]
    if total <= 0:
        return 0.0
    return min(100.0, max(0.0, 100.0 * busy / total))


def self_cpu_s() -> tuple[float, float]:
    """(this process's CPU seconds, the calling thread's CPU seconds): two clock reads,
    about a microsecond, so counting the observer costs the observer nothing to speak of."""
    times = os.times()
    return times.user + times.system, time.thread_time()


class HostProbe:
    name: ClassVar[str] = "host"
    # htop's pace (a refresh every 1.5 s by default), rounded to 1 s so that its reads
    # share the counters' wake-ups; windows and phases are read at their edges anyway.
    default_rate_hz: ClassVar[float] = 1.0

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self._fds: dict[str, int] = {}
        self._freq_fds: list[int] = []
        self._cores = 0
        self._stat: ProcStat | None = None
        self._last_cpu: list[tuple[int, int]] = []
        self._last_proc: tuple[float, float] | None = None  # (cpu_s, wall_s)
        self._clk_tck = os.sysconf("SC_CLK_TCK")
        self._page_bytes = os.sysconf("SC_PAGE_SIZE")
        self._cpuinfo_next_ns = 0
        self._tree: ProcessTree | None = None
        self._pid = 0
        self._cpu_count = 0
        self._last_own_ticks = 0
        self._last_steal = 0

    # -- opening -------------------------------------------------------------------------
    def _open_fd(self, key: str, path: Path) -> None:
        self._fds[key] = os.open(path, os.O_RDONLY)

    def open(self) -> Sequence[Channel]:
        proc = Path(self.options.proc_root)
        pid = self.options.pid if self.options.pid is not None else os.getpid()
        self._pid = pid
        try:
            self._stat = ProcStat(proc)
            self._open_fd("meminfo", proc / "meminfo")
        except OSError as error:
            self.close()
            raise ProbeUnavailable(
                f"cannot read {error.filename}: {error.strerror}. The host probe needs a "
                "Linux /proc; disable [probes.host] elsewhere."
            ) from None
        try:
            self._open_fd("pid_stat", proc / str(pid) / "stat")
            self._open_fd("pid_statm", proc / str(pid) / "statm")
        except OSError as error:
            self.close()
            raise ProbeUnavailable(
                f"cannot watch process {pid}: {error.strerror}. Set [probes.host] pid to a "
                "running process you may inspect, or remove it to watch the daemon."
            ) from None
        cores = self._stat.cores
        lines = self._stat.lines(cores + 1)
        self._cores = cores if self.options.per_core else 0
        self._last_cpu = [busy_total(line.split()) for line in lines[: cores + 1]]
        self._last_steal = steal_ticks(lines[0].split())
        cpufreq = Path(self.options.sys_root) / "devices/system/cpu"
        for index in range(cores):
            with contextlib.suppress(OSError):
                self._freq_fds.append(
                    os.open(cpufreq / f"cpu{index}/cpufreq/scaling_cur_freq", os.O_RDONLY)
                )
        self._last_proc = self._proc_cpu()
        self._cpu_count = cores
        roots = self.options.tree_pids
        self._tree = ProcessTree(proc, roots if roots is not None else [os.getpid(), pid])
        self._last_own_ticks = self._tree.cpu_ticks()
        # Utilisation is the mean over the interval since the previous read (tick counters'
        # differences): greenmon/energy.py integrates such a gauge as a step, exact between
        # reads at a window's edges.
        mean = {"interval_mean": True}
        channels = [Channel("cpu.percent", "%", "gauge", metadata=mean)]
        channels += [
            Channel(f"cpu{i}.percent", "%", "gauge", metadata=mean) for i in range(self._cores)
        ]
        channels += [
            Channel("cpu.freq_mhz", "MHz", "gauge"),
            Channel("ram.used_bytes", "B", "gauge"),
            Channel("ram.percent", "%", "gauge"),
            Channel("swap.used_bytes", "B", "gauge"),
            Channel("swap.percent", "%", "gauge"),
            Channel("greenmon.cpu_s", "s", "counter", metadata={"pid": os.getpid()}),
            Channel("greenmon.sampling_cpu_s", "s", "counter"),
            Channel("proc.cpu_percent", "%", "gauge", metadata={"pid": pid, **mean}),
            Channel("proc.rss_bytes", "B", "gauge", metadata={"pid": pid}),
            Channel(
                "tree.cpu_percent", "%", "gauge", metadata={"roots": self._tree.roots, **mean}
            ),
            Channel("background.cpu_percent", "%", "gauge", metadata=mean),
            Channel("steal.cpu_percent", "%", "gauge", metadata=mean),
        ]
        return channels

    # -- the files -----------------------------------------------------------------------
    def _proc_cpu(self) -> tuple[float, float] | None:
        # The watched process is a root of the own tree, whose stat file the tree has just
        # read in this tick: one read of it per tick, not two (a read from the
        # sampling thread, which sleeps between ticks, costs 50-80 us of cold syscall on a
        # VM against 6-19 us in a warm loop).
        fields = self._tree.stat_fields.get(self._pid) if self._tree is not None else None
        if fields is None:
            try:
                raw = os.pread(self._fds["pid_stat"], 1024, 0)
            except OSError:
                return None  # the watched process has exited
            # The command name (field 2) may hold spaces: split after its closing parenthesis.
            fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) < 13:
            return None
        cpu_s = (int(fields[11]) + int(fields[12])) / self._clk_tck  # utime + stime
        return cpu_s, time.monotonic()

    def _freq_mhz(self) -> float | None:
        if self._freq_fds:
            khz = [int(os.pread(fd, 32, 0)) for fd in self._freq_fds]
            return sum(khz) / len(khz) / 1e3
        now = time.monotonic_ns()
        if now < self._cpuinfo_next_ns:
            return None
        self._cpuinfo_next_ns = now + CPUINFO_PERIOD_NS
        mhz = []
        with (
            contextlib.suppress(OSError),
            open(Path(self.options.proc_root) / "cpuinfo", "rb") as handle,
        ):
            for line in handle:
                if line.startswith(b"cpu MHz"):
                    mhz.append(float(line.split(b":")[1]))
        return sum(mhz) / len(mhz) if mhz else None

    def _memory(self) -> dict[bytes, int]:
        found: dict[bytes, int] = {}
        for line in os.pread(self._fds["meminfo"], 8192, 0).split(b"\n"):
            key, _, rest = line.partition(b":")
            if key in (b"MemTotal", b"MemAvailable", b"SwapTotal", b"SwapFree"):
                found[key] = int(rest.split()[0]) * 1024
                if len(found) == 4:
                    break
        return found

    # -- one reading ---------------------------------------------------------------------
    def read(self) -> Values:
        assert self._fds, "read() before open()"
        assert self._stat is not None
        lines = self._stat.lines(self._cores + 1)
        fields = lines[0].split()
        now = [busy_total(fields)]
        now += [busy_total(lines[i].split()) for i in range(1, self._cores + 1)]
        steal = steal_ticks(fields)
        values: list[float | None] = [_percent(now[0], self._last_cpu[0])]
        values += [_percent(now[i], self._last_cpu[i]) for i in range(1, self._cores + 1)]
        assert self._tree is not None
        own_ticks = self._tree.cpu_ticks()
        own_percent, background_percent, steal_percent = split_percent(
            now[0][0] - self._last_cpu[0][0],
            now[0][1] - self._last_cpu[0][1],
            own_ticks - self._last_own_ticks,
            self._cpu_count,
            steal - self._last_steal,
        )
        self._last_own_ticks, self._last_steal = own_ticks, steal
        self._last_cpu = now
        memory = self._memory()
        ram_total = memory.get(b"MemTotal", 0)
        ram_used = ram_total - memory.get(b"MemAvailable", 0)
        swap_total = memory.get(b"SwapTotal", 0)
        swap_used = swap_total - memory.get(b"SwapFree", 0)
        proc_cpu: float | None = None
        proc_rss: float | None = None
        proc_now = self._proc_cpu()
        if proc_now is not None:
            if self._last_proc is not None and proc_now[1] > self._last_proc[1]:
                proc_cpu = (
                    100.0 * (proc_now[0] - self._last_proc[0]) / (proc_now[1] - self._last_proc[1])
                )
            self._last_proc = proc_now
            with contextlib.suppress(OSError, ValueError, IndexError):
                statm = os.pread(self._fds["pid_statm"], 256, 0).split()
                proc_rss = float(int(statm[1]) * self._page_bytes)
        values += [
            self._freq_mhz(),
            float(ram_used),
            100.0 * ram_used / ram_total if ram_total else None,
            float(swap_used),
            100.0 * swap_used / swap_total if swap_total else 0.0,
            *self_cpu_s(),
            proc_cpu,
            proc_rss,
            own_percent,
            background_percent,
            steal_percent,
        ]
        return values

    def close(self) -> None:
        if self._tree is not None:
            self._tree.close()
        if self._stat is not None:
            self._stat.close()
            self._stat = None
        for fd in [*self._fds.values(), *self._freq_fds]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds, self._freq_fds = {}, []


def create(options: Options) -> HostProbe:
    return HostProbe(options)
