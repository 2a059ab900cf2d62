"""Energy over windows in DuckDB: trapezoid of power gauges, coverage."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmon.energy import Window, window_energy
from greenmon.probes.base import Channel
from greenmon.store import SampleBatch, Store

S = 1_000_000_000


def _store_trace(path: Path, points: list[tuple[int, float]], period_ns: int) -> tuple[Store, int]:
    store = Store.open(path)
    session = store.start_session({"host": "test"}, 0, 0)
    [channel_id] = store.register_channels(
        session, "fake", [Channel("wall.load_w", "W", "gauge", domain="wall")], period_ns
    )
    batch = SampleBatch()
    for t_ns, value in points:
        batch.append_row(t_ns, [channel_id], [value])
    store.write(batch, [], session)
    return store, channel_id


def test_step_power_trace_matches_the_analytic_energy(tmp_path: Path) -> None:
    # 10 W for the first second, 30 W for the next: 40 J; the step is a vertical edge.
    period_ns = S // 10
    points = [(k * period_ns, 10.0) for k in range(11)]
    points += [(S + 1, 30.0)] + [(S + k * period_ns, 30.0) for k in range(1, 11)]
    store, channel_id = _store_trace(tmp_path / "db.duckdb", points, period_ns)
    with store:
        windows = [
            Window(1, channel_id, 0, 2 * S),
            Window(2, channel_id, S // 2, 3 * S // 2),
            Window(3, channel_id, S + 1, 2 * S),
        ]
        energy = window_energy(store.con, windows)
    assert energy[(1, channel_id)].energy_j == pytest.approx(40.0, abs=1e-6)
    assert energy[(2, channel_id)].energy_j == pytest.approx(5.0 + 15.0, abs=1e-6)
    assert energy[(3, channel_id)].energy_j == pytest.approx(30.0, abs=1e-6)
    assert energy[(1, channel_id)].coverage == 1.0


def test_ramp_is_integrated_exactly_with_cut_edges(tmp_path: Path) -> None:
    period_ns = S // 10
    points = [(k * period_ns, 10.0 + 10.0 * k / 10) for k in range(21)]  # P = 10 + 10 t
    store, channel_id = _store_trace(tmp_path / "db.duckdb", points, period_ns)
    with store:
        energy = window_energy(store.con, [Window(7, channel_id, S // 4, 7 * S // 4)])
    # integral of 10 + 10 t from 0.25 to 1.75
    assert energy[(7, channel_id)].energy_j == pytest.approx(15.0 + 5.0 * (1.75**2 - 0.25**2))


def test_a_stalled_probe_shows_as_coverage_below_one(tmp_path: Path) -> None:
    period_ns = S // 10
    points = [(k * period_ns, 5.0) for k in range(11)] + [
        (5 * S + k * period_ns, 5.0) for k in range(11)
    ]
    store, channel_id = _store_trace(tmp_path / "db.duckdb", points, period_ns)
    with store:
        energy = window_energy(store.con, [Window(1, channel_id, 0, 6 * S)])[(1, channel_id)]
    # covered: [0, 1.2] and [4.8, 6.0] -> 2.4 s of 6 s
    assert energy.coverage == pytest.approx(2.4 / 6.0)
    assert energy.energy_j == pytest.approx(30.0)


def test_window_with_no_samples_has_zero_coverage(tmp_path: Path) -> None:
    store, channel_id = _store_trace(tmp_path / "db.duckdb", [(0, 1.0), (S // 10, 1.0)], S // 10)
    with store:
        energy = window_energy(store.con, [Window(1, channel_id, 100 * S, 101 * S)])
    assert energy[(1, channel_id)].coverage == 0.0
    assert energy[(1, channel_id)].energy_j is None
