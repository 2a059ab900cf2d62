"""The runner's writes: experiments, units, phases, requests, precision rounds, and the
materialised unit results (greenmon/runner.py, greenmon/rounds.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from greenmon.store.database import Database, first_row

if TYPE_CHECKING:
    from greenmon.engines.base import RequestRecord


@dataclass(frozen=True)
class NewExperiment:
    """An experiment's row as the runner creates it (Store.create_experiment)."""

    experiment_id: str
    session_id: str
    name: str
    plan_path: str | None
    plan_hash: str
    plan_toml: str
    plan_json: str  # the canonical plan (greenmon/plan.py), as JSON
    seed: int
    order_kind: str
    created_ns: int
    shard_index: int | None = None
    shard_count: int | None = None


@dataclass(frozen=True)
class NewUnit:
    """One unit's row as its experiment is created: pending, no attempt yet."""

    unit_id: int
    model: str
    engine: str
    provider: str
    repetition: int
    factors: Mapping[str, Any]


_EXPERIMENT_COLUMNS = (
    "experiment_id", "session_id", "name", "plan_path", "plan_hash", "plan_toml", "plan",
    "seed", "order_kind", "status", "created_ns", "finished_ns", "shard_index",
    "shard_count", "host", "merged_from",
)  # fmt: skip


