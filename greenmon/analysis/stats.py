"""The study's statistics for any experiment: medians, savings, assumption checks, tests.

Works on a DataFrame of per-unit results (greenmon/analysis/data.py); ``analyze`` in
greenmon/analysis/tables.py loads one from a database and stores what this returns.

Terms:
- *scope*: the units one test compares: one model at one set of factor levels, grouped by
  configuration (the study tests per model, never pooling models).
- *assumption checks*: Shapiro-Wilk per configuration (normality), then Levene (equal
  variances, median-centred) across them.
- *route*: groups all normal -> Welch ANOVA + Games-Howell (two groups: Welch's t);
  otherwise Kruskal-Wallis + Dunn with Holm adjustment (two groups: Mann-Whitney U).
  Welch's variants are used even when Levene passes: they cost nothing when variances are
  equal and are right when they are not.
- *effect sizes*: omnibus omega squared (ANOVA) or epsilon squared (H / (n - 1)); pairs
  Hedges' g (parametric route) or Cliff's delta (rank route); both are stored for pairs.
  Pair effects are oriented a-versus-b: positive means a tends to be larger.
- *saving*: ``(median_versus - median) / median_versus`` in %, per model; the range over
  models is the study's "from 37.99% up to 89.16%".
"""

from __future__ import annotations

import gc
import itertools
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from greenmon.analysis.data import (
    DEPENDENT_VARIABLES,
    VARIABLES_BY_COLUMN,
    AnalysisError,
    ConstantVariableError,
    FailedUnitsExcludedError,
    MissingVariableError,
    NoResultsError,
    TooFewRepetitionsError,
    configuration_label,
    factor_label,
    normalise_results,
)

ALPHA = 0.05
# Shapiro-Wilk is undefined below three values; a test without a normality check would
# silently pick a route, so a configuration needs at least this many repetitions.
MIN_REPETITIONS = 3
# Configurations compared against by default in sentences: the study's baseline engine.
REFERENCE_ENGINE = "torch"

