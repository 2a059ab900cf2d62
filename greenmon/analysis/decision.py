"""What a reader decides from an experiment: the least-energy configuration, the
energy/latency trade-off, and what the energy costs in carbon and money.

Works on the normalised per-unit frame (greenmon/analysis/data.py) and the analysis's
post-hoc table, so every figure here can be tested from a synthetic frame.

Terms:
- *scope*: one model at one set of factor levels (a load level is a factor level).
- *answer*: in one scope, the configuration with the lowest median energy, against the next
  best and against the reference engine (torch), with a bootstrap 95% interval of each
  median and the post-hoc test's adjusted p-value for the pair.
- *comparable as a percentage*: both medians positive and the baseline not near zero
  (``NEAR_ZERO_SHARE`` of the scope's largest median); otherwise a difference is given in
  the variable's units, with the reason, since a share of almost nothing (an estimate whose
  baseline equals its measure) or of a quantity that changes sign reads as nonsense.
- *front*: the Pareto-optimal configurations of a scope: none other is at least as good on
  energy per token, latency p90 and (where scored) quality, and better on one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from greenmon.analysis.data import VARIABLES_BY_COLUMN

REFERENCE_ENGINE = "torch"
# A baseline under this share of the largest median in its scope is "near zero".
NEAR_ZERO_SHARE = 0.01
BOOTSTRAP_RESAMPLES = 2000
# A change of this many percent or more is given in units: "3100% more" is a ratio a reader
# cannot use (and usually a baseline that is almost nothing).
MAX_CHANGE_PCT = 1000.0
ENERGY_PREFERENCE = ("energy_global_j", "energy_wall_j", "energy_cpu_j", "energy_gpu_j")

ANSWER_COLUMNS = [
    "model", "factor_key", "variable", "unit", "best", "n", "best_median", "best_low",
    "best_high", "next", "next_median", "next_diff", "next_pct", "next_p",
    "reference", "reference_median", "reference_diff", "reference_pct", "reference_p",
    "percent_note",
]  # fmt: skip
FRONT_COLUMNS = [
    "model", "factor_key", "configuration", "n", "energy_variable", "energy", "latency_p90_s",
    "latency_source", "quality", "pareto",
]  # fmt: skip


def energy_variable(variables: list[str]) -> str | None:
    """The energy the answer is about: global (CPU+GPU) when measured, else the widest."""
    for column in ENERGY_PREFERENCE:
        if column in variables:
            return column
    return None


def median_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """A bootstrap 95% percentile interval of the median (seeded: the same data gives the
    same interval in the report and in ``analyze --json``)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        value = float(values[0]) if len(values) else float("nan")
        return value, value
    rng = np.random.default_rng(seed)
    samples = rng.choice(values, size=(BOOTSTRAP_RESAMPLES, len(values)), replace=True)
    medians = np.median(samples, axis=1)
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


def comparable(value: float, baseline: float, scale: float) -> bool:
    """Whether ``value`` against ``baseline`` may be written as a percentage (see Terms)."""
    return value > 0 and baseline > 0 and baseline >= NEAR_ZERO_SHARE * scale


def saving_pct(value: float, baseline: float) -> float:
    """How much less ``value`` is than ``baseline``, as a percentage of the baseline."""
    return (baseline - value) / baseline * 100.0


def change_pct(value: float, baseline: float, scale: float) -> float | None:
    """``value`` against ``baseline`` as a percentage change (positive: more), or None where
    a percentage would mislead: not ``comparable`` (a baseline near zero, a sign change) or
    a change of MAX_CHANGE_PCT or more."""
    if not (math.isfinite(value) and math.isfinite(baseline) and math.isfinite(scale)):
        return None
    if not comparable(value, baseline, scale):
        return None
    pct = (value - baseline) / baseline * 100.0
    return pct if abs(pct) < MAX_CHANGE_PCT else None


