"""Hypothesis tests for one experiment: assumption checks, the omnibus test, post-hoc pairs.

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
- *alpha*: the significance level; every "significant" in every table and sentence is
  ``p < alpha`` for the one alpha the analysis was given.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from greenmon.analysis.data import (
    AnalysisError,
    ConstantVariableError,
    TooFewRepetitionsError,
    factor_label,
)
from greenmon.analysis.summaries import json_factors, pct_diff, table
from greenmon.thresholds import MIN_REPETITIONS

ALPHA = 0.05
# MIN_REPETITIONS (greenmon/thresholds.py): Shapiro-Wilk is undefined below three values.

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
TWOWAY_COLUMNS = [
    "variable", "model", "factor", "source", "ss", "df", "ms", "f", "p_value", "np2",
]  # fmt: skip


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
    """Hedges' g of a against b (bias-corrected standardised mean difference)."""
    import pingouin as pg

    return float(pg.compute_effsize(a, b, eftype="hedges"))


def compare_groups(groups: dict[str, np.ndarray], alpha: float = ALPHA) -> ScopeComparison:
    """Check assumptions on ``groups`` (configuration -> values), choose and run the test.

    Needs at least two groups of at least ``MIN_REPETITIONS`` values each, not all equal;
    the caller checks that (``scope_problem``).
    """
    names = sorted(groups)
    values = [np.asarray(groups[name], dtype=float) for name in names]
    n_total = int(sum(len(v) for v in values))
    with warnings.catch_warnings():
        # Third-party numerical warnings (ties, tiny samples) must not abort an analysis;
        # what they warn about is recorded in the tables instead.
        warnings.simplefilter("ignore")
        assumptions, normal, equal_var = _check_assumptions(names, values, n_total, alpha)
        data = pd.DataFrame(
            {"configuration": np.repeat(names, [len(v) for v in values]),
             "value": np.concatenate(values)}
        )  # fmt: skip
        medians = {name: float(np.median(v)) for name, v in zip(names, values, strict=True)}
        test: dict[str, Any] = {"df2": None}
        if len(names) == 2:
            pair_p, pair_test = _two_group_test(names, values, normal, test)
        elif normal:
            pair_p, pair_test = _welch_anova_games_howell(data, test)
        else:
            pair_p, pair_test = _kruskal_dunn_holm(data, names, n_total, test)
        pairs = _pair_rows(groups, names, medians, pair_p, pair_test, normal, alpha)
    significant_pairs = sum(1 for pair in pairs if pair["significant"])
    test.update(
        groups=len(names), n_total=n_total, min_n=min(len(v) for v in values), normal=normal,
        equal_var=equal_var, significant=bool(test["p_value"] < alpha),
        pairs_total=len(pairs), pairs_significant=significant_pairs,
        all_pairs_differ=significant_pairs == len(pairs),
    )  # fmt: skip
    return ScopeComparison(test=test, assumptions=assumptions, pairs=pairs)


# The steps of compare_groups below run inside its warnings filter.  Each test step fills
# ``test`` in place (keeping its key order) and returns the pairwise p-values, keyed by the
# pair as its post-hoc test names it, as (raw, adjusted), with the post-hoc test's name.
_PairP = dict[tuple[str, str], tuple[float, float]]


def _check_assumptions(
    names: list[str], values: list[np.ndarray], n_total: int, alpha: float
) -> tuple[list[dict[str, Any]], bool, bool]:
    """Shapiro-Wilk per group and Levene across groups: (rows, all normal, equal variances)."""
    from scipy import stats

    assumptions: list[dict[str, Any]] = []
    normal = True
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
    return assumptions, normal, equal_var


def _two_group_test(
    names: list[str], values: list[np.ndarray], normal: bool, test: dict[str, Any]
) -> tuple[_PairP, str]:
    """Welch's t (normal) or Mann-Whitney U; the pair's p-value is the test's own."""
    import pingouin as pg

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
    return {(names[0], names[1]): (p, p)}, str(test["test"])


def _welch_anova_games_howell(data: pd.DataFrame, test: dict[str, Any]) -> tuple[_PairP, str]:
    """Welch's ANOVA with omega squared, then Games-Howell pairs."""
    import pingouin as pg

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
    pair_p: _PairP = {}
    gh = pg.pairwise_gameshowell(data=data, dv="value", between="configuration")
    for row in gh.itertuples(index=False):
        pval = float(row.pval)
        pair_p[(str(row.A), str(row.B))] = (pval, pval)
    return pair_p, "games-howell"


