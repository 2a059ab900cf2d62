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


def _store_counter(
    path: Path, values: list[tuple[int, float]], period_ns: int, counter_range: float | None
) -> tuple[Store, int]:
    """One counter channel in J (``counter_range``: where it wraps; None: it resets)."""
    store = Store.open(path)
    session = store.start_session({"host": "test"}, 0, 0)
    metadata = {} if counter_range is None else {"counter_range": counter_range}
    [channel_id] = store.register_channels(
        session, "fake", [Channel("pkg.energy_j", "J", "counter", domain="cpu",
                                  metadata=metadata)], period_ns,
    )  # fmt: skip
    batch = SampleBatch()
    for t_ns, value in values:
        batch.append_row(t_ns, [channel_id], [value])
    store.write(batch, [], session)
    return store, channel_id


def test_a_window_that_starts_inside_a_wrapped_interval_counts_the_wrap(tmp_path: Path) -> None:
    # 10 W into a counter that wraps at 100 J: 90 J at 9 s, 0 J at 10 s (the wrap)
    values = [(k * S, (10.0 * k) % 100.0) for k in range(16)]
    store, channel_id = _store_counter(tmp_path / "db.duckdb", values, S, 100.0)
    with store:
        energy = window_energy(
            store.con,
            [
                Window(1, channel_id, 9 * S + S // 2, 12 * S),  # starts inside the wrap
                Window(2, channel_id, 9 * S + S // 4, 9 * S + S // 2),  # wholly inside it
                Window(3, channel_id, 0, 12 * S),  # spans it
                Window(4, channel_id, 10 * S, 12 * S),  # starts at the sample after it
                Window(5, channel_id, 2 * S, 9 * S + S // 2),  # ends inside it
            ],
        )
    assert energy[(1, channel_id)].energy_j == pytest.approx(25.0)
    assert energy[(1, channel_id)].wraps == 1
    assert energy[(2, channel_id)].energy_j == pytest.approx(2.5)
    assert energy[(2, channel_id)].wraps == 1
    assert energy[(3, channel_id)].energy_j == pytest.approx(120.0)
    assert energy[(3, channel_id)].wraps == 1
    assert energy[(4, channel_id)].energy_j == pytest.approx(20.0)
    assert energy[(4, channel_id)].wraps == 0
    assert energy[(5, channel_id)].energy_j == pytest.approx(75.0)
    assert energy[(5, channel_id)].wraps == 1


def test_a_window_that_starts_inside_a_reset_interval_counts_the_reset(tmp_path: Path) -> None:
    # no known range: 90 J -> 0 J is a reset, that interval's energy unknown (not covered)
    values = [(k * S, (10.0 * k) % 100.0) for k in range(16)]
    store, channel_id = _store_counter(tmp_path / "db.duckdb", values, S, None)
    with store:
        energy = window_energy(
            store.con,
            [Window(1, channel_id, 9 * S + S // 2, 12 * S), Window(2, channel_id, 10 * S, 12 * S)],
        )
    assert energy[(1, channel_id)].energy_j == pytest.approx(20.0)
    assert energy[(1, channel_id)].resets == 1
    assert energy[(1, channel_id)].coverage == pytest.approx(2.0 / 2.5)
    assert energy[(2, channel_id)].resets == 0
    assert energy[(2, channel_id)].coverage == 1.0


def test_coverage_ends_at_the_last_sample_where_energy_ends(tmp_path: Path) -> None:
    # 10 W, sampled at 0 and 1 s only: a 3 s window knows 10 J of it, a third
    store, channel_id = _store_trace(tmp_path / "db.duckdb", [(0, 10.0), (S, 10.0)], S)
    with store:
        energy = window_energy(store.con, [Window(1, channel_id, 0, 3 * S)])[(1, channel_id)]
    assert energy.energy_j == pytest.approx(10.0)
    assert energy.coverage == pytest.approx(1.0 / 3.0)


def test_coverage_starts_at_the_first_sample_where_energy_starts(tmp_path: Path) -> None:
    store, channel_id = _store_trace(tmp_path / "db.duckdb", [(2 * S, 10.0), (3 * S, 10.0)], S)
    with store:
        energy = window_energy(store.con, [Window(1, channel_id, 0, 3 * S)])[(1, channel_id)]
    assert energy.energy_j == pytest.approx(10.0)
    assert energy.coverage == pytest.approx(1.0 / 3.0)


def test_a_counter_cut_mid_interval_gives_its_share_and_full_coverage(tmp_path: Path) -> None:
    # samples every second, 7 W; the window's edges fall a quarter and a half into intervals
    values = [(k * S, 7.0 * k) for k in range(10)]
    store, channel_id = _store_counter(tmp_path / "db.duckdb", values, S, 1e9)
    with store:
        energy = window_energy(
            store.con, [Window(1, channel_id, S + S // 4, 5 * S + S // 2)]
        )[(1, channel_id)]
    assert energy.energy_j == pytest.approx(7.0 * 4.25)
    assert energy.coverage == 1.0
    assert (energy.wraps, energy.resets) == (0, 0)


def test_an_interval_mean_gauge_is_a_step_exact_between_edge_reads(tmp_path: Path) -> None:
    """Utilisation from tick counters: each sample is the mean since the previous one.
    Read at 0.3 s and 1.7 s (edges) and polled every second between, the window's mean is
    the ticks' between the edges, whatever the polls said outside it."""
    store = Store.open(tmp_path / "db.duckdb")
    session = store.start_session({"host": "test"}, 0, 0)
    [channel_id] = store.register_channels(
        session, "host", [Channel("cpu.percent", "%", "gauge", metadata={"interval_mean": True})],
        S,
    )  # fmt: skip
    # 0 -> 0.3: 90 %, 0.3 -> 1.0: 20 %, 1.0 -> 1.7: 40 %, 1.7 -> 2.0: 90 %
    points = [(0, 50.0), (3 * S // 10, 90.0), (S, 20.0), (17 * S // 10, 40.0), (2 * S, 90.0)]
    batch = SampleBatch()
    for t_ns, value in points:
        batch.append_row(t_ns, [channel_id], [value])
    store.write(batch, [], session)
    with store:
        got = window_energy(
            store.con,
            [Window(1, channel_id, 3 * S // 10, 17 * S // 10), Window(2, channel_id, S // 2, S)],
        )
    # percent-seconds: 20 % x 0.7 s + 40 % x 0.7 s; a cut edge takes the step's value
    assert got[(1, channel_id)].energy_native == pytest.approx(20.0 * 0.7 + 40.0 * 0.7)
    assert got[(2, channel_id)].energy_native == pytest.approx(20.0 * 0.5)
    assert got[(1, channel_id)].edge == "integrated"
