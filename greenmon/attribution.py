"""Attributed energy: the part of the machine's measured energy that one process tree, or
one request, is charged with.  Attributed, not measured: no meter sees a process.

Terms:
- *interval*: two consecutive readings of the machine's busy CPU time and the tree's CPU
  time (``CpuReading``), a sampling period apart.
- *share* (of busy CPU time): the tree's CPU ticks in an interval over the machine's busy
  ticks in it (less the hypervisor's steal, which no process here used), clamped to
  [0, 1].  The rule Scaphandre and Kepler use for the CPU package.
- *attributed energy* of a domain: the sum over intervals of share x the domain's measured
  energy in that interval.  Idle power is apportioned with the rest: an interval's whole
  energy goes to the processes that were busy in it, by their shares, so the shares of
  every process add up to the machine's *busy energy* (the energy of the intervals in
  which anything ran).  Energy of intervals in which nothing ran is charged to no one.
- DRAM is split by the same share, not by resident memory: DRAM power is refresh (idle,
  apportioned like the package's idle power) plus the traffic of the cores that run, and
  a large idle heap causes no traffic; a resident-memory split would charge a sleeping
  process that holds memory for the accesses of the one that runs.
- GPU: by the tree's share of the SM utilisation NVML reports per process
  (``nvmlDeviceGetProcessUtilization``) where the driver gives it; elsewhere the GPU's
  energy is not attributed (absent, not zero).
- *per-request energy*: each interval's energy is split over the requests in flight by
  the tokens each processed in it (``split_by_tokens``).  A request's tokens are placed on
  its timeline: its prompt's tokens evenly between its start and its first token (the
  prefill), its generated tokens evenly between the first token and its end (decode);
  without a first-token time, all of them evenly over its life.  A
  prompt token weighs ``prefill_weight`` of a generated one: a prefill token is one row of
  one batched forward pass, a decode token a whole pass, so the default weight is small
  (``PREFILL_WEIGHT``).  The parts add up to the interval's energy whenever some request
  processed a token in it (conservation); an interval with none is charged to no request.

Everything here is plain Python over numbers the caller read (the machine's energy from
the store, CPU ticks from /proc), so the rules are tested without a daemon.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from greenmon.probes.procstat import busy_total, steal_ticks
from greenmon.probes.proctree import ProcessTree
from greenmon.sources import SCALE_TO_SI

METHOD_CPU_TIME = "busy CPU time share"
METHOD_GPU_UTILISATION = "NVML per-process SM utilisation share"
METHOD_TOKENS = "tokens in flight"
ATTRIBUTED_FLAG = "attributed"
# A prompt token's weight against a generated token's in the per-request split.
PREFILL_WEIGHT = 0.1
DEFAULT_PERIOD_S = 0.25


# -- process trees: CPU time share ---------------------------------------------------------
@dataclass(frozen=True)
class CpuReading:
    """The machine's busy ticks (less steal) and the tree's ticks at ``t_ns``."""

    t_ns: int
    busy_ticks: int
    tree_ticks: int


@dataclass(frozen=True)
class ShareInterval:
    start_ns: int
    end_ns: int
    share: float  # of the machine's busy CPU time, 0..1


def machine_busy_ticks(proc_root: str | Path = "/proc") -> int:
    """Busy ticks of every core since boot, less steal (/proc/stat's first line)."""
    with open(Path(proc_root) / "stat", "rb") as stat:
        fields = stat.readline().split()
    busy, _total = busy_total(fields)
    return busy - steal_ticks(fields)


def cpu_shares(readings: Sequence[CpuReading]) -> list[ShareInterval]:
    """The tree's share of busy CPU time in each interval between consecutive readings."""
    out: list[ShareInterval] = []
    carry = 0  # the tree's ticks that /proc/stat had not yet counted as busy
    for before, after in itertools.pairwise(readings):
        busy = after.busy_ticks - before.busy_ticks
        tree = max(after.tree_ticks - before.tree_ticks, 0) + carry
        # /proc/stat samples ticks while a process's times are its exact run time rounded
        # down to ticks, so in a short interval the tree can show ticks the machine has
        # not yet counted.  The share is clamped to what was busy, and the excess carried
        # to the next interval: clamping alone lost it, and on a loaded 2-core machine
        # charged a busy process 10-20 % less than its CPU time over the whole window.
        used = min(tree, max(busy, 0))
        carry = tree - used
        out.append(ShareInterval(before.t_ns, after.t_ns, used / busy if busy > 0 else 0.0))
    return out


class CpuShareSampler:
    """Reads the machine's busy ticks and a process tree's ticks every ``period_s`` in a
    thread, from ``start()`` to ``stop()`` (which returns the readings)."""

    def __init__(
        self,
        roots: Iterable[int],
        *,
        proc_root: str | Path = "/proc",
        period_s: float = DEFAULT_PERIOD_S,
    ) -> None:
        self.proc_root = Path(proc_root)
        self.tree = ProcessTree(self.proc_root, roots)
        self.period_s = period_s
        self.readings: list[CpuReading] = []
        # GPU shares read beside each CPU reading (attach_gpu), when NVML is at hand
        self.gpu: GpuShareSampler | None = None
        self._last: dict[int, tuple[int, int]] = {}  # pid -> (ticks, parent pid)
        self._gone_ticks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> CpuReading:
        if self.gpu is not None:
            self.gpu.read()
        self.tree.cpu_ticks()
        busy = machine_busy_ticks(self.proc_root)
        now: dict[int, tuple[int, int]] = {}
        for pid, fields in self.tree.stat_fields.items():
            if len(fields) >= 15:
                now[pid] = (sum(int(f) for f in fields[11:15]), int(fields[1]))
        for pid, (ticks, parent) in self._last.items():
            # A member that is gone took its CPU time with it, unless a member reaped it
            # (then the time is in that member's cutime/cstime): a root that exited, or a
            # process its own parent outside the tree reaped, is kept at its last reading.
            if pid not in now and parent not in now:
                self._gone_ticks += ticks
        self._last = now
        tree_ticks = self._gone_ticks + sum(ticks for ticks, _ in now.values())
        return CpuReading(time.monotonic_ns(), busy, tree_ticks)

    def attach_gpu(self, nvml: Any) -> bool:
        """Read NVML's per-process utilisation too; False where NVML cannot say."""
        try:
            self.gpu = GpuShareSampler(nvml, self)
        except Exception:  # the driver's NVMLError: no GPU, not initialised
            self.gpu = None
        return self.gpu is not None

    def start(self) -> CpuShareSampler:
        self.readings = [self.read()]
        self._thread = threading.Thread(target=self._run, name="greenmon-attribution", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # Fixed deadlines, so the period does not drift with the cost of a read.
        deadline = time.monotonic() + self.period_s
        while not self._stop.wait(max(deadline - time.monotonic(), 0.0)):
            self.readings.append(self.read())
            deadline += self.period_s

    def alive(self) -> bool:
        """Whether any member of the tree still exists."""
        self.tree._refresh_at_ns = 0  # look again now, not at the next refresh
        return bool(self.tree.pids())

    def stop(self) -> list[CpuReading]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.readings.append(self.read())
        self.tree.close()
        return self.readings


# -- the machine's energy over time ---------------------------------------------------------
@dataclass(frozen=True)
class PowerSeries:
    """One channel's power, constant between consecutive samples: ``power_w[k]`` from
    ``t_ns[k]`` to ``t_ns[k + 1]`` (a counter's rate over that interval)."""

    t_ns: tuple[int, ...]
    power_w: tuple[float, ...]

    @classmethod
    def from_counter(
        cls,
        samples: Sequence[tuple[int, float]],
        *,
        joules_per_unit: float,
        counter_range: float | None = None,
    ) -> PowerSeries:
        """From a cumulative counter's (t_ns, value) samples; a reset interval has no
        energy (as greenmon/sources.py counts it), a wrap adds the range."""
        times: list[int] = []
        powers: list[float] = []
        for (t0, v0), (t1, v1) in itertools.pairwise(samples):
            if t1 <= t0:
                continue
            delta = v1 - v0
            if delta < 0:
                delta = delta + counter_range if counter_range is not None else 0.0
            times.append(t0)
            powers.append(delta * joules_per_unit / ((t1 - t0) / 1e9))
        if samples:
            times.append(samples[-1][0])
        return cls(tuple(times), tuple(powers))

    @classmethod
    def from_gauge(
        cls, samples: Sequence[tuple[int, float]], *, watts_per_unit: float
    ) -> PowerSeries:
        """From a power gauge: each interval at the mean of its two readings (trapezoid)."""
        times = [t for t, _ in samples]
        powers = [
            (v0 + v1) / 2 * watts_per_unit for (_, v0), (_, v1) in itertools.pairwise(samples)
        ]
        return cls(tuple(times), tuple(powers))

    def energy_j(self, start_ns: int, end_ns: int) -> float:
        """Energy from ``start_ns`` to ``end_ns`` (nothing outside the samples; 0 when the
        span is empty or reversed)."""
        if end_ns <= start_ns or len(self.t_ns) < 2:
            return 0.0
        total = 0.0
        k = max(bisect.bisect_right(self.t_ns, start_ns) - 1, 0)
        while k < len(self.power_w) and self.t_ns[k] < end_ns:
            lo = max(self.t_ns[k], start_ns)
            hi = min(self.t_ns[k + 1], end_ns)
            if hi > lo:
                total += self.power_w[k] * (hi - lo) / 1e9
            k += 1
        return total


def domain_energy_j(series: Sequence[PowerSeries], start_ns: int, end_ns: int) -> float:
    """A domain's energy over an interval: the sum over its channels (one per package)."""
    return sum(s.energy_j(start_ns, end_ns) for s in series)


@dataclass
class ProcessAttribution:
    """A process tree's attributed energy over ``[start_ns, end_ns]``, per domain, beside
    the machine's measured energy over the same span."""

    start_ns: int
    end_ns: int
    attributed_j: dict[str, float] = field(default_factory=dict)
    machine_j: dict[str, float] = field(default_factory=dict)
    busy_j: dict[str, float] = field(default_factory=dict)
    cpu_time_share: float = 0.0  # the tree's ticks over the machine's busy ticks, overall
    method: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=lambda: [ATTRIBUTED_FLAG])

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "duration_s": self.duration_s,
            "cpu_time_share": self.cpu_time_share,
            "machine_energy_j": self.machine_j,
            "busy_energy_j": self.busy_j,
            "method": self.method,
            "flags": self.flags,
        }
        for domain in ("cpu", "dram", "gpu"):
            out[f"attributed_{domain}_j"] = self.attributed_j.get(domain)
        return out


