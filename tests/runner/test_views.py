"""Validity flags of the per-unit results view, from rows written directly."""

from __future__ import annotations

from pathlib import Path

from greenmon.store import Event, SampleBatch, Store


def _unit(store: Store, session: str, unit_id: int, start_ns: int, end_ns: int) -> None:
    store.execute(
        "INSERT INTO units (experiment_id, unit_id, model, engine, provider, repetition, "
        "status, attempt, session_id, started_ns, ended_ns) "
        "VALUES ('e', ?, 'tiny', 'torch', 'cpu', 1, 'done', 1, ?, ?, ?)",
        [unit_id, session, start_ns, end_ns],
    )


def test_a_probe_failure_during_a_unit_flags_that_unit_only(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db.duckdb") as store:
        session = store.start_session({"host": "test"}, 0, 0)
        _unit(store, session, 0, 1_000, 2_000)
        _unit(store, session, 1, 3_000, 4_000)
        store.write(
            SampleBatch(),
            [Event(1_500, "warning", "rapl", "read failed, gap left"),
             Event(3_500, "info", "rapl", "sampling 3 channels"),
             Event(3_600, "warning", None, "plan paused")],
            session,
        )
        _, rows = store.query("SELECT unit_id, flags FROM unit_results_for('e') ORDER BY 1")
    flags = dict(rows)
    assert "probe_errors" in flags[0]
    assert "probe_errors" not in flags[1]
