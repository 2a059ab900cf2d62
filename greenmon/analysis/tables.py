"""Analysis results as DuckDB tables, so ``greenmon sql`` can ask questions of them.

One table per result (``analysis_medians``, ``analysis_tests``, ...), every row keyed by
``experiment_id``.  Re-analysing an experiment replaces its rows and leaves other
experiments' rows alone.  The tables are created by the store's migrations
(greenmon/store/schema.py): a change to ``TABLE_COLUMNS`` needs a migration that rebuilds
the table (tests/core/test_one_write_path.py checks they agree).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import duckdb

from greenmon.analysis import decision, footprint, hosts, stats
from greenmon.analysis.data import AnalysisError, load_results, resolve_experiment
from greenmon.analysis.estimated import estimate_sources, label_result
from greenmon.analysis.request_energy import request_energy_table

if TYPE_CHECKING:
    import pandas as pd

    from greenmon.analysis.footprint import Pricing
    from greenmon.store import Store

TABLE_PREFIX = "analysis_"

TABLE_COLUMNS: dict[str, list[str]] = {
    "medians": stats.MEDIAN_COLUMNS,
    "assumptions": stats.ASSUMPTION_COLUMNS,
    "tests": stats.TEST_COLUMNS,
    "posthoc": stats.POSTHOC_COLUMNS,
    "savings": stats.SAVING_COLUMNS,
    "savings_range": stats.SAVING_RANGE_COLUMNS,
    "summary": stats.SUMMARY_COLUMNS,
    "twoway": stats.TWOWAY_COLUMNS,
    "reconciliation": stats.RECONCILIATION_COLUMNS,
    "tradeoff": stats.TRADEOFF_COLUMNS,
    "host_medians": hosts.HOST_MEDIAN_COLUMNS,
    "host_tests": hosts.HOST_TEST_COLUMNS,
    "host_effects": hosts.HOST_EFFECT_COLUMNS,
    "quality": stats.QUALITY_COLUMNS,
    "answers": decision.ANSWER_COLUMNS,
    "front": decision.FRONT_COLUMNS,
    "footprint": footprint.FOOTPRINT_COLUMNS,
}

_VARCHAR = {
    "variable", "scope", "model", "factor_key", "configuration", "engine", "provider",
    "check", "test", "effect_size_kind", "a", "b", "versus", "range_text", "best",
    "reference", "sentence", "models_sentence", "factor", "source", "level",
    "energy_variable", "host", "ranking", "comparison", "quality_metric", "verdict",
    "unit", "next", "percent_note", "latency_source", "currency",
}  # fmt: skip
_INTEGER = {
    "size_category", "n", "groups", "n_total", "min_n", "pairs_total", "pairs_significant",
    "models", "models_lower", "models_significant_lower", "models_tested",
    "models_significant", "models_all_pairs_differ", "unit_id", "repetition",
    "hosts", "configurations",
}  # fmt: skip
_BOOLEAN = {"passed", "normal", "equal_var", "significant", "all_pairs_differ", "pareto"}


def sql_type(column: str) -> str:
    if column in _BOOLEAN:
        return "BOOLEAN"
    if column in _INTEGER:
        return "INTEGER"
    if column in _VARCHAR:
        return "VARCHAR"
    return "DOUBLE"


def write_tables(store: Store, result: stats.AnalysisResult) -> list[str]:
    """Replace ``result.experiment_id``'s rows in every analysis table; returns the names."""
    rows = {
        f"{TABLE_PREFIX}{name}": _rows(name, frame, result.experiment_id)
        for name, frame in result.tables().items()
    }
    store.replace_analysis_rows(result.experiment_id, rows)
    return list(rows)


def _rows(name: str, frame: pd.DataFrame, experiment_id: str) -> tuple[pd.DataFrame, str]:
    """A result's rows as the store inserts them, and the SELECT list that casts them."""
    columns = TABLE_COLUMNS[name]
    # A result that has nothing for a table (no pricing: no footprint) leaves it a bare
    # frame; it still replaces the experiment's old rows, with none.
    data = frame.reindex(columns=columns) if frame.empty else frame[columns].copy()
    # Object columns mixing None and numbers confuse DuckDB's type sniffing; cast in SQL.
    data = data.astype(object).where(data.notna(), None)
    data.insert(0, "experiment_id", experiment_id)
    select = ", ".join(
        ["experiment_id"] + [f'CAST("{c}" AS {sql_type(c)}) AS "{c}"' for c in columns]
    )
    return data, select


