"""`/metrics` of a running `greenmon daemon`, read with prometheus-client's own parser."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from prometheus_client.parser import text_string_to_metric_families

from greenmon.api import ApiClient
from greenmon.api.messages import Progress, ResultRow
from tests.api.fakes import FakePowerProbe, fake_plan, running_daemon
from tests.measure.support import IDLE_W, MarkedPower, start_daemon, stop_daemon, write_config

DOCUMENTED = {
    "greenmon_power_watts",
    "greenmon_energy_joules",
    "greenmon_probe_up",
    "greenmon_probe_rate_hz",
    "greenmon_probe_samples",
    "greenmon_probe_errors",
    "greenmon_probe_missed_ticks",
    "greenmon_windows_open",
    "greenmon_self_cpu_seconds",
    "greenmon_self_sampling_cpu_seconds",
}
# while the daemon's runner runs a plan
EXPERIMENT_METRICS = {
    "greenmon_experiment_info",
    "greenmon_experiment_units_done",
    "greenmon_experiment_units_total",
    "greenmon_unit_info",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        values = found.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            values[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_metrics_from_a_running_daemon(
    tmp_path: Path, short_dir: Path, marked_power: MarkedPower
) -> None:
    port = _free_port()
    socket_path = short_dir / "d.sock"
    config = write_config(tmp_path, marked_power.tree.root, f"[daemon]\nmetrics_port = {port}\n")
    daemon = start_daemon(tmp_path, socket_path, config, tmp_path / "metrics.duckdb")
    try:

        async def open_window() -> None:
            async with ApiClient(socket_path) as client:
                await client.open_window("scraped")

        anyio.run(open_window)
        first = _scrape(port)
        time.sleep(2.0)
        second = _scrape(port)
    finally:
        stop_daemon(daemon)

    assert set(second) >= DOCUMENTED, sorted(DOCUMENTED - set(second))
    assert second["greenmon_windows_open"][()] == 1
    package = (("channel", "package-0.energy_uj"), ("domain", "cpu"), ("probe", "rapl"))
    # a counter's power is its mean since the previous scrape: the power put in
    assert package not in first["greenmon_power_watts"]
    stale_w = marked_power.stale_j(IDLE_W) / 2.0  # the fake counter's lateness, over 2 s
    assert abs(second["greenmon_power_watts"][package] - IDLE_W) < 0.01 * IDLE_W + stale_w
    energy_j = second["greenmon_energy_joules"][(("domain", "cpu"),)]
    assert 1.9 * IDLE_W < energy_j < 3.0 * IDLE_W
    assert second["greenmon_probe_up"][(("probe", "rapl"),)] == 1
    assert second["greenmon_probe_samples"][(("probe", "rapl"),)] > 150
    # what measuring costs: the daemon's own CPU, growing
    assert 0 < first["greenmon_self_cpu_seconds"][()] <= second["greenmon_self_cpu_seconds"][()]
    assert second["greenmon_self_sampling_cpu_seconds"][()] > 0


def test_metrics_carry_the_runners_experiment_and_unit(tmp_path: Path, short_dir: Path) -> None:
    """While the daemon's runner runs a plan (the real runner, on the fake engine), a scrape
    has the documented experiment and unit metrics."""
    port = _free_port()
    scraped: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    running: dict[str, Any] = {}

    async def scenario() -> None:
        async with (
            running_daemon(
                tmp_path / "runner.duckdb", short_dir / "d.sock", {"fakepower": FakePowerProbe()},
                config_text=f"[daemon]\nmetrics_port = {port}\n"
                "[report]\ncarbon_intensity_g_per_kwh = 400\n",
            ),
            ApiClient(short_dir / "d.sock") as client,
        ):  # fmt: skip
            plan = fake_plan("scraped", repetitions=20, cooldown_s=0.3)
            submitted = await client.submit(plan, None)
            running["experiment_id"] = submitted.experiment_id
            with anyio.fail_after(120):
                while True:
                    progress = (await client.status()).progress
                    # a unit running, and one finished (its carbon is in the scrape)
                    if progress is not None and progress.status == "running" \
                            and progress.unit and progress.results:  # fmt: skip
                        break
                    await anyio.sleep(0.05)
            scraped.update(await anyio.to_thread.run_sync(_scrape, port))
            await client.cancel()

    anyio.run(scenario)
    assert set(scraped) >= EXPERIMENT_METRICS, sorted(EXPERIMENT_METRICS - set(scraped))
    ((labels, value),) = scraped["greenmon_experiment_info"].items()
    info = dict(labels)
    assert info["experiment_id"] == running["experiment_id"] and value == 1
    assert info["plan_name"] == "scraped" and info["status"] == "running"
    assert scraped["greenmon_experiment_units_total"][()] == 40
    assert 0 <= scraped["greenmon_experiment_units_done"][()] < 40
    ((labels, _),) = scraped["greenmon_unit_info"].items()
    unit = dict(labels)
    assert unit["experiment_id"] == running["experiment_id"]
    assert unit["model"] and unit["configuration"] and unit["unit_id"]
    # the daemon config's [report] table reaches the collector
    co2e = scraped["greenmon_unit_co2e_grams"]
    assert co2e and all(dict(k)["experiment_id"] == running["experiment_id"] for k in co2e)
    assert all(v > 0 for v in co2e.values())


class _FinishedUnitsHost:
    """What the collector reads of a daemon whose runner has finished units: no probes,
    and the runner's progress with its per-configuration results."""

    windows = None
    session_id = "s"
    store: Any = None

    def __init__(self, results: list[ResultRow]) -> None:
        self.samplers: list[Any] = []
        self.channels: dict[int, Any] = {}
        self.unavailable: dict[str, str] = {}
        self.results = results

    def channel_values(self) -> list[tuple[int, int, float]]:
        return []

    def progress(self) -> Progress:
        return Progress(status="running", experiment_id="e1", plan_name="p", unit_index=2,
                        units_total=4, unit=None, results=self.results)  # fmt: skip


