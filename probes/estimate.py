"""Estimate probe: CPU power *modelled* from utilisation, for machines that measure nothing.

Virtual machines, CI runners and most laptops without root expose no CPU energy counter
(no powercap, no MSR).  This probe then gives a labelled estimate so a run still has a CPU
energy figure, which nobody may mistake for a measurement.

Terms:
- *utilisation* ``u``: the share of CPU time (all logical CPUs) that was not idle, iowait
  or steal over the interval since the previous read, from /proc/stat (or
  ``psutil.cpu_times()``) deltas.  Steal is time a virtual machine's CPU was ready but its
  hypervisor ran something else (probes/proctree.py): the physical core's power then
  belongs to another guest, so counting it as busy inflated the estimate exactly when a
  busy guest is given less (6-42% of a core on a quiet 2-core VM).  It is
  computed here from our own previous reading rather than ``psutil.cpu_percent()``, whose
  state is process-wide and shared with the host probe (two callers would each see the
  interval since the *other's* last call).
- *model*: linear between idle and TDP, ``power_w = idle_w + (tdp_w - idle_w) * u``, with
  ``idle_w = idle_fraction * tdp_w``.  When ``tdp_w`` is not configured it defaults to
  3.5 W per logical CPU and ``idle_fraction`` to 0.74 / 3.5 (about 0.21): the per-vCPU
  min/max coefficients of the Cloud Carbon Footprint methodology, averaged over cloud CPU
  microarchitectures.  Set ``tdp_w`` to the package's TDP for a desktop or server part.

Channels: ``cpu.power_w`` (W, gauge, domain ``cpu``) with metadata ``estimated: true``,
``fallback_for: "cpu"``, ``model``, ``tdp_w`` and ``idle_w``; and ``cpu.utilisation_percent``
(the input the estimate was made from, no domain).

The probe is enabled by default and always available, as a *fallback*: ``fallback_for``
says that results must prefer any measured channel of domain ``cpu`` (RAPL, EnergiBridge)
over this one and never add the two; the results views choose per domain.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import ClassVar

import psutil

from greenmon.probes.base import Channel, ProbeUnavailable, Values
from greenmon.probes.options import ProbeOptions
from greenmon.probes.procstat import ProcStat, tick_ns

# Cloud Carbon Footprint, "Energy estimate (Watt-hours)" per vCPU: min 0.74 W, max 3.5 W.
DEFAULT_TDP_W_PER_CPU = 3.5
DEFAULT_IDLE_W_PER_CPU = 0.74

# (busy seconds, total seconds) of all CPUs since boot.
CpuTimesFn = Callable[[], tuple[float, float]]


class Options(ProbeOptions, kw_only=True, forbid_unknown_fields=True):
    # The CPU package's TDP in watts (all sockets); None: 3.5 W per logical CPU.
    tdp_w: float | None = None
    # Idle power as a share of tdp_w; None: 0.74 / 3.5.
    idle_fraction: float | None = None


def psutil_cpu_times() -> tuple[float, float]:
    times = psutil.cpu_times()
    total_s = float(sum(times))
    idle_s = float(times.idle) + float(getattr(times, "iowait", 0.0))
    return total_s - idle_s - float(getattr(times, "steal", 0.0)), total_s


class ProcStatTimes:
    """psutil's figures (the same busy, less steal, and total) from the first line of
    /proc/stat, through probes/procstat.py's kept descriptor: 15 µs a read where
    ``psutil.cpu_times()`` costs about 45 µs, and in a daemon thread woken ten times a
    second, with cold caches, 200 µs.  Steal counts as idle here: the model estimates what
    this machine's CPU drew, and a hypervisor's other guests ran on no core of it.  Where
    there is no /proc/stat (not Linux), psutil answers."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self._stat: ProcStat | None = None
        with contextlib.suppress(OSError):
            self._stat = ProcStat(proc_root)
        self._tick_s = tick_ns() / 1e9

    def __call__(self) -> tuple[float, float]:
        if self._stat is None:
            return psutil_cpu_times()
        busy, total, steal = self._stat.machine_ticks()
        return (busy - steal) * self._tick_s, total * self._tick_s

    def close(self) -> None:
        if self._stat is not None:
            self._stat.close()
            self._stat = None


