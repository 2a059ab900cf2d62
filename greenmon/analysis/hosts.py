"""The host as a block: comparing configurations within hosts when a campaign ran on many.

A campaign sharded over machines (greenmon/campaign.py) has units from several hosts.
Hosts differ (CPU, GPU, driver, cooling), so a unit on one host is no replicate of a
unit on another: pooling them adds the host difference to every configuration's spread,
and a configuration run mostly on the faster host looks better than it is.

Method (chosen for few hosts and skewed energy distributions):
- *within-host test*: for each (variable, model, factor levels) scope, Kruskal-Wallis
  across configurations on each host separately, the per-host p-values combined by
  Stouffer's method weighted by the square root of each host's units (Stouffer et al.
  1949; weights as Whitlock 2005, J. Evol. Biol. 18:1368).  No unit is ever compared with
  a unit from another host.  A linear mixed model with the host as a random effect
  (statsmodels MixedLM) was not chosen: a campaign has 2-10 hosts, too few to estimate a
  variance component, and it assumes normal residuals, which the study's energy data
  often are not (its own tests fall back to ranks).
- *consensus ranking*: configurations ranked by median within each host, then by their
  mean rank over the hosts that ran them (ties: the geometric mean of host-normalised
  medians).
- *host effect*: per configuration, each host's median over the reference host's (the
  first by name); the median of those ratios over configurations is the host effect, and
  Kruskal-Wallis across hosts within each configuration, Stouffer-combined, its test.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from greenmon.analysis.data import VARIABLES_BY_COLUMN, AnalysisError, factor_label

METHOD_CITATION = (
    "Kruskal-Wallis within each host, p-values combined by Stouffer's method weighted by "
    "the square root of each host's units (Stouffer et al. 1949; Whitlock 2005, J. Evol. "
    "Biol. 18:1368); configurations ranked by their mean within-host rank"
)

HOST_MEDIAN_COLUMNS = [
    "variable", "model", "factor_key", "configuration", "host", "n", "median",
]  # fmt: skip
HOST_TEST_COLUMNS = [
    "variable", "model", "factor_key", "hosts", "configurations", "test", "statistic",
    "p_value", "significant", "ranking",
]  # fmt: skip
HOST_EFFECT_COLUMNS = [
    "variable", "model", "factor_key", "host", "reference", "configurations", "ratio",
    "ratio_min", "ratio_max", "statistic", "p_value", "significant", "sentence",
]  # fmt: skip

# Columns of the results frame that describe a unit's host (greenmon/analysis/data.py).
HOST_HARDWARE = {
    "host_cpu_model": "CPU model",
    "host_gpu_model": "GPU",
    "host_gpu_driver": "GPU driver",
}


class MultipleHostsNote(AnalysisError):
    title = "Units ran on several hosts"


class HardwareDiffersNote(AnalysisError):
    title = "Hosts differ in hardware"


class SingleHostConfigurationNote(AnalysisError):
    title = "Configuration ran on one host only"


def hosts_of(done: pd.DataFrame) -> list[str]:
    if "host" not in done.columns:
        return []
    return sorted(str(h) for h in done["host"].dropna().unique())


def _stouffer(p_values: list[float], weights: list[float]) -> tuple[float, float]:
    """(combined z, one-sided p) of independent p-values."""
    from scipy import stats

    clipped = [min(max(p, 1e-300), 1 - 1e-16) for p in p_values]
    result = stats.combine_pvalues(clipped, method="stouffer", weights=weights)
    return float(result.statistic), float(result.pvalue)


def _kruskal(groups: list[np.ndarray]) -> float | None:
    """Kruskal-Wallis p over groups with two or more values; None when not testable."""
    from scipy import stats

    usable = [g for g in groups if len(g) >= 2]
    if len(usable) < 2:
        return None
    if len(np.unique(np.concatenate(usable))) < 2:
        return 1.0
    return float(stats.kruskal(*usable).pvalue)


def host_analysis(
    done: pd.DataFrame, measured: list[str], alpha: float, notes: list[AnalysisError]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(host_medians, host_tests, host_effects); empty frames for a one-host experiment.
    Appends the notes a person must read when hosts are mixed."""
    hosts = hosts_of(done)
    empty = (
        pd.DataFrame(columns=HOST_MEDIAN_COLUMNS),
        pd.DataFrame(columns=HOST_TEST_COLUMNS),
        pd.DataFrame(columns=HOST_EFFECT_COLUMNS),
    )
    if len(hosts) < 2:
        return empty
    medians: list[dict[str, Any]] = []
    tests: list[dict[str, Any]] = []
    effects: list[dict[str, Any]] = []
    for variable in measured:
        for (model, key), scope in done.groupby(["model", "factor_key"], sort=True):
            data = scope[["configuration", "host", variable]].dropna()
            if data.empty:
                continue
            cells = data.groupby(["configuration", "host"])[variable]
            for (configuration, host), values in cells:
                medians.append({"variable": variable, "model": model, "factor_key": key,
                                "configuration": configuration, "host": host,
                                "n": len(values), "median": float(values.median())})  # fmt: skip
            tests.append(_within_hosts(data, variable, str(model), str(key), alpha))
            effects += _host_effects(data, variable, str(model), str(key), alpha)
    host_medians = pd.DataFrame(medians, columns=HOST_MEDIAN_COLUMNS)
    host_tests = pd.DataFrame(tests, columns=HOST_TEST_COLUMNS)
    host_effects = pd.DataFrame(effects, columns=HOST_EFFECT_COLUMNS)
    notes += _notes(done, hosts, host_effects, measured)
    return host_medians, host_tests, host_effects


