"""The study's statistics for any experiment: one call that runs every table.

Works on a DataFrame of per-unit results (greenmon/analysis/data.py); ``analyze`` in
greenmon/analysis/tables.py loads one from a database and stores what this returns.  The
work is split by concern:

- greenmon/analysis/hypothesis.py: assumption checks, the omnibus tests and post-hoc pairs
  (routes, effect sizes, alpha);
- greenmon/analysis/summaries.py: medians, savings and their ranges, the findings, energy
  against time per factor level, quality beside energy, wall-against-components;
- greenmon/analysis/sentences.py: the words, as pure functions of the figures.

The names other modules import from here (the column lists, ``compare_groups``,
``verdict``, ``QUALITY_TOLERANCE``...) are re-exported, so ``greenmon.analysis.stats``
stays the one import for the analysis.  ``alpha`` given to ``analyze_frame`` decides every
"significant" in every table and sentence.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from greenmon.analysis.data import (
    DEPENDENT_VARIABLES,
    PER_SAMPLE_VARIABLES,
    AnalysisError,
    FailedUnitsExcludedError,
    MissingVariableError,
    NoResultsError,
    normalise_results,
)
from greenmon.analysis.hypothesis import (
    ALPHA,
    ASSUMPTION_COLUMNS,
    PARALLEL_MIN_SCOPES,
    POSTHOC_COLUMNS,
    TEST_COLUMNS,
    TWOWAY_COLUMNS,
    ScopeComparison,
    cliffs_delta,
    compare_groups,
    compare_scopes,
    hedges_g,
    scope_problem,
    twoway,
)
from greenmon.analysis.request_energy import REQUEST_ENERGY_NOTE
from greenmon.analysis.summaries import (
    MEDIAN_COLUMNS,
    QUALITY_COLUMNS,
    QUALITY_TOLERANCE,
    QUALITY_VARIABLES,
    RECONCILIATION_COLUMNS,
    REFERENCE_ENGINE,
    SAVING_COLUMNS,
    SAVING_RANGE_COLUMNS,
    SUMMARY_COLUMNS,
    TRADEOFF_COLUMNS,
    json_factors,
    median_table,
    quality_table,
    range_text,
    reconcile,
    savings_range_table,
    savings_table,
    summary_table,
    tradeoff_table,
    verdict,
    weigh_quality,
)
from greenmon.attribution import METHOD_TOKENS
from greenmon.thresholds import MIN_REPETITIONS

__all__ = [
    "ALPHA", "ASSUMPTION_COLUMNS", "MEDIAN_COLUMNS", "MIN_REPETITIONS", "PARALLEL_MIN_SCOPES",
    "POSTHOC_COLUMNS", "QUALITY_COLUMNS", "QUALITY_TOLERANCE", "QUALITY_VARIABLES",
    "RECONCILIATION_COLUMNS", "REFERENCE_ENGINE", "SAVING_COLUMNS", "SAVING_RANGE_COLUMNS",
    "SUMMARY_COLUMNS", "TEST_COLUMNS", "TRADEOFF_COLUMNS", "TWOWAY_COLUMNS", "AnalysisResult",
    "ScopeComparison", "analyze_frame", "cliffs_delta", "compare_groups", "hedges_g",
    "json_factors", "range_text", "reconcile", "records", "scope_problem", "verdict",
]  # fmt: skip


@dataclass
class AnalysisResult:
    """Everything ``analyze_frame`` found for one experiment, one DataFrame per table."""

    experiment_id: str
    medians: pd.DataFrame
    assumptions: pd.DataFrame
    tests: pd.DataFrame
    posthoc: pd.DataFrame
    savings: pd.DataFrame
    savings_range: pd.DataFrame
    summary: pd.DataFrame
    twoway: pd.DataFrame
    reconciliation: pd.DataFrame
    tradeoff: pd.DataFrame
    quality: pd.DataFrame
    variables: list[str]
    skipped_variables: list[str]
    units_total: int
    units_analysed: int
    notes: list[AnalysisError] = field(default_factory=list)
    # per-host medians, within-host tests and the host effect (analysis/hosts.py);
    # empty unless the units ran on more than one host.
    host_medians: pd.DataFrame = field(default_factory=pd.DataFrame)
    host_tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    host_effects: pd.DataFrame = field(default_factory=pd.DataFrame)
    # The significance level every "significant" in these tables was decided at.
    alpha: float = ALPHA
    # estimated domains and the figures containing them (analysis/estimated.py)
    estimated: dict[str, Any] = field(default_factory=dict)
    # Per-request energy per unit, attributed (analysis/request_energy.py); empty when the
    # experiment's requests have none.
    request_energy: pd.DataFrame = field(default_factory=pd.DataFrame)
    # What a reader decides from (greenmon/analysis/decision.py, footprint.py): filled by
    # greenmon.analysis.tables.analyze, empty for a bare analyze_frame.
    answers: pd.DataFrame = field(default_factory=pd.DataFrame)
    front: pd.DataFrame = field(default_factory=pd.DataFrame)
    footprint: pd.DataFrame = field(default_factory=pd.DataFrame)
    pricing_source: str = ""
    # What measuring cost: greenmon's own CPU over each unit's measure and per session
    # (analysis/tables.py observer_cost); empty where the host probe did not run.
    observer: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Table name (without the ``analysis_`` prefix) -> its rows."""
        return {
            "medians": self.medians,
            "assumptions": self.assumptions,
            "tests": self.tests,
            "posthoc": self.posthoc,
            "savings": self.savings,
            "savings_range": self.savings_range,
            "summary": self.summary,
            "twoway": self.twoway,
            "reconciliation": self.reconciliation,
            "tradeoff": self.tradeoff,
            "host_medians": self.host_medians,
            "host_tests": self.host_tests,
            "host_effects": self.host_effects,
            "quality": self.quality,
            "answers": self.answers,
            "front": self.front,
            "footprint": self.footprint,
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: every table as a list of records (NULLs as None)."""
        return {
            "experiment_id": self.experiment_id,
            "alpha": self.alpha,
            "units_total": self.units_total,
            "units_analysed": self.units_analysed,
            "variables": self.variables,
            "skipped_variables": self.skipped_variables,
            "notes": [{"title": n.title, "message": n.message} for n in self.notes],
            "estimated": self.estimated,
            "pricing_source": self.pricing_source or None,
            "observer": self.observer,
            "tables": {name: records(frame) for name, frame in self.tables().items()},
            "request_energy": {
                "figures": "attributed",
                "method": METHOD_TOKENS,
                "note": REQUEST_ENERGY_NOTE,
                "units": records(self.request_energy),
            },
        }


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain-Python dicts: numpy scalars unwrapped, NaN as None."""
    out: list[dict[str, Any]] = []
    for row in frame.to_dict(orient="records"):
        out.append({str(k): _plain(v) for k, v in row.items()})
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


# -- the whole experiment -----------------------------------------------------------


def analyze_frame(
    frame: pd.DataFrame,
    experiment_id: str | None = None,
    *,
    alpha: float = ALPHA,
    variables: Sequence[str] | None = None,
    workers: int | None = None,
) -> AnalysisResult:
    """Run the full analysis over per-unit results (columns of ``unit_results``).

    ``workers``: processes for the per-scope tests (None: one per core when there are
    enough scopes to repay starting them; 1: in this process).
    """
    # statsmodels' Holm adjustment (inside scikit-posthocs' Dunn test) calls gc.collect()
    # on every call, which walks the whole heap: 0.15 s each in a process holding pandas
    # and DuckDB.  Freezing what exists now keeps those collections to new objects only.
    gc.freeze()
    try:
        return _analyze_frame(
            frame, experiment_id, alpha=alpha, variables=variables, workers=workers
        )
    finally:
        gc.unfreeze()


def _analyze_frame(
    frame: pd.DataFrame,
    experiment_id: str | None,
    *,
    alpha: float,
    variables: Sequence[str] | None,
    workers: int | None,
) -> AnalysisResult:
    results = normalise_results(frame)
    if experiment_id is None:
        ids = results["experiment_id"].dropna().unique()
        experiment_id = str(ids[0]) if len(ids) else ""
    notes: list[AnalysisError] = []
    done = _finished_units(results, experiment_id, notes)
    measured, skipped = _variables(done, variables, notes)
    from greenmon.analysis.background import background_note, steal_note

    notes += filter(None, [background_note(done), steal_note(done)])
    medians = median_table(done, measured)
    # units from several hosts are also compared within hosts (the host a block)
    from greenmon.analysis.hosts import host_analysis

    host_medians, host_tests, host_effects = host_analysis(done, measured, alpha, notes)
    tests, assumptions, posthoc = compare_scopes(done, measured, alpha, notes, workers)
    savings = savings_table(medians, posthoc, alpha)
    savings_range = savings_range_table(savings)
    summary = summary_table(
        done, measured, medians, tests, posthoc, savings, savings_range, alpha
    )
    quality = quality_table(done, measured)
    summary = weigh_quality(summary, quality)
    return AnalysisResult(
        experiment_id=experiment_id,
        medians=medians,
        assumptions=assumptions,
        tests=tests,
        posthoc=posthoc,
        savings=savings,
        savings_range=savings_range,
        summary=summary,
        twoway=twoway(done, measured),
        reconciliation=reconcile(done),
        tradeoff=tradeoff_table(done, measured),
        quality=quality,
        variables=measured,
        skipped_variables=skipped,
        units_total=len(results),
        units_analysed=len(done),
        notes=notes,
        host_medians=host_medians,
        host_tests=host_tests,
        host_effects=host_effects,
        alpha=alpha,
    )


def _finished_units(
    results: pd.DataFrame, experiment_id: str, notes: list[AnalysisError]
) -> pd.DataFrame:
    """The units that finished; a note on those that did not (none finished: an error)."""
    done = results[results["status"] == "done"]
    # units that repetitions = "auto" skipped were not needed, not lost
    not_done = results[~results["status"].isin(["done", "skipped"])]
    if done.empty:
        raise NoResultsError(
            f"Experiment {experiment_id} has {len(results)} units and none finished "
            f"(statuses: {_counts(results['status'])}), so there is nothing to analyse. "
            "Resume it with `greenmon run --resume`, or look at its events for the reasons."
        )
    if not not_done.empty:
        by_config = _counts(not_done["configuration"])
        reasons = sorted({str(r) for r in not_done["reason"].dropna()})[:3]
        notes.append(
            FailedUnitsExcludedError(
                f"{len(not_done)} of {len(results)} units did not finish "
                f"({_counts(not_done['status'])}; by configuration: {by_config}) and were "
                "analysed without them"
                + (f"; reasons include: {'; '.join(reasons)}" if reasons else "")
                + ". Fewer repetitions weaken the tests for those configurations; resume "
                "the experiment to complete them."
            )
        )
    return done


def _variables(
    done: pd.DataFrame, variables: Sequence[str] | None, notes: list[AnalysisError]
) -> tuple[list[str], list[str]]:
    """The variables to analyse (None: every dependent variable) that some unit measured,
    and those skipped for want of a source, with a note."""
    wanted = list(variables) if variables else [v.column for v in DEPENDENT_VARIABLES]
    if not variables:
        # One output per request (classification): a token is a sample, so energy per
        # sample and per inference (batch) replace energy per token; elsewhere they are
        # left out, as energy per token says more.
        one_output = bool(len(done)) and bool(
            (done["tokens_out"].astype(float) == done["requests"].astype(float)).all()
        )
        dropped = ("j_per_token",) if one_output else PER_SAMPLE_VARIABLES
        wanted = [c for c in wanted if c not in dropped]
        # Quality exists only for workloads with references or tests (greenmon/quality.py);
        # its absence elsewhere is expected, not a missing source.
        unscored = [c for c in QUALITY_VARIABLES if not done[c].notna().any()]
        wanted = [c for c in wanted if c not in unscored]
        if "quality" not in unscored and "j_per_correct" in unscored:
            notes.append(
                MissingVariableError(
                    "No answer was correct in any unit, so energy per correct answer is "
                    "undefined here; quality and the share of correct answers are reported."
                )
            )
    measured = [c for c in wanted if done[c].notna().any()]
    skipped = [c for c in wanted if c not in measured]
    if skipped:
        notes.append(
            MissingVariableError(
                f"No source measured {', '.join(skipped)} in this experiment (e.g. no GPU or "
                "no wattmeter), so these variables were skipped."
            )
        )
    return measured, skipped


def _counts(series: pd.Series) -> str:
    counts = series.astype(str).value_counts().sort_index()
    return ", ".join(f"{k} {v}" for k, v in counts.items())