def attribute_cpu_time(
    readings: Sequence[CpuReading],
    energy_of: Mapping[str, Callable[[int, int], float]],
    window: tuple[int, int] | None = None,
) -> ProcessAttribution:
    """The tree's energy in each domain of ``energy_of`` (domain -> energy between two
    instants) by its share of busy CPU time in each interval of ``readings``; with
    ``window`` (start_ns, end_ns), only the energy inside it (readings that bracket a
    window attribute all of it, its edges by the share of the interval around them)."""
    intervals = cpu_shares(readings)
    start_ns = readings[0].t_ns if readings else 0
    end_ns = readings[-1].t_ns if readings else 0
    if window is not None:
        start_ns, end_ns = window
    result = ProcessAttribution(start_ns, end_ns)
    busy = readings[-1].busy_ticks - readings[0].busy_ticks if readings else 0
    tree = readings[-1].tree_ticks - readings[0].tree_ticks if readings else 0
    result.cpu_time_share = min(max(tree / busy, 0.0), 1.0) if busy > 0 else 0.0
    busy_by_interval = [
        after.busy_ticks > before.busy_ticks for before, after in itertools.pairwise(readings)
    ]
    for domain, energy in energy_of.items():
        attributed = machine = busy_j = 0.0
        for interval, was_busy in zip(intervals, busy_by_interval, strict=True):
            e = energy(max(interval.start_ns, start_ns), min(interval.end_ns, end_ns))
            machine += e
            busy_j += e if was_busy else 0.0
            attributed += interval.share * e
        result.attributed_j[domain] = attributed
        result.machine_j[domain] = machine
        result.busy_j[domain] = busy_j
        result.method[domain] = METHOD_CPU_TIME
    return result