class RunWrites(Database):
    """The runner's writes (mixed into ``Store``)."""

    def record_precision(
        self, experiment_id: str, round_: int, decision: str, cells: Sequence[Any], t_ns: int
    ) -> None:
        """One round's precision per cell (greenmon/rounds.py CellPrecision)."""
        with self.transaction() as con:
            con.executemany(
                "INSERT INTO precision_rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [experiment_id, round_, decision, c.model, c.configuration, c.factors, c.n,
                     c.median_energy_j, c.ci_low_j, c.ci_high_j, c.half_width, c.met, t_ns]
                    for c in cells
                ],
            )  # fmt: skip

    def skip_pending_units(self, experiment_id: str, reason: str) -> int:
        """Mark the units still pending as ``skipped`` (rounds not needed)."""
        with self.transaction() as con:
            row = con.execute(
                "UPDATE units SET status = 'skipped', reason = ? "
                "WHERE experiment_id = ? AND status = 'pending' RETURNING unit_id",
                [reason, experiment_id],
            ).fetchall()
        return len(row)

    def materialise_unit_results(
        self,
        experiment_id: str,
        *,
        session_id: str | None = None,
        settled_before_ns: int | None = None,
        except_unit: int | None = None,
    ) -> int:
        """Store the results of the experiment's finished units that have no valid
        materialised row (greenmon/views.py), so reading them later costs no pass over
        their samples.  Units of the running ``session_id`` count only once they ended
        before ``settled_before_ns`` (their last samples flushed).  Returns the rows stored.
        """
        self._before_read()
        with self.lock:
            try:
                return self._materialise(experiment_id, session_id, settled_before_ns, except_unit)
            finally:
                self._drop_fresh()

    def materialise_and_query(
        self,
        experiment_id: str,
        sql: str,
        *,
        session_id: str | None = None,
        settled_before_ns: int | None = None,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """``materialise_unit_results``, then ``sql`` with ``{results}`` standing for
        ``unit_results_for(experiment_id)`` over finished units, its units still without a
        stored row (not settled) taken from the same pass over the samples: a unit end
        evaluates the results SQL once, not once to store and again to read (planning it
        costs ~0.3 s at 840 units, bench/scale.py)."""
        from greenmon.views import UNIT_RESULTS_MATERIALISED

        self._before_read()
        with self.lock:
            try:
                self._materialise(experiment_id, session_id, settled_before_ns, None)
                result = self.con.execute(
                    sql.format(results=f"({UNIT_RESULTS_MATERIALISED})"), [experiment_id]
                )
                columns = [d[0] for d in result.description or []]
                return columns, result.fetchall()
            finally:
                self._drop_fresh()

    def _materialise(
        self,
        experiment_id: str,
        session_id: str | None,
        settled_before_ns: int | None,
        except_unit: int | None,
    ) -> int:
        """The work of ``materialise_unit_results``; leaves the units it computed in the
        connection's temporary FRESH_TABLE (greenmon/views.py), which the caller drops."""
        from greenmon.energy import EDGE_MARGIN_MIN_NS, EDGE_MARGIN_PERIODS
        from greenmon.views import (
            FRESH_EMPTY_SQL,
            MATERIALISE_SPAN_SQL,
            MATERIALISE_SQL,
        )

        params = {
            "session": session_id,
            "settled_ns": settled_before_ns,
            "except_unit": except_unit,
        }
        delete, compute, insert = MATERIALISE_SQL
        with self.transaction() as con:
            con.execute(delete, {"exp": experiment_id})
            span = first_row(con.execute(MATERIALISE_SPAN_SQL, {"exp": experiment_id}))
            if span is None or span[0] is None:
                con.execute(FRESH_EMPTY_SQL)
                return 0
            # integers formatted into the SQL, not parameters: as constants they reach
            # the samples scan's zone maps (views.py, _SAMPLE_RANGE)
            margin_ns = max(EDGE_MARGIN_PERIODS * int(span[2] or 0), EDGE_MARGIN_MIN_NS)
            con.execute(
                compute.format(
                    lo_ns=int(span[0]) - 2 * margin_ns, hi_ns=int(span[1]) + 2 * margin_ns
                ),
                {"exp": experiment_id},
            )
            row = first_row(con.execute(insert, params))
        return int(row[0]) if row else 0

    def _drop_fresh(self) -> None:
        from greenmon.views import FRESH_TABLE

        self.con.execute(f"DROP TABLE IF EXISTS temp.{FRESH_TABLE}")

    # -- the runner's writes (greenmon/runner.py) ----------------------------------------
    def create_experiment(self, experiment: NewExperiment, units: Sequence[NewUnit]) -> None:
        """An experiment and all its units, pending, in one transaction (resumable)."""
        with self.transaction() as con:
            host = first_row(
                con.execute(
                    "SELECT host FROM sessions WHERE session_id = ?", [experiment.session_id]
                )
            )
            self.insert_experiment(
                {
                    "experiment_id": experiment.experiment_id,
                    "session_id": experiment.session_id,
                    "name": experiment.name,
                    "plan_path": experiment.plan_path,
                    "plan_hash": experiment.plan_hash,
                    "plan_toml": experiment.plan_toml,
                    "plan": experiment.plan_json,
                    "seed": experiment.seed,
                    "order_kind": experiment.order_kind,
                    "status": "queued",
                    "created_ns": experiment.created_ns,
                    "shard_index": experiment.shard_index,
                    "shard_count": experiment.shard_count,
                    "host": host[0] if host else None,
                }
            )
            con.executemany(
                """INSERT INTO units (experiment_id, unit_id, model, engine, provider,
                       repetition, factors, status)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')""",
                [
                    [
                        experiment.experiment_id,
                        u.unit_id,
                        u.model,
                        u.engine,
                        u.provider,
                        u.repetition,
                        json.dumps(u.factors),
                    ]
                    for u in units
                ],
            )

    def insert_experiment(self, row: Mapping[str, Any]) -> None:
        """One experiments row from its columns by name (the runner's new experiment, a
        merge's merged one): the one INSERT into experiments."""
        unknown = set(row) - set(_EXPERIMENT_COLUMNS)
        if unknown:
            raise ValueError(f"not columns of experiments: {sorted(unknown)}")
        names = [c for c in _EXPERIMENT_COLUMNS if c in row]
        with self.lock:
            self.con.execute(
                f"INSERT INTO experiments ({', '.join(names)}) "
                f"VALUES ({', '.join('?' for _ in names)})",
                [row[c] for c in names],
            )

    # -- the hardware settings' restore journal (greenmon/hardware/journal.py) ----------
    def journal_setting(
        self,
        session_id: str,
        experiment_id: str,
        unit_id: int,
        target: str,
        previous: str,
        applied: str,
    ) -> int:
        """A setting about to be changed, pending; returns its journal_id."""
        rows = self.execute(
            """INSERT INTO restore_journal (session_id, experiment_id, unit_id, target,
                   previous_value, applied_value, status)
               VALUES (?, ?, ?, ?, ?, ?, 'pending') RETURNING journal_id""",
            [session_id, experiment_id, unit_id, target, previous, applied],
        )
        return int(rows[0][0])

    def set_setting_status(
        self,
        journal_id: int,
        status: str,
        *,
        read_back: str | None = None,
        applied_ns: int | None = None,
        restored_ns: int | None = None,
    ) -> None:
        """A journaled setting's new status (unchanged, applied, restored, restore_failed);
        the values given are recorded beside it, the others kept."""
        self.execute(
            """UPDATE restore_journal SET status = ?, read_back = coalesce(?, read_back),
                   applied_ns = coalesce(?, applied_ns), restored_ns = coalesce(?, restored_ns)
               WHERE journal_id = ?""",
            [status, read_back, applied_ns, restored_ns, journal_id],
        )

    def set_experiment_status(self, experiment_id: str, status: str) -> None:
        """A queued (or resumed) experiment starts running, or is queued again."""
        self.execute(
            "UPDATE experiments SET status = ? WHERE experiment_id = ?", [status, experiment_id]
        )

    def end_experiment(self, experiment_id: str, status: str, finished_ns: int) -> None:
        """An experiment's outcome: done, failed, cancelled or interrupted."""
        self.execute(
            "UPDATE experiments SET status = ?, finished_ns = ? WHERE experiment_id = ?",
            [status, finished_ns, experiment_id],
        )

    def start_unit(
        self,
        experiment_id: str,
        unit_id: int,
        *,
        started_ns: int,
        session_id: str,
        params: int | None,
        size_category: str | None,
    ) -> int:
        """A unit's new attempt starts; returns the attempt's number (from 1)."""
        rows = self.execute(
            """UPDATE units SET status = 'running', attempt = attempt + 1, started_ns = ?,
                   session_id = ?, reason = NULL, params = ?, size_category = ?
               WHERE experiment_id = ? AND unit_id = ? RETURNING attempt""",
            [started_ns, session_id, params, size_category, experiment_id, unit_id],
        )
        return int(rows[0][0])

    def set_unit_settings(
        self, experiment_id: str, unit_id: int, in_force: Mapping[str, Any]
    ) -> None:
        """The hardware levels in force while the unit ran (greenmon/hardware/)."""
        self.execute(
            "UPDATE units SET settings = ? WHERE experiment_id = ? AND unit_id = ?",
            [json.dumps(in_force), experiment_id, unit_id],
        )

    def set_unit_load_info(
        self, experiment_id: str, unit_id: int, load_info: Mapping[str, Any]
    ) -> None:
        self.execute(
            "UPDATE units SET load_info = ? WHERE experiment_id = ? AND unit_id = ?",
            [json.dumps(load_info, default=str), experiment_id, unit_id],
        )

    def cancel_unit(self, experiment_id: str, unit_id: int, ended_ns: int) -> None:
        self.execute(
            "UPDATE units SET status = 'cancelled', reason = 'cancelled', ended_ns = ? "
            "WHERE experiment_id = ? AND unit_id = ?",
            [ended_ns, experiment_id, unit_id],
        )

    def fail_unit(self, experiment_id: str, unit_id: int, reason: str, ended_ns: int) -> None:
        self.execute(
            "UPDATE units SET status = 'failed', reason = ?, ended_ns = ? "
            "WHERE experiment_id = ? AND unit_id = ?",
            [reason, ended_ns, experiment_id, unit_id],
        )

    def finish_unit(
        self,
        experiment_id: str,
        unit_id: int,
        *,
        ended_ns: int,
        load_info: Mapping[str, Any],
        fidelity_share: float | None,
        first_divergence: int | None,
    ) -> None:
        self.execute(
            """UPDATE units SET status = 'done', ended_ns = ?, load_info = ?,
                   fidelity_share = ?, fidelity_first_divergence = ?
               WHERE experiment_id = ? AND unit_id = ?""",
            [
                ended_ns,
                json.dumps(load_info, default=str),
                fidelity_share,
                first_divergence,
                experiment_id,
                unit_id,
            ],
        )

    def insert_phases(
        self,
        experiment_id: str,
        unit_id: int,
        attempt: int,
        session_id: str,
        phases: Sequence[tuple[str, int, int]],
    ) -> None:
        """A unit attempt's phase markers: (phase, start_ns, end_ns) each."""
        if not phases:
            return
        with self.transaction() as con:
            con.executemany(
                """INSERT INTO phases (experiment_id, unit_id, attempt, phase, session_id,
                       start_ns, end_ns) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                [
                    [experiment_id, unit_id, attempt, phase, session_id, start_ns, end_ns]
                    for phase, start_ns, end_ns in phases
                ],
            )

    def insert_requests(
        self,
        experiment_id: str,
        unit_id: int,
        attempt: int,
        phase: str,
        records: Sequence[RequestRecord],
    ) -> None:
        """A unit phase's requests (greenmon/engines/base.py RequestRecord)."""
        if not records:
            return
        # One Arrow batch, one statement: executemany costs milliseconds per row in DuckDB.
        table = pa.table(
            {
                "experiment_id": [experiment_id] * len(records),
                "unit_id": pa.array([unit_id] * len(records), pa.int32()),
                "attempt": pa.array([attempt] * len(records), pa.int32()),
                "phase": [phase] * len(records),
                "prompt_id": [r.prompt_id for r in records],
                "tokens_in": pa.array([r.tokens_in for r in records], pa.int32()),
                "tokens_out": pa.array([r.tokens_out for r in records], pa.int32()),
                "start_ns": pa.array([r.start_ns for r in records], pa.int64()),
                "end_ns": pa.array([r.end_ns for r in records], pa.int64()),
                "ttft_ns": pa.array([r.ttft_ns for r in records], pa.int64()),
                "output_hash": [r.output_hash for r in records],
                "text": [r.text for r in records],
                # what a served request asked for and the server claimed
                "tokens_requested": pa.array([r.tokens_requested for r in records], pa.int32()),
                "usage_tokens_out": pa.array([r.usage_tokens_out for r in records], pa.int32()),
                "error": pa.array([r.error for r in records], pa.string()),
            }
        )
        with self.lock:
            self.con.register("greenmon_requests", table)
            try:
                self.con.execute(
                    """INSERT INTO requests (experiment_id, unit_id, attempt, phase, prompt_id,
                           tokens_in, tokens_out, start_ns, end_ns, ttft_ns, output_hash, text,
                           tokens_requested, usage_tokens_out, error)
                       SELECT * FROM greenmon_requests"""
                )
            finally:
                self.con.unregister("greenmon_requests")

    def set_request_energy(
        self,
        experiment_id: str,
        unit_id: int,
        attempt: int,
        rows: Sequence[tuple[str, dict[str, float], str, float | None]],
    ) -> None:
        """The measured requests' attributed energy (greenmon/attribution.py): (prompt_id,
        {domain: J}, method, the server's own figure or None)."""
        if not rows:
            return
        with self.transaction() as con:
            con.executemany(
                """UPDATE requests SET energy_j = ?, energy_cpu_j = ?, energy_dram_j = ?,
                       energy_gpu_j = ?, energy_method = ?, server_energy_j = ?
                   WHERE experiment_id = ? AND unit_id = ? AND attempt = ? AND phase = 'measure'
                     AND prompt_id = ?""",
                [
                    [
                        sum(energy.values()) if energy else None,
                        energy.get("cpu"),
                        energy.get("dram"),
                        energy.get("gpu"),
                        method,
                        server_j,
                        experiment_id,
                        unit_id,
                        attempt,
                        prompt_id,
                    ]
                    for prompt_id, energy, method, server_j in rows
                ],
            )

    def set_unit_attribution(
        self,
        experiment_id: str,
        unit_id: int,
        attributed_j: dict[str, float],
        attribution: dict[str, Any],
    ) -> None:
        """A served unit's server process tree: attributed energy per domain and how."""
        with self.transaction() as con:
            con.execute(
                """UPDATE units SET attributed_cpu_j = ?, attributed_dram_j = ?,
                       attributed_gpu_j = ?, attribution = ?
                   WHERE experiment_id = ? AND unit_id = ?""",
                [
                    attributed_j.get("cpu"),
                    attributed_j.get("dram"),
                    attributed_j.get("gpu"),
                    json.dumps(attribution),
                    experiment_id,
                    unit_id,
                ],
            )

    def set_request_fidelity(
        self,
        experiment_id: str,
        unit_id: int,
        attempt: int,
        rows: Sequence[tuple[str, float | None, int | None]],
    ) -> None:
        """The measured requests' fidelity: (prompt_id, identical_share, first_divergence)."""
        if not rows:
            return
        with self.transaction() as con:
            con.executemany(
                """UPDATE requests SET identical_share = ?, first_divergence = ?
                   WHERE experiment_id = ? AND unit_id = ? AND attempt = ? AND phase = 'measure'
                     AND prompt_id = ?""",
                [
                    [share, divergence, experiment_id, unit_id, attempt, prompt_id]
                    for prompt_id, share, divergence in rows
                ],
            )

    def set_request_quality(
        self, experiment_id: str, unit_id: int, attempt: int, rows: Sequence[Sequence[Any]]
    ) -> None:
        """The measured requests' quality, one row per prompt:
        (prompt_id, task, quality_metric, quality, correct, quality_detail)."""
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        table = pa.table(
            {
                "prompt_id": pa.array(columns[0], pa.string()),
                "task": pa.array(columns[1], pa.string()),
                "quality_metric": pa.array(columns[2], pa.string()),
                "quality": pa.array(columns[3], pa.float64()),
                "correct": pa.array(columns[4], pa.bool_()),
                "quality_detail": pa.array(columns[5], pa.string()),
            }
        )
        with self.lock:
            self.con.register("greenmon_quality", table)
            try:
                self.con.execute(
                    """UPDATE requests r SET task = q.task, quality_metric = q.quality_metric,
                           quality = q.quality, correct = q.correct,
                           quality_detail = q.quality_detail
                       FROM greenmon_quality q
                       WHERE r.experiment_id = ? AND r.unit_id = ? AND r.attempt = ?
                         AND r.phase = 'measure' AND r.prompt_id = q.prompt_id""",
                    [experiment_id, unit_id, attempt],
                )
            finally:
                self.con.unregister("greenmon_quality")
