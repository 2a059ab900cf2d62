"""Summaries of one experiment: medians, savings, the findings, time and quality trade-offs.

Terms:
- *saving*: ``(median_versus - median) / median_versus`` in %, per model; the range over
  models is the study's "from 37.99% up to 89.16%".
- *finding*: per variable and factor levels, the configuration with the best median over
  per-model medians against its reference (the baseline engine), with the figures its
  sentence states (greenmon/analysis/sentences.py writes the words).
- *verdict*: a configuration's energy change weighed with its quality change.

Significance here is read from the tests' adjusted p-values at the analysis's alpha
(greenmon/analysis/hypothesis.py); nothing in this module has a level of its own.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from greenmon.analysis import sentences
from greenmon.analysis.data import VARIABLES_BY_COLUMN, Variable, factor_label
from greenmon.analysis.decision import change_phrase
from greenmon.analysis.sentences import Finding

# Configurations compared against by default in sentences: the study's baseline engine.
REFERENCE_ENGINE = "torch"

# Column order of every result table (experiment_id is prepended when stored).
MEDIAN_COLUMNS = [
    "variable", "scope", "model", "size_category", "factor_key", "configuration", "engine",
    "provider", "n", "median", "mean", "std", "q1", "q3", "min", "max",
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
TRADEOFF_COLUMNS = [
    "model", "configuration", "factor", "level", "reference", "n", "energy_variable",
    "median_energy_j", "median_duration_s", "energy_change_pct", "duration_change_pct",
    "sentence", "reference_energy_j", "reference_duration_s",
]  # fmt: skip
QUALITY_COLUMNS = [
    "model", "factor_key", "comparison", "configuration", "level", "versus", "n",
    "quality_metric", "median_energy_j", "median_quality", "correct_share", "j_per_correct",
    "energy_change_pct", "quality_change", "verdict", "sentence", "versus_energy_j",
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


def table(rows: Iterable[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame with exactly ``columns``, in that order (empty rows too)."""
    return pd.DataFrame(list(rows), columns=columns)


def pct_diff(value: float, versus: float) -> float | None:
    """``value`` relative to ``versus`` in % (negative: lower); None when versus is 0."""
    if versus == 0 or not np.isfinite(versus) or not np.isfinite(value):
        return None
    return (value - versus) / abs(versus) * 100.0


def json_factors(key: str) -> dict[str, Any]:
    """A unit's factor levels from its ``factor_key`` (JSON; empty: no factors)."""
    return dict(json.loads(key)) if key else {}


def level_sort_key(level: str) -> tuple[int, Any]:
    """Factor levels (JSON text) in order: numbers by value, then text."""
    value = json.loads(level)
    if isinstance(value, int | float):
        return (0, value)
    return (1, str(value))


def median_table(done: pd.DataFrame, measured: list[str]) -> pd.DataFrame:
    """Per variable: median, mean, spread and quartiles per configuration, per model and
    per size category (the ``scope`` column)."""
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


