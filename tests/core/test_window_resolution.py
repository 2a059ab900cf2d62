"""How finely a source resolves a window, the rule behind ``short_window`` and
``short_steady_state`` (greenmon/sources.py ``window_resolution_sql``), for each kind of
energy source, on one short unit measured the same way by each.

The unit: a measure from 10.5 s to 12.5 s (2 s) with two requests one after the other, so its
steady state (every slot busy, one slot in process) runs from the first request's start
at 10.55 s to the last one's end at 12.45 s.  Every source is polled once a second (at
whole seconds); the sampling thread's edge reads add samples at the measure's edges for
the sources it can ask.  2 s is shorter than five 1 s polls, longer than five of any
update period declared here (RAPL 1 ms, the kernel's 10 ms tick).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from greenmon.energy import Window, window_energy
from greenmon.probes.base import Channel
from greenmon.probes.procstat import tick_ns
from greenmon.store import SampleBatch, Store

S = 1_000_000_000
MEASURE = (10_500_000_000, 12_500_000_000)
REQUESTS = ((10_550_000_000, 11_500_000_000), (11_510_000_000, 12_450_000_000))

# The estimate probe's channel as probes/estimate.py declares it: a mean since the
# previous read, computed from tick counters.
ESTIMATE = Channel(
    "cpu.power_w", "W", "gauge", domain="cpu",
    metadata={"estimated": True, "interval_mean": True, "counter_update_ns": tick_ns()},
)  # fmt: skip
RAPL = Channel(
    "package-0.energy_uj", "uJ", "counter", domain="cpu",
    metadata={"counter_update_ns": 1_000_000},
)  # fmt: skip
ENERGIBRIDGE = Channel("cpu.energy_j", "J", "counter", domain="cpu")
WATTMETER = Channel("output1.load_w", "W", "gauge", domain="wall")

# (name, probe, channel, samples at the measure's edges): 20 W throughout
SOURCES = [
    ("estimate, edges read", "estimate", ESTIMATE, True),
    ("estimate, polls only", "estimate", ESTIMATE, False),
    ("RAPL counter, edges read", "rapl", RAPL, True),
    ("EnergiBridge counter, streamed", "energibridge", ENERGIBRIDGE, False),
    ("wattmeter gauge, edges read", "netio", WATTMETER, True),
]


def _value(channel: Channel, t_ns: int) -> float:
    """20 W: a counter's reading at t_ns in its unit, a gauge's power."""
    if channel.kind == "gauge":
        return 20.0
    per_j = 1e6 if channel.unit == "uJ" else 1.0
    return 20.0 * t_ns / S * per_j


def _unit(store: Store, unit_id: int, probe: str, channel: Channel, edges_read: bool) -> None:
    session = store.start_session({"host": f"h{unit_id}"}, 0, 0)
    (channel_id,) = store.register_channels(session, probe, [channel], S)
    times = {k * S for k in range(8, 16)}
    if edges_read:
        times |= set(MEASURE)
    batch = SampleBatch()
    for t_ns in sorted(times):
        batch.append_row(t_ns, [channel_id], [_value(channel, t_ns)])
    store.write(batch, [], session)
    store.execute(
        "INSERT INTO units (experiment_id, unit_id, model, engine, provider, repetition, "
        "status, attempt, session_id, started_ns, ended_ns) "
        "VALUES ('e', ?, 'tiny', 'torch', 'cpu', 1, 'done', 1, ?, ?, ?)",
        [unit_id, session, MEASURE[0], MEASURE[1]],
    )
    store.execute(
        "INSERT INTO phases (experiment_id, unit_id, attempt, phase, session_id, start_ns, "
        "end_ns) VALUES ('e', ?, 1, 'measure', ?, ?, ?)",
        [unit_id, session, *MEASURE],
    )
    for prompt, (start_ns, end_ns) in enumerate(REQUESTS):
        store.execute(
            "INSERT INTO requests (experiment_id, unit_id, attempt, phase, prompt_id, "
            "tokens_in, tokens_out, tokens_requested, start_ns, end_ns) "
            "VALUES ('e', ?, 1, 'measure', ?, 4, 16, 16, ?, ?)",
            [unit_id, str(prompt), start_ns, end_ns],
        )
    store.execute(
        "INSERT INTO windows (session_id, name, kind, tags, start_ns, end_ns) "
        "VALUES (?, ?, 'window', '{}', ?, ?)",
        [session, f"w{unit_id}", *MEASURE],
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    path = tmp_path_factory.mktemp("resolution") / "r.duckdb"
    with Store.open(path) as store:
        for unit_id, (_, probe, channel, edges_read) in enumerate(SOURCES):
            _unit(store, unit_id, probe, channel, edges_read)
        columns, rows = store.query("SELECT * FROM unit_results_for('e') ORDER BY unit_id")
        units = [dict(zip(columns, row, strict=True)) for row in rows]
        _, windows = store.query("SELECT name, flags FROM window_results ORDER BY window_id")
    assert len(units) == len(SOURCES)
    return {
        name: {**unit, "window_flags": list(window_flags)}
        for (name, *_), unit, (_, window_flags) in zip(SOURCES, units, windows, strict=True)
    }


def _short(row: dict[str, Any]) -> set[str]:
    return {f for f in row["flags"] if f.startswith("short_")}


def test_every_source_measures_the_same_energy(results: dict[str, dict[str, Any]]) -> None:
    for row in results.values():
        energy_j = row["energy_cpu_j"] if row["energy_cpu_j"] is not None else row["energy_wall_j"]
        assert energy_j == pytest.approx(40.0)
        assert row["steady_s"] == pytest.approx(1.9)


def test_a_source_read_at_both_edges_is_judged_by_its_own_update(
    results: dict[str, dict[str, Any]],
) -> None:
    """The estimate's 1 Hz polls do not make its edge-read measure short; read at the same
    edges, it resolves the window as a RAPL counter does, to its own update period."""
    estimate = results["estimate, edges read"]
    assert _short(estimate) == set()
    assert estimate["window_flags"] == ["estimated"]
    assert estimate["max_period_ns"] == tick_ns()
    # the steady state's edges are request times, 50 ms from the edge reads
    assert estimate["steady_period_ns"] == 50_000_000
    rapl = results["RAPL counter, edges read"]
    assert _short(rapl) == set() and rapl["window_flags"] == []
    assert (rapl["max_period_ns"], rapl["steady_period_ns"]) == (1_000_000, 50_000_000)


def test_the_same_unit_from_polls_alone_is_short(results: dict[str, dict[str, Any]]) -> None:
    """Without the edge reads, each edge cuts a 1 s interval half-way: the split of half a
    second's energy at each edge is not known, which a 2 s window cannot carry."""
    polled = results["estimate, polls only"]
    assert _short(polled) == {"short_window", "short_steady_state"}
    assert "short_window" in polled["window_flags"]
    assert polled["max_period_ns"] == S // 2
    assert polled["steady_period_ns"] == 450_000_000
    # a stream updating once a second resolves nothing finer, wherever its edges fall
    streamed = results["EnergiBridge counter, streamed"]
    assert _short(streamed) == {"short_window", "short_steady_state"}
    assert streamed["max_period_ns"] == S


