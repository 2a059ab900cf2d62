"""Per-request energy inside ``greenmon serve``: each response's share of the server's
attributed energy, in ``usage.energy_j`` (and ``usage.energy_cpu_j`` / ``energy_dram_j``).

Terms (greenmon/attribution.py has the rules):
- *reading*: the machine's cumulative energy per domain (the RAPL counters, wraps added
  back), its busy CPU ticks and the server's process tree's ticks, at one instant.  Taken
  every ``period_s`` by a thread, and at every batch's start and end, so a batch's
  intervals begin and end with it.
- *server's attributed energy*: each interval's measured energy times the server tree's
  share of busy CPU time in it.
- *request's energy*: the server's attributed energy in each interval split over the
  requests that processed tokens in it (``split_by_tokens``).  The intervals in which
  some request ran are charged once, in full, to the requests
  (``serving_attributed_j`` == ``requests_j``: conservation); the server's attributed
  energy while no request ran (``idle_attributed_j``) is charged to none.

Attributed, not measured: the figures say what share of the machine's energy this rule
gives a request, on a machine whose package and DRAM are shared.
"""

from __future__ import annotations

import bisect
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily

from greenmon.attribution import (
    ATTRIBUTED_DOMAINS,
    CpuReading,
    CpuShareSampler,
    RequestSpan,
    cpu_shares,
    split_by_tokens,
    tokens_processed,
)
from greenmon.config import probe_module
from greenmon.engines.base import RequestRecord
from greenmon.probes.base import Probe, ProbeUnavailable
from greenmon.sources import SCALE_TO_SI, counter_delta

DEFAULT_PERIOD_S = 0.1


@dataclass(frozen=True)
class Reading:
    t_ns: int
    energy_j: dict[str, float]  # cumulative since the meter opened, per domain
    busy_ticks: int
    tree_ticks: int


@dataclass
class EnergyTotals:
    """What the meter has attributed since it opened, per domain (joules)."""

    serving_attributed_j: dict[str, float] = field(default_factory=dict)
    idle_attributed_j: dict[str, float] = field(default_factory=dict)
    requests_j: dict[str, float] = field(default_factory=dict)
    requests: int = 0


