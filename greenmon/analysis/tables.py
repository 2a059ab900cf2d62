"""Analysis results as DuckDB tables, so ``greenmon sql`` can ask questions of them.

One table per result (``analysis_medians``, ``analysis_tests``, ...), every row keyed by
``experiment_id``.  Re-analysing an experiment replaces its rows and leaves other
experiments' rows alone.  The tables are created by the store's migrations
(greenmon/store/schema.py): a change to ``TABLE_COLUMNS`` needs a migration that rebuilds
the table (tests/core/test_one_write_path.py checks they agree).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from greenmon.analysis import hosts, stats
from greenmon.analysis.data import AnalysisError, load_results, resolve_experiment
from greenmon.analysis.estimated import estimate_sources, label_result

if TYPE_CHECKING:
    import pandas as pd

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
}

_VARCHAR = {
    "variable", "scope", "model", "factor_key", "configuration", "engine", "provider",
    "check", "test", "effect_size_kind", "a", "b", "versus", "range_text", "best",
    "reference", "sentence", "models_sentence", "factor", "source", "level",
    "energy_variable", "host", "ranking", "comparison", "quality_metric", "verdict",
}  # fmt: skip
_INTEGER = {
    "size_category", "n", "groups", "n_total", "min_n", "pairs_total", "pairs_significant",
    "models", "models_lower", "models_significant_lower", "models_tested",
    "models_significant", "models_all_pairs_differ", "unit_id", "repetition",
    "hosts", "configurations",
}  # fmt: skip
_BOOLEAN = {"passed", "normal", "equal_var", "significant", "all_pairs_differ"}


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
    data = frame[columns].copy()
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
) -> stats.AnalysisResult:
    """Analyse one experiment (None: the latest) and, with ``write``, store the tables."""
    experiment = resolve_experiment(store, experiment_id)
    frame = load_results(store, experiment)
    result = stats.analyze_frame(frame, experiment, alpha=alpha, workers=workers)
    # issue 14: which configurations repetitions = "auto" left precise enough
    from greenmon.rounds import precision_summary

    precision = precision_summary(store, experiment)
    if precision is not None:
        result.notes.append(RepetitionsNote(precision))
    label_result(result, frame, estimate_sources(store, experiment))  # issue 14
    if write and not store.read_only:
        write_tables(store, result)
    return result