# -- GPU: NVML's per-process utilisation ----------------------------------------------------
@dataclass(frozen=True)
class GpuProcessSample:
    """One of NVML's per-process utilisation samples (nvmlProcessUtilizationSample_t)."""

    pid: int
    t_us: int  # the driver's timestamp, microseconds
    sm_percent: float


def gpu_share(samples: Iterable[GpuProcessSample], pids: Iterable[int]) -> float | None:
    """The tree's share of the GPU's SM utilisation over the samples (None: no samples,
    so NVML gave nothing to attribute by)."""
    members = set(pids)
    total = tree = 0.0
    seen = False
    for sample in samples:
        seen = True
        total += max(sample.sm_percent, 0.0)
        if sample.pid in members:
            tree += max(sample.sm_percent, 0.0)
    if not seen:
        return None
    return tree / total if total > 0 else 0.0


def read_gpu_process_samples(nvml: Any, handle: Any, since_us: int) -> list[GpuProcessSample]:
    """NVML's per-process samples newer than ``since_us``; empty where the driver does not
    give them (``nvmlDeviceGetProcessUtilization`` missing or refused)."""
    function = getattr(nvml, "nvmlDeviceGetProcessUtilization", None)
    if function is None:
        return []
    try:
        raw = function(handle, since_us)
    except Exception:  # the driver's NVMLError: not supported, no samples yet
        return []
    return [GpuProcessSample(int(s.pid), int(s.timeStamp), float(s.smUtil)) for s in raw or []]


