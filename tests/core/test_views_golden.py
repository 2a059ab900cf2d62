"""Golden tests of every view in greenmon/views.py's REGISTRY, on one small database
written directly, whose figures are worked out by hand below.

Session 1 samples every 0.1 s from 0 to 12 s:
- RAPL package counter (cpu), 20 W, wrapping at 41.5 J: wraps inside [2.0, 2.1] (which
  the measure's start cuts), [4.1, 4.2], [6.2, 6.3], [8.2, 8.3] and [10.3, 10.4];
- RAPL DRAM counter (dram), 5 W, no known range: reset inside [8.0, 8.1] (which the
  measure's end cuts), so that interval's energy is unknown;
- the estimate probe's modelled CPU power (cpu, estimated), 15 W: never the cpu source;
- a wall gauge, 50 W until 9 s then 10 W, sampled only until 11 s;
- host CPU utilisation rising 10 %/s, and greenmon's own CPU time (the observer's cost)
  rising 10 ms/s in the process, 2 ms/s in its sampling thread.
Unit 0: cooldown_before [0, 2], measure [2.05, 8.05] (every edge cuts an interval),
cooldown_after [8.05, 10]; two requests in the measure.  Session 2 has only a host gauge:
its unit and window have no energy source.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenmon.probes.base import Channel
from greenmon.store import SampleBatch, Store
from greenmon.views import REGISTRY, View

S = 1_000_000_000
P = S // 10
RANGE_UJ = 41_500_000.0


def _t(seconds: float) -> int:
    return round(seconds * S)


def _wall_w(k: int) -> float:
    return 50.0 if k < 90 else 10.0


def _build(path: Path) -> Store:
    store = Store.open(path)
    one = store.start_session({"host": "a"}, 0, 0)
    rapl = store.register_channels(
        one, "rapl",
        [Channel("package-0.energy_uj", "uJ", "counter", domain="cpu",
                 metadata={"counter_range": RANGE_UJ}),
         Channel("dram.energy_uj", "uJ", "counter", domain="dram")],
        P,
    )  # fmt: skip
    (estimate,) = store.register_channels(
        one, "estimate",
        [Channel("cpu.power_w", "W", "gauge", domain="cpu", metadata={"estimated": True})], P,
    )  # fmt: skip
    (wall,) = store.register_channels(
        one, "netio", [Channel("output1.load_w", "W", "gauge", domain="wall")], P
    )
    (cpu_percent,) = store.register_channels(one, "host", [Channel("cpu.percent", "%", "gauge")], P)
    observer = store.register_channels(
        one, "host",
        [Channel("greenmon.cpu_s", "s", "counter"), Channel("greenmon.sampling_cpu_s", "s", "counter")],
        P,
    )  # fmt: skip
    batch = SampleBatch()
    for k in range(121):
        t_s = k / 10
        package_uj = (20e6 * t_s) % RANGE_UJ
        dram_uj = 5e6 * t_s if k <= 80 else 5e6 * (t_s - 8.05)
        ids = [*rapl, estimate, cpu_percent] + ([wall] if k <= 110 else [])
        values = [package_uj, dram_uj, 15.0, 10.0 * t_s] + ([_wall_w(k)] if k <= 110 else [])
        batch.append_row(k * P, ids, values)
        batch.append_row(k * P, observer, [0.01 * t_s, 0.002 * t_s])
    store.write(batch, [], one)

    two = store.start_session({"host": "b"}, 0, 0)
    (alone,) = store.register_channels(two, "host", [Channel("cpu.percent", "%", "gauge")], P)
    batch = SampleBatch()
    for k in range(21):
        batch.append_row(100 * S + k * P, [alone], [30.0])
    store.write(batch, [], two)

    for unit_id, session, start_s, end_s in ((0, one, 0.0, 10.0), (1, two, 100.0, 102.0)):
        store.execute(
            "INSERT INTO units (experiment_id, unit_id, model, engine, provider, repetition, "
            "status, attempt, session_id, started_ns, ended_ns) "
            "VALUES ('e', ?, 'tiny', 'torch', 'cpu', 1, 'done', 1, ?, ?, ?)",
            [unit_id, session, _t(start_s), _t(end_s)],
        )
    phases = [(0, one, "cooldown_before", 0.0, 2.0), (0, one, "measure", 2.05, 8.05),
              (0, one, "cooldown_after", 8.05, 10.0), (1, two, "measure", 100.5, 101.5)]  # fmt: skip
    for unit_id, session, phase, start_s, end_s in phases:
        store.execute(
            "INSERT INTO phases (experiment_id, unit_id, attempt, phase, session_id, start_ns, "
            "end_ns) VALUES ('e', ?, 1, ?, ?, ?, ?)",
            [unit_id, phase, session, _t(start_s), _t(end_s)],
        )
    for prompt, start_s, end_s in (("a", 2.5, 4.5), ("b", 5.0, 7.0)):
        store.execute(
            "INSERT INTO requests (experiment_id, unit_id, attempt, phase, prompt_id, tokens_in, "
            "tokens_out, tokens_requested, start_ns, end_ns) "
            "VALUES ('e', 0, 1, 'measure', ?, 4, 10, 10, ?, ?)",
            [prompt, _t(start_s), _t(end_s)],
        )
    windows = [(one, "idle", "baseline", 0.5, 1.5, None), (one, "busy", "window", 2.05, 8.05, 1),
               (one, "short", "window", 3.0, 3.2, None), (one, "wall_low", "window", 9.1, 9.9, None),
               (one, "tail", "window", 10.5, 11.5, None), (two, "none", "window", 100.5, 101.5, None)]  # fmt: skip
    for session, name, kind, start_s, end_s, baseline in windows:
        store.execute(
            "INSERT INTO windows (session_id, name, kind, tags, start_ns, end_ns, "
            "baseline_window_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [session, name, kind, json.dumps({}), _t(start_s), _t(end_s), baseline],
        )
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with _build(tmp_path_factory.mktemp("golden") / "g.duckdb") as opened:
        yield opened


def _rows(store: Store, sql: str) -> list[dict[str, Any]]:
    columns, rows = store.query(sql)
    return [dict(zip(columns, row, strict=True)) for row in rows]


approx = pytest.approx


def golden_energy_sources(store: Store) -> None:
    rows = _rows(store, "SELECT s.host, e.domain, e.probe, e.name, e.counter_range "
                        "FROM energy_sources e JOIN sessions s USING (session_id) ORDER BY 2")  # fmt: skip
    assert [(r["host"], r["domain"], r["probe"], r["name"]) for r in rows] == [
        ("a", "cpu", "rapl", "package-0.energy_uj"),  # RAPL, not the estimate
        ("a", "dram", "rapl", "dram.energy_uj"),
        ("a", "wall", "netio", "output1.load_w"),
    ]
    assert [r["counter_range"] for r in rows] == [RANGE_UJ, None, None]
    # no update period declared, none detected: every source resolves time as sampled
    periods = _rows(store, "SELECT period_ns, edge_period_ns FROM energy_sources")
    assert periods == [{"period_ns": P, "edge_period_ns": P}] * 3


def golden_utilisation_channels(store: Store) -> None:
    rows = _rows(store, "SELECT quantity FROM utilisation_channels ORDER BY channel_id")
    # the observer's CPU counters are host channels too, but no utilisation
    assert [r["quantity"] for r in rows] == ["cpu_percent", None, None, "cpu_percent"]


def golden_phase_windows(store: Store) -> None:
    rows = _rows(store, "SELECT count(*) AS n, count(DISTINCT channel_id) AS channels, "
                        "count(DISTINCT window_id) AS phases FROM phase_windows")  # fmt: skip
    # every energy channel with a domain (the estimate too) x session 1's three phases
    assert rows == [{"n": 12, "channels": 4, "phases": 3}]


def golden_phase_channel_energy(store: Store) -> None:
    rows = _rows(store, "SELECT channel, energy_j, coverage, wraps, resets "
                        "FROM phase_channel_energy WHERE phase = 'measure' ORDER BY channel")  # fmt: skip
    got = {r["channel"]: r for r in rows}
    assert got["package-0.energy_uj"]["energy_j"] == approx(20.0 * 6)
    assert got["package-0.energy_uj"]["wraps"] == 3  # the one the start cuts included
    assert got["dram.energy_uj"]["energy_j"] == approx(5.0 * (8.0 - 2.05))
    assert got["dram.energy_uj"]["resets"] == 1
    assert got["dram.energy_uj"]["coverage"] == approx((8.0 - 2.05) / 6)
    assert got["cpu.power_w"]["energy_j"] == approx(15.0 * 6)
    assert got["output1.load_w"]["energy_j"] == approx(50.0 * 6)
    assert got["output1.load_w"]["coverage"] == 1.0


def golden_unit_phase_energy(store: Store) -> None:
    rows = _rows(store, "SELECT phase, domain, energy_j, wraps, resets, estimated "
                        "FROM unit_phase_energy WHERE unit_id = 0")  # fmt: skip
    got = {(r["phase"], r["domain"]): r for r in rows}
    assert got["measure", "cpu"]["energy_j"] == approx(120.0)  # RAPL alone
    assert got["measure", "cpu"]["wraps"] == 3
    assert got["measure", "dram"]["energy_j"] == approx(29.75)
    assert got["measure", "wall"]["energy_j"] == approx(300.0)
    assert got["cooldown_before", "cpu"]["energy_j"] == approx(40.0)
    assert got["cooldown_before", "cpu"]["wraps"] == 0
    assert got["steady", "cpu"]["energy_j"] == approx(20.0 * 4.5)
    assert not any(r["estimated"] for r in rows)
    assert {p for p, _ in got} == {"cooldown_before", "measure", "cooldown_after", "steady"}


def golden_unit_baseline(store: Store) -> None:
    rows = _rows(store, "SELECT * FROM unit_baseline")
    assert len(rows) == 1
    row = rows[0]
    assert (row["baseline_cpu_w"], row["baseline_dram_w"], row["baseline_wall_w"]) == (
        approx(20.0), approx(5.0), approx(50.0)
    )
    assert row["baseline_gpu_w"] is None


def golden_unit_utilisation(store: Store) -> None:
    rows = _rows(store, "SELECT unit_id, cpu_percent, gpu_percent FROM unit_utilisation "
                        "ORDER BY unit_id")  # fmt: skip
    # time-weighted mean of 10 t %/s over [2.05, 8.05]; session 2's gauge reads 30 %
    assert rows == [{"unit_id": 0, "cpu_percent": approx(50.5), "gpu_percent": None},
                    {"unit_id": 1, "cpu_percent": approx(30.0), "gpu_percent": None}]  # fmt: skip


def golden_unit_steady(store: Store) -> None:
    rows = _rows(store, "SELECT * FROM unit_steady")
    assert len(rows) == 1
    row = rows[0]
    assert (row["steady_start_ns"], row["steady_end_ns"]) == (_t(2.5), _t(7.0))
    assert row["steady_s"] == approx(4.5)
    assert row["steady_tokens"] == approx(20.0)


def golden_unit_results(store: Store) -> None:
    rows = {r["unit_id"]: r for r in _rows(store, "SELECT * FROM unit_results")}
    unit = rows[0]
    assert (unit["energy_cpu_j"], unit["energy_dram_j"], unit["energy_wall_j"]) == (
        approx(120.0), approx(29.75), approx(300.0)
    )
    assert unit["energy_gpu_j"] is None
    assert unit["energy_global_j"] == approx(120.0)
    assert unit["dynamic_cpu_j"] == approx(0.0, abs=1e-6)
    assert (unit["requests"], unit["tokens_out"]) == (2, 20)
    assert unit["j_per_token"] == approx(6.0)
    assert unit["steady_j_per_token"] == approx(4.5)
    assert (unit["wraps"], unit["resets"]) == (3, 1)
    assert unit["min_coverage"] == approx(5.95 / 6)
    assert unit["cpu_percent"] == approx(50.5)
    assert list(unit["flags"]) == ["counter_wrap", "counter_reset"]
    # the measure's edges fall 50 ms from a sample, the steady state's on samples: both
    # windows resolve to the sampling period, as no source declares a finer update
    assert (unit["max_period_ns"], unit["steady_period_ns"]) == (P, P)
    assert list(rows[1]["flags"]) == ["no_energy_source"]


def golden_window_results(store: Store) -> None:
    rows = {r["name"]: r for r in _rows(store, "SELECT * FROM window_results")}
    busy = rows["busy"]
    assert busy["energy_cpu_j"] == approx(120.0)
    assert busy["baseline_cpu_w"] == approx(20.0)
    assert busy["dynamic_cpu_j"] == approx(0.0, abs=1e-6)
    assert busy["cpu_percent"] == approx(50.5)
    assert list(busy["flags"]) == ["counter_wrap", "counter_reset"]
    # its edges fall between samples: the counters are interpolated there, and say so
    assert sorted(busy["interpolated_domains"]) == ["cpu", "dram"]
    # samples at both edges: read there (the counters' update period is not declared
    # here, so the sampling period still judges the window short)
    assert not rows["short"]["interpolated_domains"]
    assert list(rows["short"]["flags"]) == ["short_window"]
    # 10 W at the wall against 20 W + 5 W of components
    assert rows["wall_low"]["energy_wall_j"] == approx(8.0)
    assert list(rows["wall_low"]["flags"]) == ["wall_below_components"]
    # the wall gauge stops at 11 s: half the window is known, and only 5 J of it
    tail = rows["tail"]
    assert tail["energy_wall_j"] == approx(5.0)
    assert tail["min_coverage"] == approx(0.5)
    assert list(tail["flags"]) == ["low_coverage", "wall_below_components"]
    assert list(rows["none"]["flags"]) == ["no_energy_source"]
    assert rows["none"]["cpu_percent"] == approx(30.0)
    assert list(rows["idle"]["flags"]) == []


def golden_observer_cost(store: Store) -> None:
    rows = _rows(store, "SELECT * FROM observer_cost ORDER BY unit_id")
    # the measure [2.05, 8.05] of unit 0; session 2 has no observer channels
    assert [(r["unit_id"], r["measure_s"]) for r in rows] == [(0, approx(6.0))]
    assert rows[0]["daemon_cpu_s"] == approx(0.06)
    assert rows[0]["sampling_cpu_s"] == approx(0.012)


GOLDEN = {
    name.removeprefix("golden_"): check
    for name, check in globals().items()
    if name.startswith("golden_") and callable(check)
}


def test_every_view_has_a_golden_test() -> None:
    views = {relation.name for relation in REGISTRY if isinstance(relation, View)}
    assert views == set(GOLDEN)


@pytest.mark.parametrize("view", sorted(GOLDEN))
def test_view_matches_its_golden_figures(store: Store, view: str) -> None:
    GOLDEN[view](store)