def _collect(collector: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = (
                sample.value
            )
    return found


def test_carbon_and_cost_per_configuration_from_the_report_table(tmp_path: Path) -> None:
    """With a [report] table the scrape has the CO2e and cost of each configuration's median
    unit; a configuration without energy gets neither; without the table, no such metric."""
    from greenmon.analysis.footprint import pricing
    from greenmon.config import parse_config
    from greenmon.metrics import DaemonCollector

    config = parse_config(
        "[report]\ncarbon_intensity_g_per_kwh = 300\nprice_per_kwh = 0.5\ncurrency = \"USD\"\n"
    )
    priced = pricing(config.report)
    assert priced is not None
    results = [ResultRow(configuration="fake/cpu", median_energy_j=7.2e6),  # 2 kWh
               ResultRow(configuration="fake2/cpu", median_energy_j=None)]  # fmt: skip
    found = _collect(DaemonCollector(_FinishedUnitsHost(results), priced))  # type: ignore[arg-type]
    labels = (("configuration", "fake/cpu"), ("experiment_id", "e1"))
    assert found["greenmon_unit_co2e_grams"] == {labels: 600.0}
    assert found["greenmon_unit_cost"] == {(*labels[:1], ("currency", "USD"), *labels[1:]): 1.0}
    plain = _collect(DaemonCollector(_FinishedUnitsHost(results)))  # type: ignore[arg-type]
    assert "greenmon_unit_co2e_grams" not in plain and "greenmon_unit_cost" not in plain
    assert plain["greenmon_experiment_units_total"] == {(): 4.0}


def test_carbon_follows_an_intensity_file_at_the_scrape(tmp_path: Path) -> None:
    """A time-varying intensity is taken at the scrape: the file's latest row before now."""
    from greenmon.analysis.footprint import pricing
    from greenmon.config import parse_config
    from greenmon.metrics import DaemonCollector

    now_s = time.time()
    csv = tmp_path / "grid.csv"
    csv.write_text(f"time,g_per_kwh\n{now_s - 7200:.0f},100\n{now_s - 60:.0f},250\n"
                   f"{now_s + 7200:.0f},900\n")  # fmt: skip
    config = parse_config(f'[report]\ncarbon_intensity_file = "{csv}"\n')
    priced = pricing(config.report)
    assert priced is not None
    results = [ResultRow(configuration="fake/cpu", median_energy_j=3.6e6)]
    found = _collect(DaemonCollector(_FinishedUnitsHost(results), priced))  # type: ignore[arg-type]
    assert found["greenmon_unit_co2e_grams"] == {
        (("configuration", "fake/cpu"), ("experiment_id", "e1")): 250.0}  # fmt: skip
    assert "greenmon_unit_cost" not in found
