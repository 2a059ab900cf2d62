"""Every energy and power channel's real update period, detected from value
changes, stored with the channel, and used by the short_window flag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from greenmon.config import parse_config
from greenmon.daemon import Daemon
from greenmon.probes.base import Channel, Probe
from greenmon.probes.energibridge import EnergiBridgeProbe
from greenmon.probes.energibridge import Options as EnergiBridgeOptions
from greenmon.probes.nvml import NvmlProbe
from greenmon.probes.rapl import Options as RaplOptions
from greenmon.probes.rapl import RaplProbe
from greenmon.store import SampleBatch, Store
from greenmon.update_periods import MIN_INTERVALS, UpdatePeriods
from tests.fakes.energibridge import write_fake_energibridge
from tests.fakes.engine import PoweredRapl
from tests.fakes.nvml import FakeGpu, FakeNvml

CONFIG = """
[probes.nvml]
rate_hz = 100
[probes.rapl]
rate_hz = 50
[probes.energibridge]
rate_hz = 20
"""


def _channels() -> list[Channel]:
    return [
        Channel("a.energy_uj", "uJ", "counter", "cpu"),
        Channel("b.power_mw", "mW", "gauge"),
        Channel("c.util_percent", "%", "gauge"),
        Channel("d.load_w", "W", "gauge", "wall"),
    ]


def test_periods_from_value_changes_across_hand_offs() -> None:
    periods = UpdatePeriods(_channels(), [11, 12, 13, 14])
    t_ns = np.arange(200, dtype=np.int64) * 10_000_000  # 10 ms sampling
    rows = np.arange(200)
    values = np.column_stack(
        [
            rows * 7.0,  # changes at every sample: the sampling period
            (rows // 4) * 1.0,  # changes every 4th sample: 40 ms
            rows * 1.0,  # not energy or power: not followed
            np.full(200, 230.0),  # never changes: no period
        ]
    )
    values[::5, 1] = np.nan  # missing readings are skipped, not changes
    for start in range(0, 200, 30):  # hand-offs of 30 rows carry the state over
        periods.offer(t_ns[start : start + 30], values[start : start + 30])
    found = periods.estimates()
    assert set(found) == {11, 12}
    assert found[11] == (10_000_000, 64)  # the last WINDOW intervals
    assert found[12][0] == 40_000_000
    few = UpdatePeriods(_channels(), [1, 2, 3, 4])
    few.offer(t_ns[: MIN_INTERVALS], values[: MIN_INTERVALS])
    assert few.estimates() == {}  # four intervals: not yet


@pytest.mark.anyio
async def test_daemon_stores_each_sources_update_period(tmp_path: Path) -> None:
    gpu = FakeGpu(
        "GPU-a", has_instant_power_field=False, energy_update_period_s=0.05,
        power_update_period_s=0.2,
    )  # fmt: skip
    rapl = PoweredRapl(tmp_path / "powercap", 10.0).start()  # updates every 0.5 ms
    fake_eb = write_fake_energibridge(tmp_path / "bin")
    probes: dict[str, Probe] = {
        "nvml": NvmlProbe(nvml=FakeNvml([gpu])),
        "rapl": RaplProbe(RaplOptions(sysfs_root=str(rapl.tree.root))),
        "energibridge": EnergiBridgeProbe(
            EnergiBridgeOptions(path=str(fake_eb.path), msr_device="", interval_ms=40)
        ),
    }
    store = Store.open(tmp_path / "db.duckdb")
    try:
        daemon = Daemon(store, parse_config(CONFIG), probes=probes, handle_signals=False)
        await daemon.run(2.5)
        _, rows = store.query(
            "SELECT probe, name, period_ns, "
            "json_extract(metadata, '$.update_period_ns')::BIGINT, "
            "json_extract(metadata, '$.uuid')::VARCHAR FROM channels"
        )
        _, events = store.query("SELECT message FROM events WHERE message LIKE '%updates every%'")
    finally:
        store.close()
        rapl.stop()
    found = {(probe, name): (period, update) for probe, name, period, update, _ in rows}
    # the slow NVML readings: their refresh, not the 10 ms sampling
    assert found[("nvml", "gpu0.energy_mj")][1] == pytest.approx(50e6, rel=0.25)
    assert found[("nvml", "gpu0.power_mw")][1] == pytest.approx(200e6, rel=0.25)
    # RAPL refreshes faster than it is sampled: the sampling period (20 ms)
    assert found[("rapl", "package-0.energy_uj")][1] == pytest.approx(20e6, rel=0.25)
    # EnergiBridge's rows carry its own 40 ms interval
    eb = [u for (p, n), (_, u) in found.items() if p == "energibridge" and n.endswith("_j")]
    assert eb and all(u == pytest.approx(40e6, rel=0.25) for u in eb)
    # the rest of the metadata is kept; utilisation is not followed
    assert any(uuid == '"GPU-a"' for *_, uuid in rows)
    assert found[("nvml", "gpu0.util_gpu_percent")][1] is None
    assert any("gpu0.power_mw updates every" in e for (e,) in events)


def test_short_window_uses_the_update_period(tmp_path: Path) -> None:
    """A window 5 sampling periods long but shorter than 5 update periods is short."""
    store = Store.open(tmp_path / "db.duckdb")
    try:
        session = store.start_session({"host": "h"}, 0, 0, {})
        channel = Channel("gpu0.energy_mj", "mJ", "counter", "gpu")
        (channel_id,) = store.register_channels(session, "nvml", [channel], 10_000_000)
        query = "SELECT period_ns FROM energy_sources WHERE channel_id = ?"
        assert store.query(query, [channel_id])[1] == [(10_000_000,)]
        store.set_update_periods({channel_id: (100_000_000, 20)})
        assert store.query(query, [channel_id])[1] == [(100_000_000,)]
        # faster than sampling (never stored that way, but the sampling period wins)
        store.set_update_periods({channel_id: (1_000_000, 20)})
        assert store.query(query, [channel_id])[1] == [(10_000_000,)]
    finally:
        store.close()



def _gpu_unit(store: Store, kind: str, unit_id: int) -> None:
    """A done unit whose GPU energy comes from a power gauge or an energy counter."""
    session = store.start_session({"host": "h"}, 0, 0, {})
    name, unit = ("gpu0.power_mw", "mW") if kind == "gauge" else ("gpu0.energy_mj", "mJ")
    (channel_id,) = store.register_channels(
        session, "nvml", [Channel(name, unit, kind, "gpu")], 10_000_000  # type: ignore[arg-type]
    )
    start_ns, end_ns = 1_000_000_000, 3_000_000_000
    store.execute(
        "INSERT INTO units (experiment_id, unit_id, model, engine, provider, repetition, "
        "status, attempt, session_id, started_ns, ended_ns) "
        "VALUES ('e', ?, 'tiny', 'torch', 'cuda', 1, 'done', 1, ?, ?, ?)",
        [unit_id, session, start_ns, end_ns],
    )
    store.execute(
        "INSERT INTO phases (experiment_id, unit_id, attempt, phase, session_id, start_ns, "
        "end_ns) VALUES ('e', ?, 1, 'measure', ?, ?, ?)",
        [unit_id, session, start_ns, end_ns],
    )
    batch = SampleBatch()
    for i in range(0, 401):  # 0 to 4 s every 10 ms: 100 W either way
        t_ns = i * 10_000_000
        batch.append_row(t_ns, [channel_id], [100_000.0 if kind == "gauge" else 1000.0 * i])
    store.write(batch, [], session)


def test_a_gpu_with_only_a_power_gauge_flags_its_units(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db.duckdb") as store:
        _gpu_unit(store, "gauge", 0)
        _gpu_unit(store, "counter", 1)
        _, rows = store.query(
            "SELECT unit_id, energy_gpu_j, flags FROM unit_results_for('e') ORDER BY 1"
        )
    (_, gauge_j, gauge_flags), (_, counter_j, counter_flags) = rows
    assert gauge_j == pytest.approx(200.0, rel=0.01) and counter_j == pytest.approx(200.0, rel=0.01)
    assert "gpu_power_gauge" in gauge_flags
    assert "gpu_power_gauge" not in counter_flags