class GpuShareSampler:
    """The tree's share of the GPUs' SM utilisation in each interval, from NVML's
    per-process samples (``nvmlDeviceGetProcessUtilization``), read with the CPU
    readings of ``cpu`` (whose tree gives the pids).  Every GPU's samples are pooled: a
    machine's GPU energy is one domain (the sum over its GPUs)."""

    def __init__(self, nvml: Any, cpu: CpuShareSampler) -> None:
        self.nvml = nvml
        self.cpu = cpu
        count = int(nvml.nvmlDeviceGetCount())
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self.last_us = [0] * count
        self.intervals: list[ShareInterval] = []
        self.any_samples = False
        self._last_ns = time.monotonic_ns()

    def read(self) -> None:
        """The share since the previous read (0 while no process used the GPUs)."""
        now = time.monotonic_ns()
        samples: list[GpuProcessSample] = []
        for index, handle in enumerate(self.handles):
            fresh = [
                s
                for s in read_gpu_process_samples(self.nvml, handle, self.last_us[index])
                if s.t_us > self.last_us[index]
            ]
            if fresh:
                self.last_us[index] = max(s.t_us for s in fresh)
            samples += fresh
        self.any_samples = self.any_samples or bool(samples)
        share = gpu_share(samples, self.cpu.tree.pids())
        self.intervals.append(ShareInterval(self._last_ns, now, share or 0.0))
        self._last_ns = now


def attribute_shares(
    intervals: Sequence[ShareInterval], energy: Callable[[int, int], float], window: tuple[int, int]
) -> float:
    """Energy inside ``window`` times each interval's share, summed."""
    lo, hi = window
    return sum(i.share * energy(max(i.start_ns, lo), min(i.end_ns, hi)) for i in intervals)


# -- served requests: tokens in flight ------------------------------------------------------
@dataclass(frozen=True)
class RequestSpan:
    """What greenmon knows of one request: its id, start, first token, end, and tokens."""

    request_id: str
    start_ns: int
    first_token_ns: int | None
    end_ns: int
    tokens_in: int
    tokens_out: int


def tokens_processed(
    span: RequestSpan, lo_ns: int, hi_ns: int, prefill_weight: float = PREFILL_WEIGHT
) -> float:
    """Weighted tokens ``span`` processed in [lo_ns, hi_ns): each phase's tokens spread
    evenly over the phase (prefill: start to first token; decode: first token to end)."""
    weighted_in = span.tokens_in * prefill_weight
    if span.first_token_ns is None:
        # No first-token time (an engine that generates a batch whole): every token is
        # spread over the request's whole life.
        phases = [(span.start_ns, span.end_ns, weighted_in + span.tokens_out)]
    else:
        first = min(max(span.first_token_ns, span.start_ns), span.end_ns)
        phases = [
            (span.start_ns, first, weighted_in),
            (first, span.end_ns, float(span.tokens_out)),
        ]
    work = 0.0
    for p0, p1, tokens in phases:
        if tokens <= 0:
            continue
        if p1 <= p0:
            # An instantaneous phase: its tokens all fall at its instant.
            work += tokens if lo_ns <= p0 < hi_ns else 0.0
            continue
        overlap = min(p1, hi_ns) - max(p0, lo_ns)
        if overlap > 0:
            work += tokens * overlap / (p1 - p0)
    return work