def _kruskal_dunn_holm(
    data: pd.DataFrame, names: list[str], n_total: int, test: dict[str, Any]
) -> tuple[_PairP, str]:
    """Kruskal-Wallis with epsilon squared, then Dunn's pairs (raw and Holm-adjusted)."""
    import pingouin as pg
    import scikit_posthocs as sp

    kw = pg.kruskal(data=data, dv="value", between="configuration")
    h = float(kw["H"].iloc[0])
    test.update(
        test="kruskal-wallis", statistic=h, df1=float(kw["ddof1"].iloc[0]),
        p_value=float(kw["p_unc"].iloc[0]), effect_size_kind="epsilon_squared",
        effect_size=h / (n_total - 1),
    )  # fmt: skip
    raw = sp.posthoc_dunn(data, val_col="value", group_col="configuration")
    holm = sp.posthoc_dunn(data, val_col="value", group_col="configuration", p_adjust="holm")
    pair_p: _PairP = {}
    for x, y in itertools.combinations(names, 2):
        pair_p[(x, y)] = (float(raw.loc[x, y]), float(holm.loc[x, y]))
    return pair_p, "dunn-holm"


def _pair_rows(
    groups: dict[str, np.ndarray],
    names: list[str],
    medians: dict[str, float],
    pair_p: _PairP,
    pair_test: str,
    normal: bool,
    alpha: float,
) -> list[dict[str, Any]]:
    """One row per pair of configurations, in ``names`` order, with both effect sizes."""
    pairs: list[dict[str, Any]] = []
    for x, y in itertools.combinations(names, 2):
        p_raw, p_adj = pair_p.get((x, y)) or pair_p[(y, x)]
        a, b = groups[x], groups[y]
        g, delta = hedges_g(a, b), cliffs_delta(a, b)
        kind = "hedges_g" if normal else "cliffs_delta"
        pairs.append(
            {"a": x, "b": y, "test": pair_test, "p_value": p_raw, "p_adjusted": p_adj,
             "significant": bool(p_adj < alpha), "median_a": medians[x],
             "median_b": medians[y], "diff_pct": pct_diff(medians[x], medians[y]),
             "hedges_g": g, "cliffs_delta": delta, "effect_size_kind": kind,
             "effect_size": g if normal else delta}
        )  # fmt: skip
    return pairs


# Below this many scopes, starting worker processes costs more than it saves.
PARALLEL_MIN_SCOPES = 60


def _compare_chunk(chunk: list[dict[str, np.ndarray]], alpha: float) -> list[ScopeComparison]:
    return [compare_groups(groups, alpha) for groups in chunk]


def map_comparisons(
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


def compare_scopes(
    done: pd.DataFrame,
    measured: list[str],
    alpha: float,
    notes: list[AnalysisError],
    workers: int | None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Test every scope of every measured variable at ``alpha``: the tests, assumptions and
    post-hoc tables.  Scopes that cannot be tested become notes."""
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
    for key, comparison in zip(keys, map_comparisons(tasks, alpha, workers), strict=True):
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
        table(test_rows, TEST_COLUMNS),
        table(assumption_rows, ASSUMPTION_COLUMNS),
        table(pair_rows, POSTHOC_COLUMNS),
    )


def twoway(done: pd.DataFrame, measured: list[str]) -> pd.DataFrame:
    """Per model and factor: two-way ANOVA configuration x factor (type II sums of squares),
    where every cell has at least two units."""
    import pingouin as pg

    rows: list[dict[str, Any]] = []
    factor_values = [json_factors(key) for key in done["factor_key"]]
    names = sorted({name for levels in factor_values for name in levels})
    if not names:
        return table(rows, TWOWAY_COLUMNS)
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
                    anova = pg.anova(data=data, dv=variable, between=["configuration", column])
                for r in anova.to_dict(orient="records"):
                    rows.append(
                        {"variable": variable, "model": model, "factor": name,
                         "source": str(r["Source"]).replace("factor:", ""),
                         "ss": r.get("SS"), "df": r.get("DF"), "ms": r.get("MS"),
                         "f": r.get("F"), "p_value": r.get("p_unc"), "np2": r.get("np2")}
                    )  # fmt: skip
    return table(rows, TWOWAY_COLUMNS)