class ServeEnergyMeter:
    """Reads an energy probe and the server's CPU share; charges finished batches."""

    def __init__(
        self,
        probe: Probe,
        *,
        roots: Iterable[int] | None = None,
        proc_root: str | Path = "/proc",
        period_s: float = DEFAULT_PERIOD_S,
    ) -> None:
        self.probe = probe
        self.period_s = period_s
        self.cpu = CpuShareSampler(
            list(roots) if roots is not None else [os.getpid()], proc_root=proc_root
        )
        self.totals = EnergyTotals()
        self._channels: list[tuple[int, str, float, float | None]] = []
        self._last_values: list[float | None] = []
        self._energy_j: dict[str, float] = {}
        self._readings: list[Reading] = []
        self._charged_ns = 0  # intervals before this instant are charged already
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def domains(self) -> list[str]:
        return sorted({domain for _, domain, _, _ in self._channels})

    def open(self) -> ServeEnergyMeter:
        """Open the probe and keep its energy counters of cpu and dram (ProbeUnavailable
        when it has none)."""
        channels = self.probe.open()
        for index, channel in enumerate(channels):
            if (
                channel.kind == "counter"
                and channel.domain in ATTRIBUTED_DOMAINS
                and channel.unit in SCALE_TO_SI
            ):
                counter_range = channel.metadata.get("counter_range")
                self._channels.append(
                    (
                        index,
                        channel.domain,
                        SCALE_TO_SI[channel.unit],
                        None if counter_range is None else float(counter_range),
                    )
                )
        if not self._channels:
            self.probe.close()
            raise ProbeUnavailable("the energy probe has no CPU package or DRAM counter here")
        self._last_values = [None] * len(channels)
        self._readings = [self._read()]
        self._charged_ns = self._readings[0].t_ns
        self._thread = threading.Thread(target=self._run, name="greenmon-serve-energy", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.probe.close()
        self.cpu.tree.close()

    def _read(self) -> Reading:
        values = self.probe.read()
        if not isinstance(values, Sequence):
            raise TypeError("the serve energy meter reads synchronous probes only")
        for index, domain, scale, counter_range in self._channels:
            value = values[index]
            previous = self._last_values[index]
            if value is None:
                continue
            if previous is not None:
                delta = counter_delta(previous, float(value), counter_range)
                # a reset's interval has unknown energy: none is counted, as in energy.py
                self._energy_j[domain] = self._energy_j.get(domain, 0.0) + (delta or 0.0) * scale
            else:
                self._energy_j.setdefault(domain, 0.0)
            self._last_values[index] = float(value)
        cpu = self.cpu.read()
        return Reading(cpu.t_ns, dict(self._energy_j), cpu.busy_ticks, cpu.tree_ticks)

    def _run(self) -> None:
        deadline = time.monotonic() + self.period_s
        while not self._stop.wait(max(deadline - time.monotonic(), 0.0)):
            self.mark()
            deadline += self.period_s

    def mark(self) -> int:
        """Take a reading now (a batch's start); its instant."""
        with self._lock:
            reading = self._read()
            self._readings.append(reading)
            return reading.t_ns

    def charge(self, spans: Sequence[RequestSpan]) -> dict[str, dict[str, float]]:
        """request id -> {domain: J} for a finished batch: every interval since the last
        charge, the server's attributed energy in it split over ``spans`` by tokens."""
        with self._lock:
            self._readings.append(self._read())
            start = bisect.bisect_right([r.t_ns for r in self._readings], self._charged_ns) - 1
            readings = self._readings[max(start, 0) :]
            self._charged_ns = readings[-1].t_ns
            # Keep the last reading: the next interval starts there.
            self._readings = [readings[-1]]
        shares = cpu_shares([CpuReading(r.t_ns, r.busy_ticks, r.tree_ticks) for r in readings])
        by_edge = {r.t_ns: i for i, r in enumerate(readings)}
        boundaries = [r.t_ns for r in readings]
        out: dict[str, dict[str, float]] = {span.request_id: {} for span in spans}
        for domain in self.domains:

            def attributed(lo: int, hi: int, domain: str = domain) -> float:
                i = by_edge[lo]
                e = readings[i + 1].energy_j.get(domain, 0.0) - readings[i].energy_j.get(
                    domain, 0.0
                )
                return shares[i].share * e

            split = split_by_tokens(spans, boundaries, attributed)
            for request_id, energy in split.items():
                out[request_id][domain] = energy
            # The server's attributed energy, apart from the split: while some request
            # processed tokens (serving), and while none did (idle).
            serving = idle = 0.0
            for lo, hi in itertools.pairwise(boundaries):
                busy = any(tokens_processed(s, lo, hi) > 0 for s in spans)
                serving += attributed(lo, hi) if busy else 0.0
                idle += 0.0 if busy else attributed(lo, hi)
            t = self.totals
            t.requests_j[domain] = t.requests_j.get(domain, 0.0) + sum(split.values())
            t.serving_attributed_j[domain] = t.serving_attributed_j.get(domain, 0.0) + serving
            t.idle_attributed_j[domain] = t.idle_attributed_j.get(domain, 0.0) + idle
        self.totals.requests += len(spans)
        return out

    def totals_dict(self) -> dict[str, Any]:
        t = self.totals
        return {
            "requests": t.requests,
            "requests_energy_j": sum(t.requests_j.values()),
            "serving_attributed_energy_j": sum(t.serving_attributed_j.values()),
            "idle_attributed_energy_j": sum(t.idle_attributed_j.values()),
            "per_domain": {
                d: {
                    "requests_j": t.requests_j.get(d, 0.0),
                    "serving_attributed_j": t.serving_attributed_j.get(d, 0.0),
                    "idle_attributed_j": t.idle_attributed_j.get(d, 0.0),
                }
                for d in self.domains
            },
        }


def usage_energy(energy: dict[str, float]) -> dict[str, float]:
    """A request's energy as ``usage`` fields: ``energy_j`` (cpu + dram... every domain
    measured) and ``energy_<domain>_j``."""
    fields = {f"energy_{domain}_j": value for domain, value in sorted(energy.items())}
    return {"energy_j": sum(energy.values()), **fields}


class EnergyCollector:
    """The meter's totals as Prometheus counters (attributed, not measured), collected
    into ``greenmon serve``'s own registry at each scrape."""

    def __init__(self, meter: ServeEnergyMeter) -> None:
        self.meter = meter

    def collect(self) -> Iterator[CounterMetricFamily]:
        t = self.meter.totals
        requests = CounterMetricFamily(
            "greenmon_serve_requests_energy_joules",
            "Sum of the requests' attributed energy.",
            labels=["domain"],
        )
        for d in self.meter.domains:
            requests.add_metric([d], t.requests_j.get(d, 0.0))
        yield requests
        server = CounterMetricFamily(
            "greenmon_serve_attributed_energy_joules",
            "The server's attributed energy (busy CPU time share), while serving requests "
            "or idle.",
            labels=["domain", "state"],
        )
        for d in self.meter.domains:
            server.add_metric([d, "serving"], t.serving_attributed_j.get(d, 0.0))
            server.add_metric([d, "idle"], t.idle_attributed_j.get(d, 0.0))
        yield server


class MeteredBatches:
    """Charges each batch the engine runs (greenmon serve runs one at a time, in one
    thread): a reading before ``generate``, the split after it; each request's energy
    waits under its prompt id until its response takes it (``take``)."""

    def __init__(self, meter: ServeEnergyMeter) -> None:
        self.meter = meter
        self._energy: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def charged(self, run: Callable[[], list[RequestRecord]]) -> list[RequestRecord]:
        """Run one batch (``run`` calls the engine) and charge its requests their shares."""
        self.meter.mark()
        records = run()
        spans = [
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
        energy = self.meter.charge(spans)
        with self._lock:
            self._energy.update(energy)
        return records

    def take(self, prompt_id: str) -> dict[str, float]:
        """The ``usage`` fields of a finished request's energy (empty if none)."""
        with self._lock:
            energy = self._energy.pop(prompt_id, None)
        return usage_energy(energy) if energy is not None else {}


def open_meter(config: Any) -> tuple[MeteredBatches | None, str]:
    """A meter over the config's RAPL probe, or None and the reason in words."""
    options = config.probes.get("rapl")
    if options is None or not options.enabled:
        return None, "per-request energy is off: the RAPL probe is disabled in the config"
    try:
        meter = ServeEnergyMeter(probe_module("rapl").create(options)).open()
    except ProbeUnavailable as error:
        return None, f"per-request energy is off: {error}"
    return MeteredBatches(meter), (
        "per-request energy on: usage.energy_j is each request's share of this server's "
        "attributed CPU package and DRAM energy (attributed, not measured)"
    )