def _within_hosts(
    data: pd.DataFrame, variable: str, model: str, key: str, alpha: float
) -> dict[str, Any]:
    p_values: list[float] = []
    weights: list[float] = []
    ranks: dict[str, list[float]] = {}
    normalised: dict[str, list[float]] = {}
    for _host, rows in data.groupby("host"):
        by_config = {c: v[variable].to_numpy(float) for c, v in rows.groupby("configuration")}
        p = _kruskal(list(by_config.values()))
        if p is not None:
            p_values.append(p)
            weights.append(math.sqrt(len(rows)))
        host_medians = pd.Series({c: float(np.median(v)) for c, v in by_config.items()})
        scale = float(host_medians.median()) or 1.0
        for configuration, rank in host_medians.rank(method="average").items():
            ranks.setdefault(str(configuration), []).append(float(rank))
            value = float(host_medians[configuration]) / scale
            normalised.setdefault(str(configuration), []).append(max(value, 1e-300))
    order = sorted(
        ranks,
        key=lambda c: (float(np.mean(ranks[c])), float(np.exp(np.mean(np.log(normalised[c]))))),
    )
    statistic, p_value = _stouffer(p_values, weights) if p_values else (math.nan, math.nan)
    return {
        "variable": variable, "model": model, "factor_key": key,
        "hosts": int(data["host"].nunique()), "configurations": len(ranks),
        "test": "Kruskal-Wallis within hosts, Stouffer-combined",
        "statistic": statistic, "p_value": p_value,
        "significant": bool(p_value < alpha) if p_values else None,
        "ranking": " < ".join(order),
    }  # fmt: skip