def savings_table(medians: pd.DataFrame, posthoc: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per model, every ordered pair of configurations: the saving of one against the other
    and the pair's adjusted p-value, significant at ``alpha``."""
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
            saving = pct_diff(meds[config], meds[versus])
            p = significance.get((variable, model, factors, config, versus))
            rows.append(
                {"variable": variable, "model": model, "factor_key": factors,
                 "configuration": config, "versus": versus, "median": meds[config],
                 "median_versus": meds[versus],
                 "saving_pct": None if saving is None else -saving, "p_adjusted": p,
                 "significant": None if p is None else bool(p < alpha)}
            )  # fmt: skip
    return table(rows, SAVING_COLUMNS)


def range_text(low: float, high: float) -> str:
    """The study's phrasing of a range of savings over models."""
    if np.isclose(low, high):
        return f"{low:.2f}%"
    return f"from {low:.2f}% up to {high:.2f}%"


def savings_range_table(savings: pd.DataFrame) -> pd.DataFrame:
    """Per configuration pair: the range of savings over models, and in how many models
    the saving was positive and significant (as ``savings_table`` marked it)."""
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
    return table(rows, SAVING_RANGE_COLUMNS)


def summary_table(
    done: pd.DataFrame,
    measured: list[str],
    medians: pd.DataFrame,
    tests: pd.DataFrame,
    posthoc: pd.DataFrame,
    savings: pd.DataFrame,
    savings_range: pd.DataFrame,
    alpha: float,
) -> pd.DataFrame:
    """Per variable and factor levels: the best configuration against its reference, how
    many models were tested and differed at ``alpha``, and the finding in words."""
    rows: list[dict[str, Any]] = []
    for variable in measured:
        var = VARIABLES_BY_COLUMN[variable]
        for factors in sorted(done["factor_key"].unique()):
            in_scope = done[(done["factor_key"] == factors) & done[variable].notna()]
            models = sorted(in_scope["model"].unique())
            if not models:
                continue
            t = tests[(tests["variable"] == variable) & (tests["factor_key"] == factors)]
            rows.append(
                _summary_row(
                    var, variable, factors, len(models), t, medians, posthoc, savings,
                    savings_range, alpha,
                )
            )  # fmt: skip
    return table(rows, SUMMARY_COLUMNS)


def _summary_row(
    var: Variable,
    variable: str,
    factors: str,
    n_models: int,
    t: pd.DataFrame,
    medians: pd.DataFrame,
    posthoc: pd.DataFrame,
    savings: pd.DataFrame,
    savings_range: pd.DataFrame,
    alpha: float,
) -> dict[str, Any]:
    """summary_table's row for one variable at one set of factor levels (``t``: its tests)."""
    row: dict[str, Any] = {
        "variable": variable, "factor_key": factors, "models": n_models,
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
        row["sentence"] = sentences.only_one_sentence(
            str(ranking.index[0]), var.noun, float(ranking.iloc[0]), var.unit, where
        )
        return row
    best = str(ranking.index[0])
    reference = reference_for(best, list(ranking.index))
    row.update(best=best, reference=reference)
    if len(t):
        row["models_sentence"] = sentences.models_sentence(
            int(t["all_pairs_differ"].sum()), len(t), n_models
        )
    if var.higher_is_better:
        row["sentence"] = sentences.better_sentence(
            var.noun, best, reference, float(ranking[best]), float(ranking[reference]),
            where, tied=len(ranking) if ranking.iloc[0] == ranking.iloc[-1] else 0,
        )  # fmt: skip
        return row
    finding = find(
        variable, factors, var.noun, where, best, reference, n_models, alpha,
        savings, savings_range, posthoc,
    )  # fmt: skip
    row["sentence"] = sentences.finding_sentence(finding)
    figures = {"saving_pct": finding.saving_pct, "p_value": finding.p_value,
               "effect_size": finding.effect_size}  # fmt: skip
    row.update({name: value for name, value in figures.items() if value is not None})
    if finding.p_values:
        row["effect_size_kind"] = finding.effect_kind
    return row


def find(
    variable: str,
    factors: str,
    noun: str,
    where: str,
    best: str,
    reference: str,
    models: int,
    alpha: float,
    savings: pd.DataFrame,
    savings_range: pd.DataFrame,
    posthoc: pd.DataFrame,
) -> Finding:
    """The figures of one finding, read from the savings, their range and the pairs."""
    pairs = posthoc[
        (posthoc["variable"] == variable) & (posthoc["factor_key"] == factors)
        & (((posthoc["a"] == best) & (posthoc["b"] == reference))
           | ((posthoc["a"] == reference) & (posthoc["b"] == best)))
    ]  # fmt: skip
    # Orient effects as reference-versus-best: positive means the reference used more.
    sign = np.where(pairs["a"] == reference, 1.0, -1.0)
    if models == 1 and len(pairs) and pairs["effect_size_kind"].iloc[0] == "hedges_g":
        kind, effects = "Hedges' g", pairs["hedges_g"].to_numpy(dtype=float) * sign
    else:
        # Across models the routes differ; Cliff's delta is on one scale for all of them.
        kind, effects = "Cliff's delta", pairs["cliffs_delta"].to_numpy(dtype=float) * sign
    base = Finding(noun=noun, where=where, best=best, reference=reference, models=models,
                   alpha=alpha)  # fmt: skip
    tested = replace(
        base, p_values=tuple(float(p) for p in pairs["p_adjusted"]), effect_kind=kind,
        effects=tuple(float(e) for e in effects),
    )  # fmt: skip
    if models == 1:
        s = savings[
            (savings["variable"] == variable) & (savings["factor_key"] == factors)
            & (savings["configuration"] == best) & (savings["versus"] == reference)
        ]  # fmt: skip
        pct = float(s["saving_pct"].iloc[0]) if len(s) and s["saving_pct"].notna().all() else None
        return replace(tested, saving_pct=pct)
    r = savings_range[
        (savings_range["variable"] == variable) & (savings_range["factor_key"] == factors)
        & (savings_range["configuration"] == best) & (savings_range["versus"] == reference)
    ]  # fmt: skip
    if r.empty:
        return base  # no saving computable: the sentence names the best only
    r0 = r.iloc[0]
    return replace(
        tested, saving_pct=float(r0["median_saving_pct"]), range_text=str(r0["range_text"]),
        range_models=int(r0["models"]),
    )  # fmt: skip


def reference_for(best: str, ranked: list[str]) -> str:
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


def largest(values: Iterable[Any]) -> float:
    """The largest magnitude among ``values``, missing ones left out (0 when none)."""
    finite = [abs(float(v)) for v in values if v is not None and np.isfinite(float(v))]
    return max(finite, default=0.0)


def median_scale(done: pd.DataFrame, column: str) -> float:
    """The largest median of ``column`` over (model, configuration, factor levels): the
    scope a baseline is near zero against (decision.comparable); for the quality table,
    its largest median energy."""
    medians = done.groupby(["model", "configuration", "factor_key"])[column].median()
    largest = medians.abs().max()
    return float(largest) if largest == largest else 0.0


def tradeoff_table(done: pd.DataFrame, measured: list[str]) -> pd.DataFrame:
    """Per model, configuration and varied factor: median energy and time at each level,
    and their change against the first level (the DVFS study's question: how much slower
    for how much less energy).  Only factors that vary while the others stay fixed."""
    energy = next((v for v in ("energy_global_j", "energy_wall_j") if v in measured), None)
    if energy is None or "duration_s" not in measured:
        return table([], TRADEOFF_COLUMNS)
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
            ordered = sorted(levels.groups, key=level_sort_key)
            medians = {
                level: (float(group[energy].median()), float(group["duration_s"].median()),
                        len(group))
                for level, group in levels
            }  # fmt: skip
            reference = ordered[0]
            ref_energy, ref_time, _ = medians[reference]
            for level in ordered:
                level_energy, level_time, n = medians[level]
                energy_pct = pct_diff(level_energy, ref_energy)
                time_pct = pct_diff(level_time, ref_time)
                sentence = None
                if level != reference and energy_pct is not None and time_pct is not None:
                    # written once the table's largest medians are known (below)
                    sentence = (name, level, reference, configuration, level_energy,
                                ref_energy, level_time, ref_time)  # fmt: skip
                rows.append(
                    {"model": model, "configuration": configuration, "factor": name,
                     "level": json.loads(level), "reference": json.loads(reference), "n": n,
                     "energy_variable": energy, "median_energy_j": level_energy,
                     "median_duration_s": level_time, "energy_change_pct": energy_pct,
                     "duration_change_pct": time_pct, "sentence": sentence,
                     "reference_energy_j": ref_energy, "reference_duration_s": ref_time}
                )  # fmt: skip
    # a baseline is near zero against the largest median of the table (as report.py reads it)
    energy_scale = largest(r["median_energy_j"] for r in rows)
    time_scale = largest(r["median_duration_s"] for r in rows)
    for row in rows:
        if row["sentence"] is not None:
            name, level, reference, configuration, e, e0, t, t0 = row["sentence"]
            row["sentence"] = sentences.tradeoff_sentence(
                name, level, reference, configuration,
                change_phrase(e, e0, energy_scale, "J"), change_phrase(t, t0, time_scale, "s"),
            )
    out = table(rows, TRADEOFF_COLUMNS)
    # levels may be numbers or strings; the table stores them as text
    out["level"] = out["level"].astype(str)
    out["reference"] = out["reference"].astype(str)
    return out


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


# -- quality beside energy -----------------------------------------------


def verdict(energy_change_pct: float | None, quality_change: float | None) -> str:
    """What a change against the reference means once quality is weighed with energy."""
    if energy_change_pct is None:
        return "unknown"
    lost_quality = quality_change is not None and quality_change < -QUALITY_TOLERANCE
    if energy_change_pct < 0:
        return "trade-off" if lost_quality else "win"
    return "worse" if lost_quality or quality_change is None else "costlier"


def quality_table(done: pd.DataFrame, measured: list[str]) -> pd.DataFrame:
    """Per model and factor levels: each configuration's median energy and quality against
    the reference configuration (the study's baseline engine), and, where a factor varies,
    each level against the first, with a verdict: a saving that loses more quality than
    QUALITY_TOLERANCE is a trade-off, not a win."""
    energy = next((v for v in ("energy_global_j", "energy_wall_j") if v in measured), None)
    if energy is None or "quality" not in measured:
        return table([], QUALITY_COLUMNS)
    scale = median_scale(done[done["quality"].notna()], energy)
    rows = (_quality_configuration_rows(done, energy, scale)
            + _quality_level_rows(done, energy, scale))  # fmt: skip
    return table(rows, QUALITY_COLUMNS)


def _quality_configuration_rows(
    done: pd.DataFrame, energy: str, scale: float
) -> list[dict[str, Any]]:
    """quality_table's rows comparing configurations, per model and factor levels."""
    rows: list[dict[str, Any]] = []
    for (model, factors), scope in done.groupby(["model", "factor_key"], sort=True):
        scope = scope[scope[energy].notna() & scope["quality"].notna()]
        groups = {
            str(c): _quality_figures(p, energy)
            for c, p in scope.groupby("configuration", sort=True)
        }
        if len(groups) >= 1:
            best = min(groups, key=lambda c: groups[c]["median_energy_j"])
            reference = reference_for(best, sorted(groups)) if len(groups) > 1 else best
            rows += _quality_rows(groups, reference,
                                  {"model": model, "factor_key": factors,
                                   "comparison": "configuration"},
                                  "{}" + (f" at {factor_label(str(factors))}" if factors
                                          else ""), scale)  # fmt: skip
    return rows


def _quality_level_rows(
    done: pd.DataFrame, energy: str, scale: float
) -> list[dict[str, Any]]:
    """quality_table's rows comparing the levels of each factor, all else held the same."""
    rows: list[dict[str, Any]] = []
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
            levels = {
                str(k): _quality_figures(g, energy) for k, g in part.groupby(f"factor:{name}")
            }
            if len(levels) < 2:
                continue
            reference = sorted(levels, key=level_sort_key)[0]
            rows += _quality_rows(levels, reference,
                                  {"model": model, "factor_key": str(part["factor_key"].iloc[0]),
                                   "comparison": f"factor:{name}",
                                   "configuration": configuration},
                                  f"{configuration} at {name} = " + "{}", scale)  # fmt: skip
    return rows


def _quality_figures(part: pd.DataFrame, energy: str) -> dict[str, Any]:
    """Median energy (column ``energy``) and quality figures of one group of units."""
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


def _quality_rows(
    groups: dict[str, dict[str, Any]], reference: str, base: dict[str, Any], noun: str,
    scale: float,
) -> list[dict[str, Any]]:
    """One row per group against ``reference``, with its verdict and sentence."""
    rows: list[dict[str, Any]] = []
    ref = groups[reference]
    for name, figures in groups.items():
        energy_pct = None if name == reference else pct_diff(
            figures["median_energy_j"], ref["median_energy_j"]
        )
        q_change = None if name == reference else (
            figures["median_quality"] - ref["median_quality"]
        )
        if np.isnan(figures["median_quality"]) or np.isnan(ref["median_quality"]):
            q_change = None
        row = {**base, **figures, "versus": reference, "energy_change_pct": energy_pct,
               "versus_energy_j": ref["median_energy_j"],
               "quality_change": q_change, "sentence": None,
               "verdict": "reference" if name == reference else verdict(energy_pct, q_change)}
        if base["comparison"] == "configuration":
            row["configuration"], row["level"] = name, None
        else:
            row["level"] = name
        if name != reference and energy_pct is not None:
            row["sentence"] = f"{base['model']}: " + sentences.quality_sentence(
                noun.format(name), noun.format(reference),
                change_phrase(figures["median_energy_j"], ref["median_energy_j"], scale, "J"),
                q_change,
                row["verdict"], QUALITY_TOLERANCE,
            )
        rows.append(row)
    return rows


def weigh_quality(summary: pd.DataFrame, quality: pd.DataFrame) -> pd.DataFrame:
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
            out.at[index, "sentence"] = sentences.trade_off_note(
                str(row["sentence"]), row["best"], str(row["reference"]), worst,
                QUALITY_TOLERANCE,
            )
    return out
