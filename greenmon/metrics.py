"""Live metrics for Prometheus: an optional HTTP listener on the daemon (``GET /metrics``).

Off unless ``[daemon] metrics_port`` is set; bound to ``metrics_host`` (127.0.0.1 unless the
config says otherwise).  The text format is prometheus-client's: a custom Collector reads
the daemon's latest values when Prometheus scrapes, so sampling does no extra work.

Metrics (labels in braces):
- ``greenmon_power_watts{probe, channel, domain}``: power per channel.  Power gauges give
  their latest reading; energy counters their mean power since the previous scrape (so a
  counter channel appears from the second scrape on).
- ``greenmon_energy_joules_total{domain}``: cumulative energy per domain since the first
  scrape, from the channels ``energy_sources`` chooses for the domain (the same rule as
  every result), counters wrap-corrected; power gauges integrated between scrapes.
- ``greenmon_probe_up{probe}`` (1 sampling, 0 not), ``greenmon_probe_rate_hz{probe}``,
  ``greenmon_probe_samples_total{probe}``, ``greenmon_probe_errors_total{probe}``,
  ``greenmon_probe_missed_ticks_total{probe}``: probe health.
- ``greenmon_experiment_info{experiment_id, plan_name, status}``,
  ``greenmon_experiment_units_done``, ``greenmon_experiment_units_total``,
  ``greenmon_experiment_eta_seconds``, ``greenmon_unit_info{experiment_id, unit_id, model,
  configuration, phase}``: the runner's progress, when the daemon runs one.
- ``greenmon_windows_open``: named windows open now (greenmon/windows.py).
- ``greenmon_self_cpu_seconds_total``: the daemon process's own CPU time (user + system;
  engines it runs in-process included), read at the scrape, and
  ``greenmon_self_sampling_cpu_seconds_total``, its sampling thread's, from the host
  probe's ``greenmon.sampling_cpu_s`` (absent without the host probe): what measuring
  costs, as Scaphandre's ``scaph_self_*``.
- ``greenmon_unit_co2e_grams{experiment_id, configuration}`` and
  ``greenmon_unit_cost{experiment_id, configuration, currency}``: with a ``[report]`` table
  in the daemon's config, the CO2e and cost of the median finished unit per configuration
  (greenmon/analysis/footprint.py; attributed from the energy, a time-varying intensity
  taken at the scrape).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from greenmon.errors import ConfigError
from greenmon.sources import ENERGY_UNITS, POWER_UNITS, SCALE_TO_SI, counter_delta

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from greenmon.analysis.footprint import Pricing
    from greenmon.api.messages import Progress
    from greenmon.config import DaemonOptions
    from greenmon.protocols import MetricsHost


@dataclass
class _Last:
    t_ns: int
    value: float


class DaemonCollector:
    """A prometheus-client Collector over one daemon's in-memory state."""

    def __init__(self, daemon: MetricsHost, pricing: Pricing | None = None) -> None:
        self.daemon = daemon
        self.pricing = pricing
        self._last: dict[int, _Last] = {}
        self._energy_j: dict[str, float] = {}
        # channel_id -> domain, for the channels energy_sources chooses (resolved once the
        # probes have registered their channels; see refresh_sources)
        self._sources: dict[int, str] | None = None
        self._sources_for = 0

    # -- the source rule, read from the store -----------------------------------------
    def refresh_sources(self) -> None:
        """Read which channel answers for each domain (blocking: call from a thread)."""
        if self._sources is not None and self._sources_for == len(self.daemon.channels):
            return
        _, rows = self.daemon.store.query(
            "SELECT channel_id, domain FROM energy_sources WHERE session_id = ?",
            [self.daemon.session_id],
        )
        self._sources = {int(channel_id): str(domain) for channel_id, domain in rows}
        self._sources_for = len(self.daemon.channels)

    # -- collection --------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        sources = self._sources or {}
        yield self._power_metric(GaugeMetricFamily, sources)

        energy = CounterMetricFamily(
            "greenmon_energy_joules",
            "Energy per domain since the first scrape, from the channels energy_sources "
            "chooses for it.",
            labels=["domain"],
        )
        for domain in sorted(set(sources.values())):
            energy.add_metric([domain], self._energy_j.get(domain, 0.0))
        yield energy

        yield from self._probe_metrics(GaugeMetricFamily, CounterMetricFamily)
        yield from self._experiment_metrics(GaugeMetricFamily, InfoMetricFamily)
        yield from self._self_metrics(CounterMetricFamily)
        if self.daemon.windows is not None:
            yield GaugeMetricFamily(
                "greenmon_windows_open", "Named windows open now.",
                value=len(self.daemon.windows.open),
            )  # fmt: skip

    def _self_metrics(self, counter: Any) -> Iterator[Metric]:
        """The observer's own cost: this process's CPU, its sampling thread's."""
        times = os.times()
        yield counter(
            "greenmon_self_cpu_seconds",
            "CPU time (user + system) of the greenmon daemon's process, engines it runs "
            "in-process included.",
            value=times.user + times.system,
        )
        for channel_id, _, value in self.daemon.channel_values():
            probe, channel = self.daemon.channels[channel_id]
            if probe == "host" and channel.name == "greenmon.sampling_cpu_s":
                yield counter(
                    "greenmon_self_sampling_cpu_seconds",
                    "CPU time of the daemon's sampling thread (every probe's reads).",
                    value=float(value),
                )

    def _power_metric(self, gauge: Any, sources: dict[int, str]) -> Any:
        """Power per channel now; adds each source channel's energy since the last scrape
        to its domain's total."""
        power = gauge(
            "greenmon_power_watts",
            "Power per channel: a power gauge's latest reading, or an energy counter's "
            "mean power since the previous scrape.",
            labels=["probe", "channel", "domain"],
        )
        for channel_id, t_ns, value in self.daemon.channel_values():
            probe, channel = self.daemon.channels[channel_id]
            scale = SCALE_TO_SI.get(channel.unit)
            if scale is None:
                continue
            reading = self._since_last_scrape(channel_id, channel, t_ns, value, scale)
            if reading is None:
                continue
            watts, energy_j = reading
            if watts is not None:
                power.add_metric([probe, channel.name, channel.domain or ""], watts)
            domain = sources.get(channel_id)
            if domain is not None:
                self._energy_j[domain] = self._energy_j.get(domain, 0.0) + energy_j
        return power

    def _since_last_scrape(
        self, channel_id: int, channel: Any, t_ns: int, value: Any, scale: float
    ) -> tuple[float | None, float] | None:
        """(power in W or None, energy in J) of one channel since the previous scrape, and
        remember this reading; None for a channel that is neither power nor energy."""
        watts: float | None = None
        energy_j = 0.0
        last = self._last.get(channel_id)
        if channel.kind == "gauge" and channel.unit in POWER_UNITS:
            watts = float(value) * scale
            if last is not None and t_ns > last.t_ns:
                energy_j = (last.value + watts) / 2 * (t_ns - last.t_ns) / 1e9
            self._last[channel_id] = _Last(t_ns, watts)
        elif channel.kind == "counter" and channel.unit in ENERGY_UNITS:
            if last is not None and t_ns > last.t_ns:
                counter_range = channel.metadata.get("counter_range")
                delta = counter_delta(
                    last.value, float(value),
                    None if counter_range is None else float(counter_range),
                )  # fmt: skip
                if delta is not None:  # a reset (no known range) leaves this interval out
                    energy_j = delta * scale
                    watts = energy_j / ((t_ns - last.t_ns) / 1e9)
            self._last[channel_id] = _Last(t_ns, float(value))
        else:
            return None
        return watts, energy_j

    def _experiment_metrics(self, gauge: Any, info: Any) -> Iterator[Metric]:
        """The runner's experiment, progress and running unit, when the daemon runs one."""
        progress = self.daemon.progress()
        if progress is None:
            return
        yield info(
            "greenmon_experiment",
            "The experiment the daemon's runner works on.",
            value={
                "experiment_id": progress.experiment_id or "",
                "plan_name": progress.plan_name or "",
                "status": progress.status or "",
            },
        )
        for name, figure, text in (
            ("greenmon_experiment_units_done", progress.unit_index, "Units finished or skipped."),
            ("greenmon_experiment_units_total", progress.units_total, "Units in the plan."),
            ("greenmon_experiment_eta_seconds", progress.eta_s, "Estimated time left."),
        ):
            if figure is not None:
                yield gauge(name, text, value=float(figure))
        unit = progress.unit
        if unit is not None:
            yield info(
                "greenmon_unit",
                "The unit running now.",
                value={
                    "experiment_id": progress.experiment_id or "",
                    "unit_id": "" if unit.unit_id is None else str(unit.unit_id),
                    "model": unit.model,
                    "configuration": unit.configuration,
                    "phase": progress.phase or "",
                },
            )
        yield from self._footprint_metrics(gauge, progress)

    def _footprint_metrics(self, gauge: Any, progress: Progress) -> Iterator[Metric]:
        """CO2e and cost of each configuration's median finished unit (needs [report])."""
        if self.pricing is None:
            return
        from greenmon.analysis.footprint import per_unit

        experiment_id = progress.experiment_id or ""
        co2e = gauge(
            "greenmon_unit_co2e_grams",
            "CO2e of the median finished unit per configuration (attributed from its energy).",
            labels=["experiment_id", "configuration"],
        )
        cost = gauge(
            "greenmon_unit_cost",
            "Electricity cost of the median finished unit per configuration.",
            labels=["experiment_id", "configuration", "currency"],
        )
        at_ns = time.time_ns()  # wall time: intensity files are in wall time
        for row in progress.results:
            grams, money = per_unit(self.pricing, row.median_energy_j, at_ns)
            configuration = row.configuration
            if grams is not None:
                co2e.add_metric([experiment_id, configuration], grams)
            if money is not None:
                cost.add_metric([experiment_id, configuration, self.pricing.currency], money)
        yield from (co2e, cost)

    def _probe_metrics(self, gauge: Any, counter: Any) -> Iterator[Metric]:
        up = gauge("greenmon_probe_up", "1 while the probe samples, else 0.", labels=["probe"])
        rate = gauge("greenmon_probe_rate_hz", "Achieved sampling rate.", labels=["probe"])
        samples = counter("greenmon_probe_samples", "Samples read.", labels=["probe"])
        errors = counter("greenmon_probe_errors", "Failed reads.", labels=["probe"])
        missed = counter("greenmon_probe_missed_ticks", "Ticks missed.", labels=["probe"])
        for sampler in self.daemon.samplers:
            health = sampler.health
            labels = [health.probe]
            up.add_metric(labels, 1.0 if health.state == "running" else 0.0)
            rate.add_metric(labels, float(health.achieved_hz))
            samples.add_metric(labels, float(health.samples))
            errors.add_metric(labels, float(health.errors))
            missed.add_metric(labels, float(health.missed_ticks))
        for name in self.daemon.unavailable:
            up.add_metric([name], 0.0)
        yield from (up, rate, samples, errors, missed)


def metrics_service(
    options: DaemonOptions, pricing: Pricing | None = None
) -> Callable[..., Any]:
    """A daemon service serving ``/metrics`` when ``options.metrics_port`` is set; with
    ``pricing`` (the config's [report] table) it also gives carbon and cost."""

    async def service(
        daemon: MetricsHost, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if options.metrics_port is None:
            task_status.started()
            return
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        collector = DaemonCollector(daemon, pricing)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)  # type: ignore[arg-type]

        async def scrape(request: web.Request) -> web.Response:
            await anyio.to_thread.run_sync(collector.refresh_sources)
            return web.Response(
                body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.add_routes([web.get("/metrics", scrape)])
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, options.metrics_host, options.metrics_port).start()
        except OSError as error:
            await runner.cleanup()
            raise ConfigError(
                f"Cannot serve metrics on {options.metrics_host}:{options.metrics_port}: "
                f"{error.strerror or error}. Choose another [daemon] metrics_port (or stop "
                "what listens there)."
            ) from None
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    return service