def change_text(value: float | None, baseline: float | None, scale: float, unit: str) -> str:
    """A table's change cell: "+12.3%", or in the variable's units ("+4.56 J") where a
    percentage would mislead; empty when either figure is missing."""
    if value is None or baseline is None or value != value or baseline != baseline:
        return ""
    pct = change_pct(value, baseline, scale)
    if pct is not None:
        return f"{pct:+.1f}%"
    return f"{value - baseline:+.4g} {unit}".rstrip()


def change_phrase(value: float, baseline: float, scale: float, unit: str) -> str:
    """A sentence's change: "12.3% less", or "4.56 J more" where a percentage would mislead."""
    pct = change_pct(value, baseline, scale)
    word = "less" if value < baseline else "more"
    if pct is not None:
        return f"{abs(pct):.1f}% {word}"
    return f"{abs(value - baseline):.4g} {unit} {word}".replace("  ", " ")


def _pair_p(posthoc: pd.DataFrame, variable: str, model: str, factors: str, a: str,
            b: str) -> float | None:  # fmt: skip
    if posthoc.empty:
        return None
    part = posthoc[(posthoc["variable"] == variable) & (posthoc["model"] == model)
                   & (posthoc["factor_key"] == factors)]  # fmt: skip
    hit = part[((part["a"] == a) & (part["b"] == b)) | ((part["a"] == b) & (part["b"] == a))]
    if hit.empty or pd.isna(hit["p_adjusted"].iloc[0]):
        return None
    return float(hit["p_adjusted"].iloc[0])


def answers(done: pd.DataFrame, posthoc: pd.DataFrame, variable: str) -> pd.DataFrame:
    """Per scope: the least-energy configuration against the next best and the reference."""
    info = VARIABLES_BY_COLUMN[variable]
    rows: list[dict[str, Any]] = []
    for (model, factors), part in done.groupby(["model", "factor_key"], sort=True):
        groups = {c: g[variable].dropna().to_numpy(dtype=float)
                  for c, g in part.groupby("configuration")}  # fmt: skip
        medians = {c: float(np.median(v)) for c, v in groups.items() if len(v)}
        if not medians:
            continue
        ranked = sorted(medians, key=lambda c: (medians[c], c))
        best = ranked[0]
        low, high = median_interval(groups[best])
        scale = max(abs(m) for m in medians.values())
        row: dict[str, Any] = {
            "model": model, "factor_key": factors, "variable": variable, "unit": info.unit,
            "best": best, "n": len(groups[best]), "best_median": medians[best],
            "best_low": low, "best_high": high, "percent_note": None,
        }  # fmt: skip
        references = [c for c in ranked[1:] if c.partition("/")[0] == REFERENCE_ENGINE]
        for key, other in (("next", ranked[1] if len(ranked) > 1 else None),
                           ("reference", references[0] if references else None)):  # fmt: skip
            row[key] = other
            if other is None:
                row.update({f"{key}_median": None, f"{key}_diff": None, f"{key}_pct": None,
                            f"{key}_p": None})  # fmt: skip
                continue
            row[f"{key}_median"] = medians[other]
            row[f"{key}_diff"] = medians[other] - medians[best]
            if comparable(medians[best], medians[other], scale):
                row[f"{key}_pct"] = saving_pct(medians[best], medians[other])
            else:
                row[f"{key}_pct"] = None
                row["percent_note"] = (
                    "given in " + info.unit + ", not as a percentage: the baseline is near "
                    "zero or the medians change sign"
                )
            row[f"{key}_p"] = _pair_p(posthoc, variable, model, factors, best, other)
        rows.append(row)
    return pd.DataFrame(rows, columns=ANSWER_COLUMNS)


def _per_output(done: pd.DataFrame) -> tuple[pd.Series, str]:
    """Energy per token when tokens were counted, else per request (one inference)."""
    if done["j_per_token"].notna().any():
        return done["j_per_token"].astype(float), "j_per_token"
    per_request = pd.to_numeric(done.get("j_per_request"), errors="coerce")
    if per_request is not None and per_request.notna().any():
        return per_request.astype(float), "j_per_request"
    return done["energy_global_j"].astype(float), "energy_global_j"