def split_by_tokens(
    spans: Sequence[RequestSpan],
    boundaries_ns: Sequence[int],
    energy_between: Callable[[int, int], float],
    *,
    prefill_weight: float = PREFILL_WEIGHT,
) -> dict[str, float]:
    """Each request's energy: every interval between consecutive ``boundaries_ns`` split
    over the requests by the (weighted) tokens each processed in it.  Requests that
    processed nothing in any interval get 0.0."""
    out = {span.request_id: 0.0 for span in spans}
    for lo, hi in itertools.pairwise(boundaries_ns):
        if hi <= lo:
            continue
        work = {
            s.request_id: w
            for s in spans
            if s.start_ns < hi
            and s.end_ns >= lo
            and (w := tokens_processed(s, lo, hi, prefill_weight)) > 0
        }
        total = sum(work.values())
        if total <= 0:
            continue
        energy = energy_between(lo, hi)
        for request_id, w in work.items():
            out[request_id] += energy * w / total
    return out


def server_energy_j(usage: Mapping[str, Any]) -> float | None:
    """A server's own per-request energy from its ``usage``, in joules: ``energy_j``
    (greenmon serve) or ``energy_mj`` (a TGI proposal's name); None when it gives none."""
    for key, scale in (("energy_j", 1.0), ("energy_mj", 1e-3)):
        value = usage.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value) * scale
    return None


def request_boundaries(spans: Sequence[RequestSpan], period_ns: int) -> list[int]:
    """Interval edges for ``split_by_tokens``: every ``period_ns`` from the first start to
    the last end, plus every request's start, first token and end (so no interval mixes
    a phase's inside with its outside)."""
    if not spans:
        return []
    lo = min(s.start_ns for s in spans)
    hi = max(s.end_ns for s in spans)
    edges = set(range(lo, hi, max(period_ns, 1)))
    edges.add(hi)
    for s in spans:
        edges.update(t for t in (s.start_ns, s.first_token_ns, s.end_ns) if t is not None)
    return sorted(edges)


def summarise_requests(energy_j: Sequence[float], tokens: Sequence[int]) -> dict[str, float | None]:
    """J per request (p50, p90) and J per token (each request's energy over its tokens,
    median) of one unit's requests."""
    import statistics

    if not energy_j:
        return {"j_per_request_p50": None, "j_per_request_p90": None, "j_per_token_p50": None}
    ordered = sorted(energy_j)

    def quantile(q: float) -> float:
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    per_token = [e / t for e, t in zip(energy_j, tokens, strict=False) if t > 0]
    return {
        "j_per_request_p50": quantile(0.5),
        "j_per_request_p90": quantile(0.9),
        "j_per_token_p50": statistics.median(per_token) if per_token else None,
    }


def pid_alive(pid: int, proc_root: str | Path = "/proc") -> bool:
    return os.path.exists(Path(proc_root) / str(pid))