def linear_power_w(utilisation: float, idle_w: float, tdp_w: float) -> float:
    """Power of the linear model at ``utilisation`` in [0, 1] (clamped)."""
    u = min(1.0, max(0.0, utilisation))
    return idle_w + (tdp_w - idle_w) * u


class EstimateProbe:
    name: ClassVar[str] = "estimate"
    # Its input is the host's utilisation, so the host's pace (and wake-ups); it is read
    # at every edge too.
    default_rate_hz: ClassVar[float] = 1.0

    def __init__(
        self,
        options: Options | None = None,
        *,
        cpu_times: CpuTimesFn | None = None,
        logical_cpus: int | None = None,
    ) -> None:
        self.options = options or Options()
        # None: /proc/stat on a kept descriptor, opened by open() and closed by close()
        self._injected = cpu_times
        self._proc_stat: ProcStatTimes | None = None
        self._cpu_times: CpuTimesFn = cpu_times or psutil_cpu_times
        cpus = logical_cpus if logical_cpus is not None else (psutil.cpu_count() or 1)
        if self.options.tdp_w is not None:
            self.tdp_w = self.options.tdp_w
            fraction = self.options.idle_fraction
            self.idle_w = self.tdp_w * (
                fraction if fraction is not None else DEFAULT_IDLE_W_PER_CPU / DEFAULT_TDP_W_PER_CPU
            )
        else:
            self.tdp_w = DEFAULT_TDP_W_PER_CPU * cpus
            fraction = self.options.idle_fraction
            self.idle_w = (
                self.tdp_w * fraction if fraction is not None else DEFAULT_IDLE_W_PER_CPU * cpus
            )
        self._last: tuple[float, float] | None = None

    def open(self) -> Sequence[Channel]:
        if self.tdp_w <= 0 or not 0 <= self.idle_w <= self.tdp_w:
            raise ProbeUnavailable(
                f"[probes.estimate] gives tdp_w={self.tdp_w} W and idle {self.idle_w} W: "
                "tdp_w must be positive and idle_fraction between 0 and 1."
            )
        if self._injected is None:
            self._proc_stat = ProcStatTimes()
            self._cpu_times = self._proc_stat
        self._last = self._cpu_times()
        metadata = {
            "estimated": True,
            "fallback_for": "cpu",
            "model": "linear: idle_w + (tdp_w - idle_w) * utilisation",
            "tdp_w": self.tdp_w,
            "idle_w": self.idle_w,
            # modelled from the utilisation over the interval since the previous read
            "interval_mean": True,
            # The value is a difference of the kernel's tick counters, which advance
            # every tick: read at both edges of a window (the edges read it), its mean
            # over the window is the ticks' between them, resolved to one tick whatever
            # the polling rate, as a RAPL counter is to its update (sources.py
            # edge_period_ns).
            "counter_update_ns": tick_ns(),
        }
        return [
            Channel("cpu.power_w", "W", "gauge", domain="cpu", metadata=metadata),
            Channel(
                "cpu.utilisation_percent",
                "%",
                "gauge",
                metadata={"input_of": "cpu.power_w", "interval_mean": True},
            ),
        ]

    def read(self) -> Values:
        assert self._last is not None, "read() before open()"
        busy_s, total_s = self._cpu_times()
        last_busy_s, last_total_s = self._last
        self._last = (busy_s, total_s)
        elapsed_s = total_s - last_total_s
        if elapsed_s <= 0:
            # cpu_times ticks at the kernel's USER_HZ (10 ms): a read inside one tick has
            # nothing new to say, which is a missing value, not zero load.
            return [None, None]
        utilisation = (busy_s - last_busy_s) / elapsed_s
        return [linear_power_w(utilisation, self.idle_w, self.tdp_w), 100.0 * utilisation]

    def close(self) -> None:
        self._last = None
        if self._proc_stat is not None:
            self._proc_stat.close()
            self._proc_stat = None


def create(options: Options) -> EstimateProbe:
    return EstimateProbe(options)
