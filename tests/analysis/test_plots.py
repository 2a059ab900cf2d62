"""The report's power figures from rows written directly: the wall-against-components
figure adds, per domain, only the channel the results count (the ``energy_sources`` view),
so a modelled CPU estimate beside RAPL is not added to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmon.analysis.plots import unit_power, wall_components_frame
from greenmon.probes.base import Channel
from greenmon.store import SampleBatch, Store

S = 1_000_000_000
PERIOD_NS = S // 10


def _unit_with_three_sources(path: Path, rapl_range_uj: float | None = None) -> Store:
    """One unit (phases 0-2 s, 2-8 s, 8-10 s) over a session with a RAPL package counter
    at 20 W, the estimate probe's modelled CPU power at 15 W and a wall gauge at 50 W."""
    store = Store.open(path)
    session = store.start_session({"host": "test"}, 0, 0)
    rapl_meta = {} if rapl_range_uj is None else {"counter_range": rapl_range_uj}
    (rapl,) = store.register_channels(
        session, "rapl",
        [Channel("package-0.energy_uj", "uJ", "counter", domain="cpu", metadata=rapl_meta)],
        PERIOD_NS,
    )  # fmt: skip
    (estimate,) = store.register_channels(
        session, "estimate",
        [Channel("cpu.power_w", "W", "gauge", domain="cpu", metadata={"estimated": True})],
        PERIOD_NS,
    )  # fmt: skip
    (wall,) = store.register_channels(
        session, "netio", [Channel("output1.load_w", "W", "gauge", domain="wall")], PERIOD_NS
    )
    batch = SampleBatch()
    for k in range(101):
        t_ns = k * PERIOD_NS
        energy_uj = 20.0 * t_ns / 1e3
        if rapl_range_uj is not None:
            energy_uj %= rapl_range_uj
        batch.append_row(t_ns, [rapl, estimate, wall], [energy_uj, 15.0, 50.0])
    store.write(batch, [], session)
    for phase, start_s, end_s in (("cooldown_before", 0, 2), ("measure", 2, 8),
                                  ("cooldown_after", 8, 10)):  # fmt: skip
        store.execute(
            "INSERT INTO phases (experiment_id, unit_id, attempt, phase, session_id, start_ns, "
            "end_ns) VALUES ('e', 0, 1, ?, ?, ?, ?)",
            [phase, session, start_s * S, end_s * S],
        )
    return store


def test_wall_against_components_adds_only_the_sources_the_results_count(
    tmp_path: Path,
) -> None:
    with _unit_with_three_sources(tmp_path / "p.duckdb") as store:
        power, _ = unit_power(store, "e", 0)
        _, result = store.query("SELECT energy_j FROM unit_phase_energy "
                                "WHERE phase = 'measure' AND domain = 'cpu'")  # fmt: skip
    frame = wall_components_frame(power)
    assert not frame.empty
    assert frame["components_w"].to_numpy() == pytest.approx(20.0)  # RAPL, not RAPL + estimate
    assert frame["wall_w"].to_numpy() == pytest.approx(50.0)
    assert result[0][0] == pytest.approx(20.0 * 6)  # the results count RAPL alone too
    # the traces still show every energy channel, the estimate included
    assert set(power["channel"]) == {
        "rapl:package-0.energy_uj", "estimate:cpu.power_w", "netio:output1.load_w"
    }  # fmt: skip


def test_a_wrapped_counter_gives_its_power_in_the_traces(tmp_path: Path) -> None:
    # the package counter wraps every 0.5 s (10 J): a wrap interval is 20 W like the rest,
    # so every sample after the first gives a point (one sample per bin here)
    with _unit_with_three_sources(tmp_path / "p.duckdb", rapl_range_uj=10_000_000.0) as store:
        power, _ = unit_power(store, "e", 0, bins=1000)
    rapl = power[power["channel"] == "rapl:package-0.energy_uj"]
    assert len(rapl) == 100
    assert rapl["power_w"].to_numpy() == pytest.approx(20.0)