def listening_pid(port: int, proc_root: str | Path = "/proc") -> int | None:
    """The process that listens on TCP ``port`` (IPv4 or IPv6), or None: the socket's inode
    from /proc/net/tcp*, then the process holding a descriptor to it."""
    root = Path(proc_root)
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (root / "net" / table).read_text().splitlines()[1:]:
                parts = line.split()
                # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN
                if (
                    len(parts) > 9
                    and parts[3] == "0A"
                    and int(parts[1].rsplit(":", 1)[1], 16) == port
                ):
                    inodes.add(parts[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for name in sorted(os.listdir(root), key=lambda n: (not n.isdigit(), len(n), n)):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(root / name / "fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(root / name / "fd" / fd) in targets:
                        return int(name)
    return None


# -- reading the machine's energy back from the store ---------------------------------------
ATTRIBUTED_DOMAINS = ("cpu", "dram", "gpu")

# The samples of every channel that answers for an attributed domain (the
# ``energy_sources`` view: greenmon/sources.py's rule) of session ? between ? and ? ns.
SESSION_SERIES_SQL = f"""
SELECT s.domain, s.channel_id, s.kind, s.unit, s.counter_range, x.t_ns, x.value
FROM energy_sources s JOIN samples x ON x.channel_id = s.channel_id
WHERE s.session_id = ? AND s.domain IN {ATTRIBUTED_DOMAINS!r} AND x.t_ns BETWEEN ? AND ?
ORDER BY s.domain, s.channel_id, x.t_ns
"""


def power_series_sql(
    window_id: int, *, offset: int = 0, limit: int = 10_000, margin_ns: int = 2_000_000_000
) -> str:
    """A read-only query (the daemon's /sql) for the samples of every channel that answers
    for an attributed domain (the ``energy_sources`` view: greenmon/sources.py's rule)
    around window ``window_id``, in its session."""
    w = int(window_id)
    return f"""
SELECT s.domain, s.channel_id, s.kind, s.unit, s.counter_range, x.t_ns, x.value
FROM windows w
JOIN energy_sources s ON s.session_id = w.session_id
JOIN samples x ON x.channel_id = s.channel_id
WHERE w.window_id = {w} AND s.domain IN {ATTRIBUTED_DOMAINS!r}
  AND x.t_ns BETWEEN w.start_ns - {int(margin_ns)}
                 AND coalesce(w.end_ns, w.start_ns) + {int(margin_ns)}
ORDER BY s.domain, s.channel_id, x.t_ns
LIMIT {int(limit)} OFFSET {int(offset)}
"""


def power_series_from_rows(rows: Iterable[Sequence[Any]]) -> dict[str, list[PowerSeries]]:
    """Domain -> its channels' PowerSeries, from ``power_series_sql``'s rows."""
    grouped: dict[tuple[str, int], tuple[str, str, float | None, list[tuple[int, float]]]] = {}
    for domain, channel_id, kind, unit, counter_range, t_ns, value in rows:
        if value is None:
            continue
        key = (str(domain), int(channel_id))
        if key not in grouped:
            grouped[key] = (str(kind), str(unit), counter_range, [])
        grouped[key][3].append((int(t_ns), float(value)))
    out: dict[str, list[PowerSeries]] = {}
    for (domain, _channel), (kind, unit, counter_range, samples) in grouped.items():
        scale = SCALE_TO_SI[unit]
        if kind == "counter":
            series = PowerSeries.from_counter(
                samples, joules_per_unit=scale,
                counter_range=None if counter_range is None else float(counter_range),
            )  # fmt: skip
        else:
            series = PowerSeries.from_gauge(samples, watts_per_unit=scale)
        out.setdefault(domain, []).append(series)
    return out


def request_energy(
    spans: Sequence[RequestSpan],
    series: Mapping[str, Sequence[PowerSeries]],
    *,
    period_ns: int = 100_000_000,
    prefill_weight: float = PREFILL_WEIGHT,
) -> dict[str, dict[str, float]]:
    """request id -> {domain: J}: each domain's measured energy, interval by interval,
    split over the requests in flight by the tokens each processed (``split_by_tokens``)."""
    boundaries = request_boundaries(spans, period_ns)
    out: dict[str, dict[str, float]] = {span.request_id: {} for span in spans}
    for domain, channels in series.items():
        split = split_by_tokens(
            spans, boundaries, partial(domain_energy_j, channels), prefill_weight=prefill_weight
        )
        for request_id, energy in split.items():
            out[request_id][domain] = energy
    return out


def spans_of(records: Iterable[Any]) -> list[RequestSpan]:
    """RequestSpans of engine RequestRecords (``ttft_ns`` is a duration from the start)."""
    return [
        RequestSpan(
            r.prompt_id,
            r.start_ns,
            None if r.ttft_ns is None else r.start_ns + r.ttft_ns,
            r.end_ns,
            r.tokens_in,
            r.tokens_out,
        )
        for r in records
    ]