# Column order of every result table (experiment_id is prepended when stored).
MEDIAN_COLUMNS = [
    "variable", "scope", "model", "size_category", "factor_key", "configuration", "engine",
    "provider", "n", "median", "mean", "std", "q1", "q3", "min", "max",
]  # fmt: skip
ASSUMPTION_COLUMNS = [
    "variable", "model", "factor_key", "configuration", "check", "statistic", "p_value", "n",
    "passed",
]  # fmt: skip
TEST_COLUMNS = [
    "variable", "model", "factor_key", "groups", "n_total", "min_n", "normal", "equal_var",
    "test", "statistic", "df1", "df2", "p_value", "significant", "effect_size_kind",
    "effect_size", "pairs_total", "pairs_significant", "all_pairs_differ",
]  # fmt: skip
POSTHOC_COLUMNS = [
    "variable", "model", "factor_key", "a", "b", "test", "p_value", "p_adjusted",
    "significant", "median_a", "median_b", "diff_pct", "hedges_g", "cliffs_delta",
    "effect_size_kind", "effect_size",
]  # fmt: skip
SAVING_COLUMNS = [
    "variable", "model", "factor_key", "configuration", "versus", "median", "median_versus",
    "saving_pct", "p_adjusted", "significant",
]  # fmt: skip
SAVING_RANGE_COLUMNS = [
    "variable", "factor_key", "configuration", "versus", "models", "min_saving_pct",
    "max_saving_pct", "median_saving_pct", "models_lower", "models_significant_lower",
    "range_text",
]  # fmt: skip
SUMMARY_COLUMNS = [
    "variable", "factor_key", "models", "models_tested", "models_significant",
    "models_all_pairs_differ", "best", "reference", "saving_pct", "p_value",
    "effect_size_kind", "effect_size", "sentence", "models_sentence",
]  # fmt: skip
TWOWAY_COLUMNS = [
    "variable", "model", "factor", "source", "ss", "df", "ms", "f", "p_value", "np2",
]  # fmt: skip
TRADEOFF_COLUMNS = [
    "model", "configuration", "factor", "level", "reference", "n", "energy_variable",
    "median_energy_j", "median_duration_s", "energy_change_pct", "duration_change_pct",
    "sentence",
]  # fmt: skip
QUALITY_COLUMNS = [
    "model", "factor_key", "comparison", "configuration", "level", "versus", "n",
    "quality_metric", "median_energy_j", "median_quality", "correct_share", "j_per_correct",
    "energy_change_pct", "quality_change", "verdict", "sentence",
]  # fmt: skip
# A configuration (or factor level) may lose at most this much median quality (on the task
# metric's 0-1 scale) against its reference and still count as saving energy for free;
# beyond it, less energy is a trade-off, not a win.
QUALITY_TOLERANCE = 0.02
QUALITY_VARIABLES = ("quality", "correct_share", "j_per_correct")
RECONCILIATION_COLUMNS = [
    "unit_id", "model", "configuration", "repetition", "factor_key", "energy_wall_j",
    "energy_cpu_j", "energy_dram_j", "energy_gpu_j", "components_j", "unaccounted_j",
    "unaccounted_share",
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
    # issue 18: per-host medians, within-host tests and the host effect (analysis/hosts.py);
    # empty unless the units ran on more than one host.
    host_medians: pd.DataFrame = field(default_factory=pd.DataFrame)
    host_tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    host_effects: pd.DataFrame = field(default_factory=pd.DataFrame)

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
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: every table as a list of records (NULLs as None)."""
        return {
            "experiment_id": self.experiment_id,
            "units_total": self.units_total,
            "units_analysed": self.units_analysed,
            "variables": self.variables,
            "skipped_variables": self.skipped_variables,
            "notes": [{"title": n.title, "message": n.message} for n in self.notes],
            "tables": {name: records(frame) for name, frame in self.tables().items()},
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


# -- one scope ------------------------------------------------------------------------


@dataclass
class ScopeComparison:
    """The test of one scope: its row for analysis_tests plus assumption and pair rows."""

    test: dict[str, Any]
    assumptions: list[dict[str, Any]]
    pairs: list[dict[str, Any]]


def cliffs_delta(a: np.ndarray, b: np.ndarray) -> float:
    """P(a > b) - P(a < b), from pingouin's common-language effect size."""
    import pingouin as pg

    return float(2.0 * pg.compute_effsize(a, b, eftype="CLES") - 1.0)


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    import pingouin as pg

    return float(pg.compute_effsize(a, b, eftype="hedges"))


def compare_groups(groups: dict[str, np.ndarray], alpha: float = ALPHA) -> ScopeComparison:
    """Check assumptions on ``groups`` (configuration -> values), choose and run the test.

    Needs at least two groups of at least ``MIN_REPETITIONS`` values each, not all equal;
    the caller checks that (``scope_problem``).
    """
    import pingouin as pg
    import scikit_posthocs as sp
    from scipy import stats

    names = sorted(groups)
    values = [np.asarray(groups[name], dtype=float) for name in names]
    n_total = int(sum(len(v) for v in values))
    assumptions: list[dict[str, Any]] = []
    normal = True
    with warnings.catch_warnings():
        # Third-party numerical warnings (ties, tiny samples) must not abort an analysis;
        # what they warn about is recorded in the tables instead.
        warnings.simplefilter("ignore")
        for name, v in zip(names, values, strict=True):
            if np.ptp(v) == 0:
                # Shapiro-Wilk is undefined for a constant group; a constant group is not a
                # normal sample, and Welch's ANOVA would divide by its zero variance.
                w_stat, w_p = float("nan"), float("nan")
                passed = False
            else:
                w = stats.shapiro(v)
                w_stat, w_p = float(w.statistic), float(w.pvalue)
                passed = bool(w_p >= alpha)
            normal = normal and passed
            assumptions.append(
                {"configuration": name, "check": "shapiro-wilk", "statistic": w_stat,
                 "p_value": w_p, "n": len(v), "passed": passed}
            )  # fmt: skip
        levene = stats.levene(*values, center="median")
        levene_p = float(levene.pvalue)
        equal_var = bool(levene_p >= alpha) if np.isfinite(levene_p) else False
        assumptions.append(
            {"configuration": None, "check": "levene", "statistic": float(levene.statistic),
             "p_value": levene_p, "n": n_total, "passed": equal_var}
        )  # fmt: skip

        data = pd.DataFrame(
            {"configuration": np.repeat(names, [len(v) for v in values]),
             "value": np.concatenate(values)}
        )  # fmt: skip
        medians = {name: float(np.median(v)) for name, v in zip(names, values, strict=True)}
        pair_p: dict[tuple[str, str], tuple[float, float]] = {}
        test: dict[str, Any] = {"df2": None}
        if len(names) == 2:
            a, b = values
            if normal:
                t = pg.ttest(a, b, correction=True)
                statistic, df1 = float(t["T"].iloc[0]), float(t["dof"].iloc[0])
                p = float(t["p_val"].iloc[0])
                test.update(test="welch-t", statistic=statistic, df1=df1)
                kind, effect = "hedges_g", hedges_g(a, b)
            else:
                u = pg.mwu(a, b)
                p = float(u["p_val"].iloc[0])
                test.update(test="mann-whitney-u", statistic=float(u["U_val"].iloc[0]), df1=None)
                kind, effect = "cliffs_delta", cliffs_delta(a, b)
            test.update(p_value=p, effect_size_kind=kind, effect_size=effect)
            pair_p[(names[0], names[1])] = (p, p)
            pair_test = test["test"]
        elif normal:
            welch = pg.welch_anova(data=data, dv="value", between="configuration")
            classic = pg.anova(data=data, dv="value", between="configuration", detailed=True)
            ss_between, ss_within = float(classic["SS"].iloc[0]), float(classic["SS"].iloc[1])
            df_between, ms_within = float(classic["DF"].iloc[0]), float(classic["MS"].iloc[1])
            omega2 = (ss_between - df_between * ms_within) / (ss_between + ss_within + ms_within)
            test.update(
                test="welch-anova", statistic=float(welch["F"].iloc[0]),
                df1=float(welch["ddof1"].iloc[0]), df2=float(welch["ddof2"].iloc[0]),
                p_value=float(welch["p_unc"].iloc[0]), effect_size_kind="omega_squared",
                effect_size=omega2,
            )  # fmt: skip
            gh = pg.pairwise_gameshowell(data=data, dv="value", between="configuration")
            for row in gh.itertuples(index=False):
                pval = float(row.pval)
                pair_p[(str(row.A), str(row.B))] = (pval, pval)
            pair_test = "games-howell"
        else:
            kw = pg.kruskal(data=data, dv="value", between="configuration")
            h = float(kw["H"].iloc[0])
            test.update(
                test="kruskal-wallis", statistic=h, df1=float(kw["ddof1"].iloc[0]),
                p_value=float(kw["p_unc"].iloc[0]), effect_size_kind="epsilon_squared",
                effect_size=h / (n_total - 1),
            )  # fmt: skip
            raw = sp.posthoc_dunn(data, val_col="value", group_col="configuration")
            holm = sp.posthoc_dunn(
                data, val_col="value", group_col="configuration", p_adjust="holm"
            )
            for x, y in itertools.combinations(names, 2):
                pair_p[(x, y)] = (float(raw.loc[x, y]), float(holm.loc[x, y]))
            pair_test = "dunn-holm"

        pairs: list[dict[str, Any]] = []
        for x, y in itertools.combinations(names, 2):
            p_raw, p_adj = pair_p.get((x, y)) or pair_p[(y, x)]
            a, b = groups[x], groups[y]
            g, delta = hedges_g(a, b), cliffs_delta(a, b)
            kind = "hedges_g" if normal else "cliffs_delta"
            pairs.append(
                {"a": x, "b": y, "test": pair_test, "p_value": p_raw, "p_adjusted": p_adj,
                 "significant": bool(p_adj < alpha), "median_a": medians[x],
                 "median_b": medians[y], "diff_pct": _pct_diff(medians[x], medians[y]),
                 "hedges_g": g, "cliffs_delta": delta, "effect_size_kind": kind,
                 "effect_size": g if normal else delta}
            )  # fmt: skip
    significant_pairs = sum(1 for pair in pairs if pair["significant"])
    test.update(
        groups=len(names), n_total=n_total, min_n=min(len(v) for v in values), normal=normal,
        equal_var=equal_var, significant=bool(test["p_value"] < alpha),
        pairs_total=len(pairs), pairs_significant=significant_pairs,
        all_pairs_differ=significant_pairs == len(pairs),
    )  # fmt: skip
    return ScopeComparison(test=test, assumptions=assumptions, pairs=pairs)


# Below this many scopes, starting worker processes costs more than it saves.
PARALLEL_MIN_SCOPES = 60


def _compare_chunk(chunk: list[dict[str, np.ndarray]], alpha: float) -> list[ScopeComparison]:
    return [compare_groups(groups, alpha) for groups in chunk]


def _map_comparisons(
    tasks: list[dict[str, np.ndarray]], alpha: float, workers: int | None
) -> list[ScopeComparison]:
    """``compare_groups`` over every scope, in order; in worker processes when it pays.

    Games-Howell's p-values come from scipy's studentized range distribution, a numerical
    double integral of ~8 ms per pair, so a 12-model experiment spends seconds there; the
    scopes are independent, so they spread over cores.  Workers are forked: they inherit
    the imported libraries and touch nothing but numpy arrays, never the database.
    """
    import multiprocessing
    import os

    if workers is None:
        workers = (os.cpu_count() or 1) if len(tasks) >= PARALLEL_MIN_SCOPES else 1
    workers = min(workers, len(tasks))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return _compare_chunk(tasks, alpha)
    from concurrent.futures import ProcessPoolExecutor

    # Import the test libraries here, once, so forked workers inherit them (each would
    # otherwise spend seconds importing pingouin).
    import pingouin  # noqa: F401
    import scikit_posthocs  # noqa: F401

    # Interleave scopes over chunks so each worker gets a mix of cheap and costly ones.
    chunks = [tasks[i::workers] for i in range(workers)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        parts = list(pool.map(_compare_chunk, chunks, [alpha] * workers))
    out: list[ScopeComparison | None] = [None] * len(tasks)
    for i, part in enumerate(parts):
        out[i::workers] = part
    return [c for c in out if c is not None]


def _pct_diff(value: float, versus: float) -> float | None:
    """``value`` relative to ``versus`` in % (negative: lower); None when versus is 0."""
    if versus == 0 or not np.isfinite(versus) or not np.isfinite(value):
        return None
    return (value - versus) / abs(versus) * 100.0


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
    done = results[results["status"] == "done"]
    # issue 14: units that repetitions = "auto" skipped were not needed, not lost
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

    wanted = list(variables) if variables else [v.column for v in DEPENDENT_VARIABLES]
    if not variables:
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

    from greenmon.analysis.background import background_note  # issue 14

    notes += filter(None, [background_note(done)])
    medians = _medians(done, measured)
    # issue 18: units from several hosts are also compared within hosts (the host a block)
    from greenmon.analysis.hosts import host_analysis

    host_medians, host_tests, host_effects = host_analysis(done, measured, alpha, notes)
    comparisons = _compare_scopes(done, measured, alpha, notes, workers)
    tests, assumptions, posthoc = comparisons
    savings = _savings(medians, posthoc)
    savings_range = _savings_range(savings)
    summary = _summary(done, measured, medians, tests, posthoc, savings, savings_range)
    twoway = _twoway(done, measured)
    reconciliation = reconcile(done)
    tradeoff = _tradeoff(done, measured)
    quality = _quality(done, measured)
    summary = _weigh_quality(summary, quality)
    return AnalysisResult(
        experiment_id=experiment_id,
        medians=medians,
        assumptions=assumptions,
        tests=tests,
        posthoc=posthoc,
        savings=savings,
        savings_range=savings_range,
        summary=summary,
        twoway=twoway,
        reconciliation=reconciliation,
        tradeoff=tradeoff,
        quality=quality,
        variables=measured,
        skipped_variables=skipped,
        units_total=len(results),
        units_analysed=len(done),
        notes=notes,
        host_medians=host_medians,
        host_tests=host_tests,
        host_effects=host_effects,
    )


def _counts(series: pd.Series) -> str:
    counts = series.astype(str).value_counts().sort_index()
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _frame(rows: Iterable[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=columns)


def _medians(done: pd.DataFrame, measured: list[str]) -> pd.DataFrame:
    keys = ["model", "size_category", "factor_key", "configuration", "engine", "provider"]
    long = done.melt(id_vars=keys, value_vars=measured, var_name="variable").dropna(
        subset=["value"]
    )
    long["size_category"] = long["size_category"].astype("Int64")
    parts = []
    scopes = {
        "configuration": ["variable", "factor_key", "configuration", "engine", "provider"],
        "model": ["variable", "model", "factor_key", "configuration", "engine", "provider"],
        "size_category": [
            "variable", "size_category", "factor_key", "configuration", "engine", "provider",
        ],
    }  # fmt: skip
    for scope, by in scopes.items():
        grouped = long.groupby(by, dropna=False, sort=True)["value"]
        agg = grouped.agg(
            n="count", median="median", mean="mean", std="std", min="min", max="max"
        )
        agg["q1"] = grouped.quantile(0.25)
        agg["q3"] = grouped.quantile(0.75)
        agg = agg.reset_index()
        agg["scope"] = scope
        parts.append(agg)
    out = pd.concat(parts, ignore_index=True)
    for column in MEDIAN_COLUMNS:
        if column not in out.columns:
            out[column] = None
    order = {c: i for i, c in enumerate(measured)}
    out["_order"] = out["variable"].map(order)
    out = out.sort_values(["_order", "scope", "model", "size_category", "factor_key",
                           "configuration"], na_position="first", kind="stable")  # fmt: skip
    return out[MEDIAN_COLUMNS].reset_index(drop=True)


def scope_problem(
    variable: str, model: str, factors: str, groups: dict[str, np.ndarray]
) -> AnalysisError | None:
    """Why a scope cannot be tested, or None."""
    where = f"{model}" + (f" at {factor_label(factors)}" if factors else "")
    if len(groups) < 2:
        return None  # one configuration: nothing to compare, not an error
    short = {name: len(v) for name, v in groups.items() if len(v) < MIN_REPETITIONS}
    if short:
        have = ", ".join(f"{name} {n}" for name, n in sorted(short.items()))
        return TooFewRepetitionsError(
            f"{variable} for {where}: configurations with fewer than {MIN_REPETITIONS} "
            f"successful repetitions ({have}) were left out of the tests. Shapiro-Wilk needs "
            f"at least {MIN_REPETITIONS} values per configuration to choose a test; plan "
            "10 or more repetitions for useful power."
        )
    everything = np.concatenate(list(groups.values()))
    if np.ptp(everything) == 0:
        return ConstantVariableError(
            f"{variable} for {where} has the same value ({everything[0]:.6g}) in every unit, "
            "so there is nothing to test; check that its source was read during the runs."
        )
    return None


def _compare_scopes(
    done: pd.DataFrame,
    measured: list[str],
    alpha: float,
    notes: list[AnalysisError],
    workers: int | None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    test_rows: list[dict[str, Any]] = []
    assumption_rows: list[dict[str, Any]] = []
    pair_rows: list[dict[str, Any]] = []
    few: list[TooFewRepetitionsError] = []
    keys: list[dict[str, Any]] = []
    tasks: list[dict[str, np.ndarray]] = []
    for (model, factors), scope in done.groupby(["model", "factor_key"], sort=True):
        for variable in measured:
            column = scope[["configuration", variable]].dropna()
            groups = {
                str(name): part[variable].to_numpy(dtype=float)
                for name, part in column.groupby("configuration", sort=True)
            }
            problem = scope_problem(variable, str(model), str(factors), groups)
            if isinstance(problem, TooFewRepetitionsError):
                few.append(problem)
                groups = {k: v for k, v in groups.items() if len(v) >= MIN_REPETITIONS}
                problem = scope_problem(variable, str(model), str(factors), groups)
            if problem is not None:
                notes.append(problem)
                continue
            if len(groups) < 2:
                continue
            keys.append({"variable": variable, "model": model, "factor_key": factors})
            tasks.append(groups)
    for key, comparison in zip(keys, _map_comparisons(tasks, alpha, workers), strict=True):
        test_rows.append({**key, **comparison.test})
        assumption_rows += [{**key, **row} for row in comparison.assumptions]
        pair_rows += [{**key, **row} for row in comparison.pairs]
    if few:
        # One note per cause, not one per scope: a two-repetition demo has dozens of scopes.
        first = few[0].message
        notes.append(
            TooFewRepetitionsError(
                first if len(few) == 1 else f"{first} The same holds for {len(few) - 1} "
                "other model/variable combinations."
            )
        )
    return (
        _frame(test_rows, TEST_COLUMNS),
        _frame(assumption_rows, ASSUMPTION_COLUMNS),
        _frame(pair_rows, POSTHOC_COLUMNS),
    )


def _savings(medians: pd.DataFrame, posthoc: pd.DataFrame) -> pd.DataFrame:
    per_model = medians[medians["scope"] == "model"]
    significance: dict[tuple[str, str, str, str, str], float] = {}
    for row in posthoc.itertuples(index=False):
        for a, b in ((row.a, row.b), (row.b, row.a)):
            significance[(row.variable, row.model, row.factor_key, a, b)] = row.p_adjusted
    rows: list[dict[str, Any]] = []
    for (variable, model, factors), part in per_model.groupby(
        ["variable", "model", "factor_key"], sort=False
    ):
        meds = dict(zip(part["configuration"], part["median"], strict=True))
        for config, versus in itertools.permutations(sorted(meds), 2):
            saving = _pct_diff(meds[config], meds[versus])
            p = significance.get((variable, model, factors, config, versus))
            rows.append(
                {"variable": variable, "model": model, "factor_key": factors,
                 "configuration": config, "versus": versus, "median": meds[config],
                 "median_versus": meds[versus],
                 "saving_pct": None if saving is None else -saving, "p_adjusted": p,
                 "significant": None if p is None else bool(p < ALPHA)}
            )  # fmt: skip
    return _frame(rows, SAVING_COLUMNS)


def range_text(low: float, high: float) -> str:
    """The study's phrasing of a range of savings over models."""
    if np.isclose(low, high):
        return f"{low:.2f}%"
    return f"from {low:.2f}% up to {high:.2f}%"


def _savings_range(savings: pd.DataFrame) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    usable = savings.dropna(subset=["saving_pct"])
    for (variable, factors, config, versus), part in usable.groupby(
        ["variable", "factor_key", "configuration", "versus"], sort=False
    ):
        pct = part["saving_pct"].to_numpy(dtype=float)
        lower = pct > 0
        significant = part["significant"].fillna(False).to_numpy(dtype=bool)
        rows.append(
            {"variable": variable, "factor_key": factors, "configuration": config,
             "versus": versus, "models": len(part), "min_saving_pct": float(pct.min()),
             "max_saving_pct": float(pct.max()), "median_saving_pct": float(np.median(pct)),
             "models_lower": int(lower.sum()),
             "models_significant_lower": int((lower & significant).sum()),
             "range_text": range_text(float(pct.min()), float(pct.max()))}
        )  # fmt: skip
    return _frame(rows, SAVING_RANGE_COLUMNS)


def _format_p(p: float) -> str:
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}"


def _summary(
    done: pd.DataFrame,
    measured: list[str],
    medians: pd.DataFrame,
    tests: pd.DataFrame,
    posthoc: pd.DataFrame,
    savings: pd.DataFrame,
    savings_range: pd.DataFrame,
) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for variable in measured:
        var = VARIABLES_BY_COLUMN[variable]
        for factors in sorted(done["factor_key"].unique()):
            in_scope = done[(done["factor_key"] == factors) & done[variable].notna()]
            models = sorted(in_scope["model"].unique())
            if not models:
                continue
            t = tests[(tests["variable"] == variable) & (tests["factor_key"] == factors)]
            row: dict[str, Any] = {
                "variable": variable, "factor_key": factors, "models": len(models),
                "models_tested": len(t), "models_significant": int(t["significant"].sum()),
                "models_all_pairs_differ": int(t["all_pairs_differ"].sum()),
            }  # fmt: skip
            where = f" at {factor_label(factors)}" if factors else ""
            # Rank configurations by their median over per-model medians, so one large
            # model does not decide the winner.
            per_model = medians[
                (medians["scope"] == "model") & (medians["variable"] == variable)
                & (medians["factor_key"] == factors)
            ]  # fmt: skip
            ranking = per_model.groupby("configuration")["median"].median().sort_values(
                ascending=not var.higher_is_better
            )
            if len(ranking) < 2:
                row["sentence"] = (
                    f"Only {configuration_label(str(ranking.index[0]))} was measured{where}; "
                    f"its median {var.noun} was {ranking.iloc[0]:.4g} {var.unit}."
                )
                rows.append(row)
                continue
            best = str(ranking.index[0])
            reference = _reference(best, list(ranking.index))
            row.update(best=best, reference=reference)
            if var.higher_is_better:
                row["sentence"] = _better_sentence(var.noun, best, reference, ranking, where)
                if len(t):
                    row["models_sentence"] = _models_sentence(t, len(models))
                rows.append(row)
                continue
            row["sentence"] = _sentence(
                var.noun, var.unit, best, reference, models, variable, factors, savings,
                savings_range, posthoc, row, where,
            )
            if len(t):
                row["models_sentence"] = _models_sentence(t, len(models))
            rows.append(row)
    return _frame(rows, SUMMARY_COLUMNS)


def _better_sentence(
    noun: str, best: str, reference: str, ranking: pd.Series, where: str
) -> str:
    """For a variable that is better higher (quality): the best and its reference's medians."""
    return (
        f"{configuration_label(best)} had the highest median {noun}{where} "
        f"({float(ranking[best]):.3g}); {configuration_label(reference)} had "
        f"{float(ranking[reference]):.3g}. See the quality table for the tests."
    )


def _reference(best: str, ranked: list[str]) -> str:
    """What the winner is compared with: the baseline engine on the winner's provider, then
    on any provider, else the worst configuration."""
    provider = best.partition("/")[2]
    candidates = [f"{REFERENCE_ENGINE}/{provider}"] + [
        c for c in ranked if c.startswith(f"{REFERENCE_ENGINE}/")
    ]
    for candidate in candidates:
        if candidate in ranked and candidate != best:
            return candidate
    return ranked[-1]


def _sentence(
    noun: str,
    unit: str,
    best: str,
    reference: str,
    models: list[str],
    variable: str,
    factors: str,
    savings: pd.DataFrame,
    savings_range: pd.DataFrame,
    posthoc: pd.DataFrame,
    row: dict[str, Any],
    where: str,
) -> str:
    best_label, ref_label = configuration_label(best), configuration_label(reference)
    pairs = posthoc[
        (posthoc["variable"] == variable) & (posthoc["factor_key"] == factors)
        & (((posthoc["a"] == best) & (posthoc["b"] == reference))
           | ((posthoc["a"] == reference) & (posthoc["b"] == best)))
    ]  # fmt: skip
    # Orient effects as reference-versus-best: positive means the reference used more.
    sign = np.where(pairs["a"] == reference, 1.0, -1.0)
    if len(models) == 1 and len(pairs) and pairs["effect_size_kind"].iloc[0] == "hedges_g":
        kind, effects = "Hedges' g", pairs["hedges_g"].to_numpy(dtype=float) * sign
    else:
        # Across models the routes differ; Cliff's delta is on one scale for all of them.
        kind, effects = "Cliff's delta", pairs["cliffs_delta"].to_numpy(dtype=float) * sign
    if len(models) == 1:
        s = savings[
            (savings["variable"] == variable) & (savings["factor_key"] == factors)
            & (savings["configuration"] == best) & (savings["versus"] == reference)
        ]  # fmt: skip
        pct = float(s["saving_pct"].iloc[0]) if len(s) and s["saving_pct"].notna().all() else None
        text = f"Here{where}, {best_label} used "
        text += f"{pct:.0f}% less {noun} than {ref_label}" if pct is not None else (
            f"the least {noun}; {ref_label} is the reference"
        )
        if len(pairs):
            p = float(pairs["p_adjusted"].iloc[0])
            row.update(saving_pct=pct, p_value=p, effect_size_kind=kind, effect_size=effects[0])
            text += f"; {_format_p(p)}, {kind} {effects[0]:.2f}."
            if not p < ALPHA:
                # a practitioner must not act on a difference the test could not confirm
                text += (
                    " The difference is not significant at the 5% level: do not act on it "
                    "yet; more repetitions would tell."
                )
        else:
            row.update(saving_pct=pct)
            text += " (not tested: see the notes)."
        return text
    r = savings_range[
        (savings_range["variable"] == variable) & (savings_range["factor_key"] == factors)
        & (savings_range["configuration"] == best) & (savings_range["versus"] == reference)
    ]  # fmt: skip
    if r.empty:
        return f"{best_label} had the lowest median {noun}{where} across {len(models)} models."
    r0 = r.iloc[0]
    row.update(saving_pct=float(r0["median_saving_pct"]))
    text = (
        f"Across {int(r0['models'])} models{where}, {best_label} used the least {noun}: "
        f"{r0['range_text']} less than {ref_label} (median {r0['median_saving_pct']:.0f}%)"
    )
    if len(pairs):
        significant = int((pairs["p_adjusted"] < ALPHA).sum())
        median_effect = float(np.median(effects))
        row.update(
            p_value=float(pairs["p_adjusted"].max()), effect_size_kind=kind,
            effect_size=median_effect,
        )  # fmt: skip
        text += (
            f"; the difference was significant in {significant} of {len(pairs)} models "
            f"(median {kind} {median_effect:.2f})."
        )
    else:
        text += "; not tested (see the notes)."
    return text


def _models_sentence(tests: pd.DataFrame, models: int) -> str:
    differ = int(tests["all_pairs_differ"].sum())
    tested = len(tests)
    untested = models - tested
    suffix = f" ({untested} models not tested)" if untested else ""
    if differ == tested:
        return f"All configurations differ significantly in all {tested} models{suffix}."
    if differ == 0:
        return f"No model shows all configurations differing significantly{suffix}."
    return (
        f"All configurations differ significantly, except for {tested - differ} of "
        f"{tested} models{suffix}."
    )


def _twoway(done: pd.DataFrame, measured: list[str]) -> pd.DataFrame:
    """Per model and factor: two-way ANOVA configuration x factor (type II sums of squares),
    where every cell has at least two units."""
    import pingouin as pg

    rows: list[dict[str, Any]] = []
    factor_values = [json_factors(key) for key in done["factor_key"]]
    names = sorted({name for levels in factor_values for name in levels})
    if not names:
        return _frame(rows, TWOWAY_COLUMNS)
    frame = done.copy()
    for name in names:
        frame[f"factor:{name}"] = [str(levels.get(name)) for levels in factor_values]
    for model, part in frame.groupby("model", sort=True):
        for name in names:
            column = f"factor:{name}"
            if part[column].nunique() < 2 or part["configuration"].nunique() < 2:
                continue
            for variable in measured:
                data = part[["configuration", column, variable]].dropna()
                cells = data.groupby(["configuration", column]).size()
                complete = len(cells) == data["configuration"].nunique() * data[column].nunique()
                if not complete or cells.min() < 2 or np.ptp(data[variable]) == 0:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    table = pg.anova(data=data, dv=variable, between=["configuration", column])
                for r in table.to_dict(orient="records"):
                    rows.append(
                        {"variable": variable, "model": model, "factor": name,
                         "source": str(r["Source"]).replace("factor:", ""),
                         "ss": r.get("SS"), "df": r.get("DF"), "ms": r.get("MS"),
                         "f": r.get("F"), "p_value": r.get("p_unc"), "np2": r.get("np2")}
                    )  # fmt: skip
    return _frame(rows, TWOWAY_COLUMNS)


def _tradeoff(done: pd.DataFrame, measured: list[str]) -> pd.DataFrame:
    """Per model, configuration and varied factor: median energy and time at each level,
    and their change against the first level (the DVFS study's question: how much slower
    for how much less energy).  Only factors that vary while the others stay fixed."""
    energy = next((v for v in ("energy_global_j", "energy_wall_j") if v in measured), None)
    if energy is None or "duration_s" not in measured:
        return _frame([], TRADEOFF_COLUMNS)
    factor_values = [json_factors(key) for key in done["factor_key"]]
    names = sorted({name for levels in factor_values for name in levels})
    rows: list[dict[str, Any]] = []
    frame = done.copy()
    for name in names:
        frame[f"factor:{name}"] = [json.dumps(levels.get(name)) for levels in factor_values]
        others = [f"factor:{n}" for n in names if n != name]
        frame["_others"] = (
            frame[others].astype(str).agg("|".join, axis=1) if others else ""
        )
        keys = ["model", "configuration", "_others"]
        for (model, configuration, _), part in frame.groupby(keys, sort=True):
            levels = part.groupby(f"factor:{name}", sort=False)
            if levels.ngroups < 2:
                continue
            ordered = sorted(levels.groups, key=_level_sort_key)
            medians = {
                level: (float(group[energy].median()), float(group["duration_s"].median()),
                        len(group))
                for level, group in levels
            }  # fmt: skip
            reference = ordered[0]
            ref_energy, ref_time, _ = medians[reference]
            for level in ordered:
                level_energy, level_time, n = medians[level]
                energy_pct = _pct_change(level_energy, ref_energy)
                time_pct = _pct_change(level_time, ref_time)
                sentence = None
                if level != reference and energy_pct is not None and time_pct is not None:
                    sentence = (
                        f"At {name} = {json.loads(level)}, {configuration} used "
                        f"{abs(energy_pct):.1f}% {'less' if energy_pct < 0 else 'more'} energy "
                        f"and took {abs(time_pct):.1f}% {'less' if time_pct < 0 else 'more'} "
                        f"time than at {name} = {json.loads(reference)}."
                    )
                rows.append(
                    {"model": model, "configuration": configuration, "factor": name,
                     "level": json.loads(level), "reference": json.loads(reference), "n": n,
                     "energy_variable": energy, "median_energy_j": level_energy,
                     "median_duration_s": level_time, "energy_change_pct": energy_pct,
                     "duration_change_pct": time_pct, "sentence": sentence}
                )  # fmt: skip
    out = _frame(rows, TRADEOFF_COLUMNS)
    # levels may be numbers or strings; the table stores them as text
    out["level"] = out["level"].astype(str)
    out["reference"] = out["reference"].astype(str)
    return out


def _level_sort_key(level: str) -> tuple[int, Any]:
    value = json.loads(level)
    if isinstance(value, int | float):
        return (0, value)
    return (1, str(value))


def _pct_change(value: float, reference: float) -> float | None:
    if not np.isfinite(value) or not np.isfinite(reference) or reference == 0:
        return None
    return 100.0 * (value - reference) / reference


def json_factors(key: str) -> dict[str, Any]:
    import json

    return dict(json.loads(key)) if key else {}


def reconcile(done: pd.DataFrame) -> pd.DataFrame:
    """Per unit: wall energy against CPU + DRAM + GPU, and the share the components leave
    unaccounted (NULL when no wall source was measured)."""
    parts = done[["energy_cpu_j", "energy_dram_j", "energy_gpu_j"]]
    components = parts.sum(axis=1, min_count=1)
    wall = done["energy_wall_j"]
    unaccounted = wall - components
    share = unaccounted / wall.where(wall != 0)
    out = pd.DataFrame(
        {"unit_id": done["unit_id"], "model": done["model"],
         "configuration": done["configuration"], "repetition": done["repetition"],
         "factor_key": done["factor_key"], "energy_wall_j": wall,
         "energy_cpu_j": done["energy_cpu_j"], "energy_dram_j": done["energy_dram_j"],
         "energy_gpu_j": done["energy_gpu_j"], "components_j": components,
         "unaccounted_j": unaccounted, "unaccounted_share": share}
    )  # fmt: skip
    return out.sort_values("unit_id").reset_index(drop=True)[RECONCILIATION_COLUMNS]


# -- quality beside energy (issue 19) -----------------------------------------------


def verdict(energy_change_pct: float | None, quality_change: float | None) -> str:
    """What a change against the reference means once quality is weighed with energy."""
    if energy_change_pct is None:
        return "unknown"
    lost_quality = quality_change is not None and quality_change < -QUALITY_TOLERANCE
    if energy_change_pct < 0:
        return "trade-off" if lost_quality else "win"
    return "worse" if lost_quality or quality_change is None else "costlier"


def _quality(done: pd.DataFrame, measured: list[str]) -> pd.DataFrame:
    """Per model and factor levels: each configuration's median energy and quality against
    the reference configuration (the study's baseline engine), and, where a factor varies,
    each level against the first, with a verdict: a saving that loses more quality than
    QUALITY_TOLERANCE is a trade-off, not a win."""
    energy = next((v for v in ("energy_global_j", "energy_wall_j") if v in measured), None)
    if energy is None or "quality" not in measured:
        return _frame([], QUALITY_COLUMNS)
    rows: list[dict[str, Any]] = []

    def summarise(part: pd.DataFrame) -> dict[str, Any]:
        metric = part["quality_metric"].dropna()
        correct = part["correct_share"].dropna()
        per_correct = part["j_per_correct"].dropna()
        return {
            "n": len(part),
            "quality_metric": str(metric.iloc[0]) if len(metric) else None,
            "median_energy_j": float(part[energy].median()),
            "median_quality": float(part["quality"].median()),
            "correct_share": float(correct.median()) if len(correct) else None,
            "j_per_correct": float(per_correct.median()) if len(per_correct) else None,
        }

    def compare(
        groups: dict[str, dict[str, Any]], reference: str, base: dict[str, Any], noun: str
    ) -> None:
        ref = groups[reference]
        for name, figures in groups.items():
            energy_pct = None if name == reference else _pct_change(
                figures["median_energy_j"], ref["median_energy_j"]
            )
            q_change = None if name == reference else (
                figures["median_quality"] - ref["median_quality"]
            )
            if np.isnan(figures["median_quality"]) or np.isnan(ref["median_quality"]):
                q_change = None
            row = {**base, **figures, "versus": reference, "energy_change_pct": energy_pct,
                   "quality_change": q_change, "sentence": None,
                   "verdict": "reference" if name == reference else verdict(energy_pct, q_change)}
            if base["comparison"] == "configuration":
                row["configuration"], row["level"] = name, None
            else:
                row["level"] = name
            if name != reference and energy_pct is not None:
                row["sentence"] = f"{base['model']}: " + _quality_sentence(
                    noun.format(name), noun.format(reference), energy_pct, q_change,
                    row["verdict"],
                )
            rows.append(row)

    for (model, factors), scope in done.groupby(["model", "factor_key"], sort=True):
        scope = scope[scope[energy].notna() & scope["quality"].notna()]
        groups = {str(c): summarise(p) for c, p in scope.groupby("configuration", sort=True)}
        if len(groups) >= 1:
            best = min(groups, key=lambda c: groups[c]["median_energy_j"])
            reference = _reference(best, sorted(groups)) if len(groups) > 1 else best
            compare(groups, reference,
                    {"model": model, "factor_key": factors, "comparison": "configuration"},
                    "{}" + (f" at {factor_label(str(factors))}" if factors else ""))
    factor_values = [json_factors(key) for key in done["factor_key"]]
    names = sorted({name for levels in factor_values for name in levels})
    frame = done[done[energy].notna() & done["quality"].notna()].copy()
    factor_values = [json_factors(key) for key in frame["factor_key"]]
    for name in names:
        frame[f"factor:{name}"] = [json.dumps(levels.get(name)) for levels in factor_values]
        others = [f"factor:{n}" for n in names if n != name]
        frame["_others"] = frame[others].astype(str).agg("|".join, axis=1) if others else ""
        for (model, configuration, _), part in frame.groupby(
            ["model", "configuration", "_others"], sort=True
        ):
            levels = {str(k): summarise(g) for k, g in part.groupby(f"factor:{name}")}
            if len(levels) < 2:
                continue
            reference = sorted(levels, key=_level_sort_key)[0]
            compare(levels, reference,
                    {"model": model, "factor_key": str(part["factor_key"].iloc[0]),
                     "comparison": f"factor:{name}", "configuration": configuration},
                    f"{configuration} at {name} = " + "{}")
    return _frame(rows, QUALITY_COLUMNS)


def _quality_sentence(
    what: str, versus: str, energy_pct: float, q_change: float | None, kind: str
) -> str:
    change = "less" if energy_pct < 0 else "more"
    text = f"{what} used {abs(energy_pct):.1f}% {change} energy than {versus}"
    if q_change is None:
        return text + "; its quality was not scored."
    text += f", with quality {q_change:+.3f} (0-1 scale)"
    if kind == "trade-off":
        return text + (
            f": a trade-off, not a win (it lost more than {QUALITY_TOLERANCE} quality)."
        )
    if kind == "win":
        return text + f": a win (quality within {QUALITY_TOLERANCE} or better)."
    return text + "."


def _weigh_quality(summary: pd.DataFrame, quality: pd.DataFrame) -> pd.DataFrame:
    """An energy finding whose winner lost quality beyond the tolerance says so."""
    if quality.empty or summary.empty:
        return summary
    out = summary.copy()
    for index, row in out.iterrows():
        var = VARIABLES_BY_COLUMN.get(str(row["variable"]))
        if var is None or var.unit != "J" or not isinstance(row["best"], str):
            continue
        hits = quality[
            (quality["comparison"] == "configuration")
            & (quality["factor_key"] == row["factor_key"])
            & (quality["configuration"] == row["best"]) & (quality["versus"] == row["reference"])
        ]  # fmt: skip
        trade = hits[hits["verdict"] == "trade-off"]
        if len(trade):
            worst = float(trade["quality_change"].min())
            out.at[index, "sentence"] = (
                f"{row['sentence']} But this is a trade-off, not a win: "
                f"{configuration_label(row['best'])}'s median quality was {worst:+.3f} "
                f"against {configuration_label(row['reference'])} (tolerance "
                f"{QUALITY_TOLERANCE})."
            )
    return out