def front(done: pd.DataFrame) -> pd.DataFrame:
    """Per scope and configuration: median energy per token (or per request), median latency
    p90 and median quality, with the Pareto-optimal configurations marked."""
    energy, energy_name = _per_output(done)
    latency = pd.to_numeric(done["latency_p90_s"], errors="coerce")
    source = "request latency p90"
    if not latency.notna().any():
        # No request timings: the time of one inference, a unit's duration over its requests
        requests = pd.to_numeric(done["requests"], errors="coerce").replace(0, np.nan)
        latency = done["duration_s"].astype(float) / requests
        source = "mean time per request"
    frame = done.assign(_energy=energy, _latency=latency)
    rows: list[dict[str, Any]] = []
    for (model, factors, config), part in frame.groupby(
        ["model", "factor_key", "configuration"], sort=True
    ):
        quality = part["quality"].dropna() if "quality" in part else pd.Series(dtype=float)
        rows.append(
            {"model": model, "factor_key": factors, "configuration": config, "n": len(part),
             "energy_variable": energy_name, "energy": _median(part["_energy"]),
             "latency_p90_s": _median(part["_latency"]), "latency_source": source,
             "quality": float(quality.median()) if len(quality) else None, "pareto": False}
        )  # fmt: skip
    out = pd.DataFrame(rows, columns=FRONT_COLUMNS)
    for _, part in out.groupby(["model", "factor_key"], sort=False):
        for index in part.index:
            out.loc[index, "pareto"] = not any(
                _dominates(part.loc[other], part.loc[index]) for other in part.index
                if other != index
            )  # fmt: skip
    return out


def _median(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.median()) if len(values) else None


def _dominates(a: pd.Series, b: pd.Series) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every criterion and better on one
    (energy and latency lower, quality higher); an unmeasured criterion is not compared."""
    pairs = [(a["energy"], b["energy"], 1.0), (a["latency_p90_s"], b["latency_p90_s"], 1.0),
             (a["quality"], b["quality"], -1.0)]  # fmt: skip
    known = [(x * s, y * s) for x, y, s in pairs if _number(x) and _number(y)]
    if not known:
        return False
    return all(x <= y for x, y in known) and any(x < y for x, y in known)


def _number(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


@dataclass(frozen=True)
class Choice:
    """What ``recommend`` found in one scope: the row chosen, or why none fits."""

    model: str
    factor_key: str
    row: dict[str, Any] | None
    candidates: int
    reason: str | None = None


def recommend(
    table: pd.DataFrame, max_p90_s: float | None = None, min_quality: float | None = None
) -> list[Choice]:
    """Per scope, the least-energy configuration whose latency p90 is at most ``max_p90_s``
    and whose quality is at least ``min_quality`` (a constraint left None is not applied)."""
    choices: list[Choice] = []
    for (model, factors), part in table.groupby(["model", "factor_key"], sort=True):
        fits = part[part["energy"].notna()]
        if max_p90_s is not None:
            fits = fits[fits["latency_p90_s"].notna() & (fits["latency_p90_s"] <= max_p90_s)]
        if min_quality is not None:
            fits = fits[fits["quality"].notna() & (fits["quality"] >= min_quality)]
        if fits.empty:
            best_latency = part["latency_p90_s"].min()
            best_quality = part["quality"].max() if part["quality"].notna().any() else None
            reason = (
                f"no configuration satisfies it: the lowest latency p90 is "
                f"{best_latency:.4g} s"
                + ("" if best_quality is None else f" and the best quality {best_quality:.3g}")
            )
            choices.append(Choice(str(model), str(factors), None, len(part), reason))
            continue
        row = fits.sort_values(["energy", "configuration"]).iloc[0].to_dict()
        choices.append(Choice(str(model), str(factors), row, len(part)))
    return choices
