"""Materialised per-unit results (greenmon/views.py) agree with the live computation, and
are recomputed whenever what they were computed from changes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

from greenmon.api.messages import ResultRow
from greenmon.store import Store
from tests.support.synthetic import synthetic_results, write_synthetic_experiment


def _rows(store: Store, relation: str) -> list[dict[str, Any]]:
    columns, rows = store.query(f"SELECT * FROM {relation}('m') ORDER BY unit_id")
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b) and a
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key, value in row_a.items():
            other = row_b[key]
            if isinstance(value, float) and not math.isnan(value):
                assert other == pytest.approx(value, rel=1e-9), key
            else:
                assert value == other or (value != value and other != other), key


def _cached(store: Store) -> int:
    return int(store.execute("SELECT count(*) FROM unit_results_valid")[0][0])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    truth = synthetic_results(
        models=2, configurations=("torch/cpu", "onnx/cpu"), repetitions=3, gpu=True,
        seed=3, experiment_id="m",
    )  # fmt: skip
    store = Store.open(tmp_path / "m.duckdb")
    write_synthetic_experiment(store, truth, samples_per_channel_unit=60)
    return store


def test_materialised_results_are_the_live_results(store: Store) -> None:
    live = _rows(store, "unit_results_live_for")
    assert _cached(store) == 0
    _same(live, _rows(store, "unit_results_for"))  # nothing stored: all computed live
    assert store.materialise_unit_results("m") == 12
    assert _cached(store) == 12
    _same(live, _rows(store, "unit_results_for"))
    # every figure the runner's summary shows comes out the same
    energies = [r["energy_global_j"] for r in _rows(store, "unit_results_for")]
    assert all(e is not None and e > 0 for e in energies)
    assert store.materialise_unit_results("m") == 0  # nothing left to do
    store.close()


def test_a_changed_unit_or_changed_rules_are_computed_live_again(store: Store) -> None:
    store.materialise_unit_results("m")
    live = _rows(store, "unit_results_live_for")
    # a rerun unit: its stored row no longer matches the unit, so it is computed live
    store.execute("UPDATE units SET attempt = 1 WHERE experiment_id = 'm' AND unit_id = 4")
    store.execute("UPDATE phases SET attempt = 1 WHERE experiment_id = 'm' AND unit_id = 4")
    assert _cached(store) == 11
    _same(_rows(store, "unit_results_live_for"), _rows(store, "unit_results_for"))
    assert store.materialise_unit_results("m") == 1
    # rows from other energy rules (an older greenmon) are never read, and are redone
    store.execute("UPDATE unit_results_done SET rules_hash = 'older', energy_cpu_j = -1")
    assert _cached(store) == 0
    rows = _rows(store, "unit_results_for")
    assert all(r["energy_cpu_j"] > 0 for r in rows)
    assert store.materialise_unit_results("m") == 12
    _same([r for r in live if r["unit_id"] != 4], [r for r in rows if r["unit_id"] != 4])
    store.close()


def test_units_of_the_running_session_wait_until_their_samples_are_flushed(
    store: Store,
) -> None:
    session, last_end = store.execute("SELECT any_value(session_id), max(ended_ns) FROM units")[0]
    stored = store.materialise_unit_results("m", session_id=session, settled_before_ns=last_end - 1)
    assert stored == 11  # the unit that ended last is left to the live computation
    assert store.materialise_unit_results("m", session_id="another", settled_before_ns=0) == 1
    store.close()


def test_a_run_stores_each_unit_s_results_as_the_unit_is_recorded(tmp_path: Path) -> None:
    """``greenmon run`` materialises a unit's results when it records the unit done (its
    samples are in the file by then: Daemon.samples_through), so the live summary at each
    unit end reads one row per unit, the last unit's included, and the rows agree with the
    computation from samples."""
    import os
    import subprocess
    import sys

    from tests.fakes.rapl import standard_tree
    from tests.support.plans import write_fake_plan

    repo = Path(__file__).resolve().parents[2]
    standard_tree(tmp_path / "powercap")
    plan = write_fake_plan(
        tmp_path / "plan.toml", "mat", prompts=2, max_new_tokens=4, repetitions=2, seed=5,
        probes={"rapl": {"rate_hz": 50, "sysfs_root": tmp_path / "powercap"}},
    )  # fmt: skip
    db = tmp_path / "run.duckdb"
    result = subprocess.run(
        [sys.executable, "-m", "greenmon.cli", "run", str(plan), "--db", str(db), "--quiet"],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with Store.open(db, read_only=True) as store:
        (experiment_id,) = store.execute("SELECT experiment_id FROM experiments")[0]
        done = store.execute("SELECT count(*) FROM units WHERE status = 'done'")[0][0]
        stored = store.execute(
            "SELECT count(*) FROM unit_results_valid WHERE experiment_id = ?", [experiment_id]
        )[0][0]
        assert done >= 2 and stored == done
        materialised = store.query(
            f"SELECT * FROM unit_results_for('{experiment_id}') ORDER BY unit_id"
        )
        live = store.query(
            f"SELECT * FROM unit_results_live_for('{experiment_id}') ORDER BY unit_id"
        )
    columns = materialised[0]
    _same(
        [dict(zip(columns, row, strict=True)) for row in materialised[1]],
        [dict(zip(live[0], row, strict=True)) for row in live[1]],
    )


def test_a_unit_ends_summary_is_the_summary_from_one_pass(store: Store) -> None:
    """The runner's bookkeeping at a unit end (unit_end_summary_rows) stores the settled
    units and reads the summary from the same pass: a unit computed but not stored (not
    settled) shows the figures summary_rows computes live; nothing is left behind."""
    from greenmon.runner import summary_rows, unit_end_summary_rows

    session, last_end = store.execute("SELECT any_value(session_id), max(ended_ns) FROM units")[0]
    def rows(results: list[ResultRow]) -> list[dict[str, Any]]:
        return [msgspec.structs.asdict(r) for r in results]

    live = rows(summary_rows(store, "m"))
    ended = unit_end_summary_rows(store, "m", session_id=session, settled_before_ns=last_end - 1)
    assert _cached(store) == 11  # the unit that ended last was computed, not stored
    _same(live, rows(ended))
    assert sum(r.units for r in ended) == 12
    # the next unit end: the last unit is settled and stored; the summary is unchanged
    settled = unit_end_summary_rows(store, "m", session_id=session, settled_before_ns=last_end)
    _same(live, rows(settled))
    assert _cached(store) == 12
    _same(live, rows(unit_end_summary_rows(store, "m")))  # nothing to compute
    assert not store.execute(
        "SELECT 1 FROM duckdb_tables() WHERE table_name = 'unit_results_fresh'"
    )
    store.close()
