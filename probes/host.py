"""Host probe (psutil): system CPU, memory and swap, and one watched process.

Channels: ``cpu.percent`` and ``cpuN.percent`` (utilisation since the previous read, so
each sample covers exactly one sampling period), ``cpu.freq_mhz``, ``ram.used_bytes``,
``ram.percent``, ``swap.used_bytes``, ``swap.percent``, and for the watched process
(default: this process, i.e. the daemon and the engines it runs in-process)
``proc.cpu_percent`` (of one core, so it can exceed 100) and ``proc.rss_bytes``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar

import psutil

from greenmon.probes.base import Channel, ProbeUnavailable, Values
from greenmon.probes.options import ProbeOptions


class Options(ProbeOptions, kw_only=True, forbid_unknown_fields=True):
    per_core: bool = True
    # The process to watch; None watches the daemon itself.
    pid: int | None = None


class HostProbe:
    name: ClassVar[str] = "host"
    default_rate_hz: ClassVar[float] = 10.0

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self._process: psutil.Process | None = None
        self._cores = 0

    def open(self) -> Sequence[Channel]:
        pid = self.options.pid if self.options.pid is not None else os.getpid()
        try:
            self._process = psutil.Process(pid)
            self._process.cpu_percent(None)  # primes the per-process delta
        except psutil.Error as error:
            raise ProbeUnavailable(
                f"cannot watch process {pid}: {error}. Set [probes.host] pid to a running "
                "process you may inspect, or remove it to watch the daemon."
            ) from None
        psutil.cpu_percent(None)
        self._cores = (psutil.cpu_count() or 1) if self.options.per_core else 0
        channels = [Channel("cpu.percent", "%", "gauge")]
        channels += [Channel(f"cpu{i}.percent", "%", "gauge") for i in range(self._cores)]
        channels += [
            Channel("cpu.freq_mhz", "MHz", "gauge"),
            Channel("ram.used_bytes", "B", "gauge"),
            Channel("ram.percent", "%", "gauge"),
            Channel("swap.used_bytes", "B", "gauge"),
            Channel("swap.percent", "%", "gauge"),
            Channel("proc.cpu_percent", "%", "gauge", metadata={"pid": pid}),
            Channel("proc.rss_bytes", "B", "gauge", metadata={"pid": pid}),
        ]
        if self._cores:
            psutil.cpu_percent(None, percpu=True)
        return channels

    def read(self) -> Values:
        assert self._process is not None, "read() before open()"
        values: list[float | None] = [psutil.cpu_percent(None)]
        if self._cores:
            values += psutil.cpu_percent(None, percpu=True)[: self._cores]
        freq = psutil.cpu_freq()
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        try:
            with self._process.oneshot():
                proc_cpu: float | None = self._process.cpu_percent(None)
                proc_rss: float | None = float(self._process.memory_info().rss)
        except psutil.Error:
            proc_cpu = proc_rss = None
        values += [
            freq.current if freq else None,
            float(memory.total - memory.available),
            memory.percent,
            float(swap.used),
            swap.percent,
            proc_cpu,
            proc_rss,
        ]
        return values

    def close(self) -> None:
        self._process = None


def create(options: Options) -> HostProbe:
    return HostProbe(options)