def test_a_power_gauge_read_at_its_edges_is_still_judged_by_its_sampling(
    results: dict[str, dict[str, Any]],
) -> None:
    """A gauge's samples are instants: between them its power is interpolated, so reading
    it at the edges does not resolve what happened in between."""
    gauge = results["wattmeter gauge, edges read"]
    assert _short(gauge) == {"short_window", "short_steady_state"}
    assert gauge["max_period_ns"] == S


def test_the_edge_gap_is_the_farther_edge_from_its_nearest_sample(tmp_path: Path) -> None:
    with Store.open(tmp_path / "g.duckdb") as store:
        session = store.start_session({"host": "h"}, 0, 0)
        (channel_id,) = store.register_channels(session, "rapl", [RAPL], S)
        batch = SampleBatch()
        for t_ns in (0, S, 2 * S, 2 * S + S // 2, 3 * S):
            batch.append_row(t_ns, [channel_id], [_value(RAPL, t_ns)])
        store.write(batch, [], session)
        got = window_energy(
            store.con,
            [
                Window(1, channel_id, S, 2 * S + S // 2),  # both edges on samples
                Window(2, channel_id, S // 10, 2 * S + S // 2),  # 0.1 s after a sample
                Window(3, channel_id, 7 * S // 10, 2 * S + S // 4),  # 0.3 s before, 0.25 s
                Window(4, channel_id, 2 * S, 4 * S),  # past the last sample: no cut
            ],
        )
    assert [got[(w, channel_id)].edge_gap_ns for w in (1, 2, 3)] == [
        0, S // 10, 3 * S // 10
    ]  # fmt: skip
    assert got[(4, channel_id)].edge_gap_ns == 0