class RepetitionsNote(AnalysisError):
    title = "Repetitions until stable"


def analyze(
    store: Store,
    experiment_id: str | None = None,
    *,
    alpha: float = stats.ALPHA,
    workers: int | None = None,
    write: bool = True,
    pricing: Pricing | None = None,
) -> stats.AnalysisResult:
    """Analyse one experiment (None: the latest) and, with ``write``, store the tables."""
    return analyze_loaded(store, experiment_id, alpha=alpha, workers=workers, write=write,
                          pricing=pricing)[0]  # fmt: skip


def analyze_loaded(
    store: Store,
    experiment_id: str | None = None,
    *,
    alpha: float = stats.ALPHA,
    workers: int | None = None,
    write: bool = True,
    pricing: Pricing | None = None,
) -> tuple[stats.AnalysisResult, pd.DataFrame]:
    """``analyze``, also returning the per-unit results it loaded (a report draws its
    figures from them rather than reading them a second time)."""
    experiment = resolve_experiment(store, experiment_id)
    frame = load_results(store, experiment)
    frame = _with_start_times(store, experiment, frame)
    result = stats.analyze_frame(frame, experiment, alpha=alpha, workers=workers)
    done = frame[frame["status"] == "done"]
    variable = decision.energy_variable(result.variables)
    if variable is not None:
        result.answers = decision.answers(done, result.posthoc, variable)
        result.front = decision.front(done)
        if pricing is not None:
            result.footprint = footprint.footprint_table(done, pricing, variable)
            result.pricing_source = pricing.describe()
    # which configurations repetitions = "auto" left precise enough
    from greenmon.rounds import precision_summary

    precision = precision_summary(store, experiment)
    if precision is not None:
        result.notes.append(RepetitionsNote(precision))
    label_result(result, frame, estimate_sources(store, experiment))
    result.request_energy = request_energy_table(store, experiment)
    result.observer = observer_cost(store, experiment)
    if write and not store.read_only:
        write_tables(store, result)
    return result, frame


def _with_start_times(store: Store, experiment: str, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each unit's wall-clock start (its monotonic start plus its session's
    clock anchor), which a carbon intensity over time is matched to."""
    _, rows = store.query(
        """SELECT u.unit_id, u.started_ns + s.clock_anchor_ns AS started_wall_ns
           FROM units u LEFT JOIN sessions s USING (session_id)
           WHERE u.experiment_id = ?""",
        [experiment],
    )
    starts = dict((row[0], row[1]) for row in rows)
    return frame.assign(started_wall_ns=[starts.get(u) for u in frame["unit_id"]])


def observer_cost(store: Store, experiment_id: str) -> dict[str, Any]:
    """What measuring cost, measured (the host probe's CPU counters, read at each measure
    phase's edges; views.py ``observer_cost``): per unit, the daemon process's CPU seconds
    (engines it runs in-process included) and its sampling thread's, and per session their
    sums over the measured time with the sampling thread's share of one core.  Empty where
    no host probe ran or the file's relations predate the view."""
    try:
        columns, rows = store.query(
            "SELECT * FROM observer_cost_for(?) ORDER BY unit_id, attempt", [experiment_id]
        )
    except duckdb.Error:
        return {}
    units = [dict(zip(columns, row, strict=True)) for row in rows]
    if not units:
        return {}
    sessions: dict[str, dict[str, float]] = {}
    for unit in units:
        total = sessions.setdefault(
            str(unit["session_id"]), {"measure_s": 0.0, "daemon_cpu_s": 0.0, "sampling_cpu_s": 0.0}
        )
        for key in total:
            total[key] += float(unit.get(key) or 0.0)
    for total in sessions.values():
        total["sampling_cpu_percent_of_one_core"] = (
            100.0 * total["sampling_cpu_s"] / total["measure_s"] if total["measure_s"] else 0.0
        )
    return {
        "figures": "measured: CPU counters read at each measure phase's edges",
        "units": units,
        "sessions": [{"session_id": k, **v} for k, v in sessions.items()],
    }
