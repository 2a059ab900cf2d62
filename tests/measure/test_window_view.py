"""The view ``window_results`` on rows written directly: exact figures, baselines, flags,
and the same energy as a runner phase over the same interval (one SQL for both)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from greenmon.probes.base import Channel
from greenmon.store import SampleBatch, Store
from tests.measure.support import cli_env, greenmon_command

PERIOD_NS = 10_000_000  # 100 Hz
S = 1_000_000_000


def _powered_store(path: Path, watts: list[tuple[int, int, float]]) -> tuple[Store, str]:
    """A session whose one RAPL package counter (uJ) rises at ``watts`` over each
    ``(start_ns, end_ns, W)`` span, sampled every PERIOD_NS from 0 to 10 s."""
    store = Store.open(path)
    session = store.start_session({"host": "test"}, 0, 0)
    (channel_id,) = store.register_channels(
        session, "rapl", [Channel("package-0.energy_uj", "uJ", "counter", domain="cpu")],
        PERIOD_NS,
    )  # fmt: skip
    batch = SampleBatch()
    energy_uj = 0.0
    for t_ns in range(0, 10 * S + 1, PERIOD_NS):
        batch.append_row(t_ns, [channel_id], [energy_uj])
        power_w = next(w for lo, hi, w in watts if lo <= t_ns < hi)
        energy_uj += power_w * PERIOD_NS / 1e3
    store.write(batch, [], session)
    return store, session


def _window(store: Store, session: str, name: str, start_ns: int, end_ns: int,
            kind: str = "window", baseline: int | None = None) -> int:  # fmt: skip
    rows = store.execute(
        "INSERT INTO windows (session_id, name, kind, tags, start_ns, end_ns, "
        "baseline_window_id) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING window_id",
        [session, name, kind, json.dumps({"n": 1}), start_ns, end_ns, baseline],
    )
    return int(rows[0][0])


def test_window_figures_are_exact_on_known_samples(tmp_path: Path) -> None:
    # 5 W idle, 25 W from 4 s to 6 s
    store, session = _powered_store(
        tmp_path / "w.duckdb", [(0, 4 * S, 5.0), (4 * S, 6 * S, 25.0), (6 * S, 11 * S, 5.0)]
    )
    with store:
        idle = _window(store, session, "idle", 1 * S, 3 * S, kind="baseline")
        busy = _window(store, session, "busy", 3_500_000_000, 6_500_000_000, baseline=idle)
        short = _window(store, session, "short", 7 * S, 7 * S + 2 * PERIOD_NS)
        columns, rows = store.query(
            "SELECT * FROM window_results_for([?, ?]) ORDER BY window_id", [busy, short]
        )
        results = [dict(zip(columns, row, strict=True)) for row in rows]
        # a phase over the same interval gets the same energy: one SQL for both
        store.execute(
            "INSERT INTO phases (experiment_id, unit_id, attempt, phase, session_id, start_ns, "
            "end_ns) VALUES ('e', 0, 1, 'measure', ?, 3500000000, 6500000000)",
            [session],
        )
        _, phase = store.query("SELECT energy_j FROM unit_phase_energy WHERE phase = 'measure'")
    by_name = {r["name"]: r for r in results}
    assert set(by_name) == {"busy", "short"}  # the baseline is computed, not returned
    row = by_name["busy"]
    assert row["energy_cpu_j"] == pytest.approx(5.0 * 1.0 + 25.0 * 2.0, rel=1e-9)
    assert row["baseline_cpu_w"] == pytest.approx(5.0, rel=1e-9)
    assert row["dynamic_cpu_j"] == pytest.approx(20.0 * 2.0, rel=1e-9)
    assert row["dynamic_global_j"] == pytest.approx(40.0, rel=1e-9)
    assert row["min_coverage"] == 1.0 and list(row["flags"]) == []
    assert phase[0][0] == pytest.approx(row["energy_cpu_j"], rel=1e-12)
    assert "short_window" in by_name["short"]["flags"]
    assert by_name["short"]["dynamic_cpu_j"] is None  # no baseline named


def test_measure_refuses_bad_input_in_one_paragraph(tmp_path: Path) -> None:
    for args, expected in (
        ([], "Give the command to measure"),
        (["--tag", "batch", "--", "true"], "KEY=VALUE"),
        (["--repeat", "0", "--", "true"], "at least 1"),
    ):
        result = subprocess.run(
            greenmon_command("measure", "--db", str(tmp_path / "m.duckdb"), *args),
            capture_output=True, text=True, env=cli_env(tmp_path / "d.sock"), timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "m.duckdb").exists()  # nothing started, nothing written