def _host_effects(
    data: pd.DataFrame, variable: str, model: str, key: str, alpha: float
) -> list[dict[str, Any]]:
    hosts = sorted(str(h) for h in data["host"].unique())
    reference = hosts[0]
    rows: list[dict[str, Any]] = []
    # the host test: across hosts, within each configuration run on two or more
    p_values: list[float] = []
    weights: list[float] = []
    for _configuration, cell in data.groupby("configuration"):
        groups = [g[variable].to_numpy(float) for _, g in cell.groupby("host")]
        p = _kruskal(groups)
        if p is not None:
            p_values.append(p)
            weights.append(math.sqrt(len(cell)))
    statistic, p_value = _stouffer(p_values, weights) if p_values else (math.nan, math.nan)
    medians = data.groupby(["configuration", "host"])[variable].median().unstack("host")
    info = VARIABLES_BY_COLUMN.get(variable)
    noun = info.noun if info else variable
    for host in hosts[1:]:
        both = medians[[reference, host]].dropna()
        both = both[both[reference] != 0]
        if both.empty:
            continue
        ratios = (both[host] / both[reference]).to_numpy(float)
        ratio = float(np.median(ratios))
        change = (ratio - 1) * 100
        where = f"{model}" + (f", {factor_label(key)}" if key else "")
        sentence = (
            f"{where}: on host {host}, {noun} medians are {ratio:.2f} times host "
            f"{reference}'s ({abs(change):.0f}% {'less' if change < 0 else 'more'}; "
            f"{ratios.min():.2f} to {ratios.max():.2f} over {len(ratios)} configurations"
            + (f"; p = {p_value:.2g}" if p_values else "")
            + ")."
        )
        rows.append({
            "variable": variable, "model": model, "factor_key": key, "host": host,
            "reference": reference, "configurations": len(ratios), "ratio": ratio,
            "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()),
            "statistic": statistic, "p_value": p_value,
            "significant": bool(p_value < alpha) if p_values else None, "sentence": sentence,
        })  # fmt: skip
    return rows


def _notes(
    done: pd.DataFrame, hosts: list[str], effects: pd.DataFrame, measured: list[str]
) -> list[AnalysisError]:
    counts = done["host"].value_counts()
    notes: list[AnalysisError] = []
    headline = ""
    if len(effects) and measured:
        first = effects[effects["variable"] == measured[0]]
        if len(first):
            headline = " Host effect: " + " ".join(str(s) for s in first["sentence"][:3])
    notes.append(
        MultipleHostsNote(
            f"This campaign's units ran on {len(hosts)} hosts ("
            + ", ".join(f"{h}: {int(counts.get(h, 0))} units" for h in hosts)
            + "). Configurations are also compared within each host ("
            + METHOD_CITATION
            + "); per-host medians are in analysis_host_medians, the within-host tests in "
            "analysis_host_tests and the host effect in analysis_host_effects. The pooled "
            "tests above treat the hosts as one population." + headline
        )
    )
    per_host = done.groupby("host")
    differences: list[str] = []
    for column, label in HOST_HARDWARE.items():
        if column not in done.columns:
            continue
        values = per_host[column].agg(lambda s: ", ".join(sorted({str(v) for v in s.dropna()})))
        if values.nunique() > 1:
            differences.append(
                f"{label}: " + "; ".join(f"{h} {v or 'none'}" for h, v in values.items())
            )
    if differences:
        notes.append(
            HardwareDiffersNote(
                "The hosts' hardware differs (" + " | ".join(differences) + "), so the host "
                "effect is partly a hardware effect; compare configurations within hosts, "
                "and prefer shards on identical nodes (a SLURM partition or --constraint)."
            )
        )
    single = (
        done.groupby(["model", "factor_key", "configuration"])["host"].nunique().reset_index()
    )
    single = single[single["host"] == 1]
    if len(single):
        listed = sorted(
            {f"{r.configuration} ({r.model}{', ' + factor_label(str(r.factor_key)) if r.factor_key else ''})"  # noqa: E501
             for r in single.itertuples()}
        )  # fmt: skip
        notes.append(
            SingleHostConfigurationNote(
                f"{len(listed)} configuration scopes ran on one host only: "
                + "; ".join(listed[:6])
                + ". Their comparison with configurations on other hosts mixes the host "
                "effect into the configuration effect; run more shards so each "
                "configuration reaches every host (greenmon's shards spread every "
                "configuration when it has at least as many units as there are shards)."
            )
        )
    return notes
