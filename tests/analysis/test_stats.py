"""Statistics on synthetic experiments with known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from greenmon.analysis.data import (
    ConstantVariableError,
    FailedUnitsExcludedError,
    MissingVariableError,
    NoResultsError,
    TooFewRepetitionsError,
)
from greenmon.analysis.stats import analyze_frame, compare_groups
from tests.support.synthetic import synthetic_results

SEPARATED = {"torch/cpu": 300.0, "onnx/cpu": 100.0, "openvino/cpu": 200.0}


def _one_model(**kwargs: object) -> pd.DataFrame:
    defaults: dict[str, object] = {"models": 1, "configurations": tuple(SEPARATED),
                                   "energy_j": SEPARATED, "relative_sd": 0.03, "seed": 3}
    defaults.update(kwargs)
    return synthetic_results(**defaults)  # type: ignore[arg-type]


def _tests(result: object, variable: str = "energy_global_j") -> pd.DataFrame:
    tests = result.tests  # type: ignore[attr-defined]
    return tests[tests["variable"] == variable]


def test_separated_configurations_differ_with_every_pair() -> None:
    result = analyze_frame(_one_model(), workers=1)
    row = _tests(result).iloc[0]
    assert row["normal"]
    assert row["test"] == "welch-anova"
    assert row["p_value"] < 1e-6 and row["significant"]
    assert row["effect_size_kind"] == "omega_squared" and row["effect_size"] > 0.9
    pairs = result.posthoc[result.posthoc["variable"] == "energy_global_j"]
    assert set(pairs["test"]) == {"games-howell"}
    assert pairs["significant"].all() and len(pairs) == 3
    summary = result.summary.set_index("variable").loc["energy_global_j"]
    assert summary["best"] == "onnx/cpu" and summary["reference"] == "torch/cpu"
    assert "<ONNX, CPU> used 67% less energy than <TORCH, CPU>; p < 0.001" in summary["sentence"]


def test_identical_distributions_do_not_differ() -> None:
    result = analyze_frame(_one_model(noise="identical", repetitions=12, seed=5), workers=1)
    row = _tests(result).iloc[0]
    assert not row["significant"]
    pairs = result.posthoc[result.posthoc["variable"] == "energy_global_j"]
    assert not pairs["significant"].any()
    sentence = result.summary.set_index("variable").loc["energy_global_j", "sentence"]
    assert "not significant" in sentence


def test_a_significant_difference_reads_as_one() -> None:
    result = analyze_frame(_one_model(repetitions=8), workers=1)
    sentence = result.summary.set_index("variable").loc["energy_global_j", "sentence"]
    assert "<ONNX, CPU> used 67% less energy than <TORCH, CPU>" in sentence
    assert "not significant" not in sentence


def test_skewed_groups_route_to_kruskal_and_dunn() -> None:
    result = analyze_frame(_one_model(noise="lognormal", repetitions=30, seed=1), workers=1)
    row = _tests(result).iloc[0]
    assert not row["normal"]
    assert row["test"] == "kruskal-wallis" and row["effect_size_kind"] == "epsilon_squared"
    pairs = result.posthoc[result.posthoc["variable"] == "energy_global_j"]
    assert set(pairs["test"]) == {"dunn-holm"}
    assert (pairs["p_adjusted"] >= pairs["p_value"] - 1e-15).all()
    assert set(pairs["effect_size_kind"]) == {"cliffs_delta"}


def test_welch_anova_matches_statsmodels() -> None:
    from statsmodels.stats.oneway import anova_oneway

    rng = np.random.default_rng(11)
    groups = {"a/cpu": rng.normal(10, 1, 12), "b/cpu": rng.normal(11, 3, 9),
              "c/cpu": rng.normal(10.5, 0.5, 15)}  # fmt: skip
    ours = compare_groups(groups).test
    assert ours["test"] == "welch-anova"
    theirs = anova_oneway([groups[k] for k in sorted(groups)], use_var="unequal")
    assert ours["statistic"] == pytest.approx(float(theirs.statistic), rel=1e-9)
    assert ours["p_value"] == pytest.approx(float(theirs.pvalue), rel=1e-9)
    assert ours["df2"] == pytest.approx(float(theirs.df[1]), rel=1e-9)


def test_two_groups_use_welch_t_or_mann_whitney() -> None:
    rng = np.random.default_rng(2)
    normal = compare_groups({"a/cpu": rng.normal(0, 1, 10), "b/cpu": rng.normal(5, 1, 10)})
    assert normal.test["test"] == "welch-t" and normal.test["effect_size_kind"] == "hedges_g"
    skewed = compare_groups({"a/cpu": rng.lognormal(0, 2, 40), "b/cpu": rng.lognormal(3, 2, 40)})
    assert skewed.test["test"] == "mann-whitney-u"
    assert skewed.pairs[0]["cliffs_delta"] < -0.5  # a tends to be smaller


def test_per_model_sentence_counts_models_where_all_pairs_differ() -> None:
    energy = {"torch/cpu": 100.0, "onnx/cpu": 100.0, "openvino/cpu": 300.0}
    frame = synthetic_results(models=3, configurations=tuple(energy), energy_j=energy,
                              relative_sd=0.02, seed=4)  # fmt: skip
    result = analyze_frame(frame, workers=1)
    summary = result.summary.set_index("variable").loc["energy_global_j"]
    # torch and onnx share a distribution, so no model has all three pairs differing.
    assert summary["models_all_pairs_differ"] == 0
    assert "No model shows all configurations differing" in summary["models_sentence"]
    rng = result.savings_range
    row = rng[(rng["variable"] == "energy_global_j") & (rng["configuration"] == "onnx/cpu")
              & (rng["versus"] == "openvino/cpu")].iloc[0]  # fmt: skip
    assert row["range_text"].startswith("from ") and row["models"] == 3
    assert 60 < row["min_saving_pct"] <= row["max_saving_pct"] < 72


def test_factor_levels_are_analysed_per_level_and_two_way() -> None:
    frame = _one_model(factors=({"batch_size": 1}, {"batch_size": 8}), repetitions=6)
    result = analyze_frame(frame, workers=1)
    levels = set(_tests(result)["factor_key"])
    assert levels == {'{"batch_size":1}', '{"batch_size":8}'}
    twoway = result.twoway[result.twoway["variable"] == "energy_global_j"]
    assert {"configuration", "batch_size"} <= set(twoway["source"])


def test_problems_are_notes_with_advice() -> None:
    frame = _one_model(repetitions=2)
    frame.loc[0, "status"] = "failed"
    frame["ram_percent"] = 42.0
    result = analyze_frame(frame, workers=1)
    kinds = {type(n) for n in result.notes}
    assert {TooFewRepetitionsError, FailedUnitsExcludedError, MissingVariableError} <= kinds
    few = next(n for n in result.notes if isinstance(n, TooFewRepetitionsError))
    assert "at least 3" in few.message
    assert result.units_analysed == len(frame) - 1 and result.tests.empty

    constant = _one_model(repetitions=4)
    constant["ram_percent"] = 42.0
    notes = analyze_frame(constant, workers=1).notes
    assert any(isinstance(n, ConstantVariableError) and "ram_percent" in n.message for n in notes)


def test_no_finished_unit_is_an_error() -> None:
    frame = _one_model(repetitions=3)
    frame["status"] = "failed"
    with pytest.raises(NoResultsError):
        analyze_frame(frame, workers=1)


def test_worker_processes_give_the_same_tables() -> None:
    frame = synthetic_results(models=2, repetitions=5, seed=9)
    serial = analyze_frame(frame, workers=1)
    parallel = analyze_frame(frame, workers=2)
    pd.testing.assert_frame_equal(serial.tests, parallel.tests)
    pd.testing.assert_frame_equal(serial.posthoc, parallel.posthoc)


def test_reconciliation_share() -> None:
    result = analyze_frame(_one_model(repetitions=3), workers=1)
    share = result.reconciliation["unaccounted_share"]
    # synthetic wall energy is components x 1.15
    assert share.to_numpy() == pytest.approx(np.full(len(share), 0.15 / 1.15))
    no_wall = analyze_frame(_one_model(repetitions=3, wall=False), workers=1)
    assert no_wall.reconciliation["unaccounted_share"].isna().all()


def test_energy_against_time_per_factor_level() -> None:
    frame = _one_model(factors=({"gpu_power_limit_w": 300}, {"gpu_power_limit_w": 150}),
                       repetitions=5, relative_sd=0.0)
    capped = frame["factors"].str.contains("150")
    # known truth: the lower limit halves energy and takes 25% longer
    frame.loc[capped, "energy_global_j"] *= 0.5
    frame.loc[capped, "duration_s"] *= 1.25
    result = analyze_frame(frame, workers=1)
    tradeoff = result.tradeoff
    rows = tradeoff[(tradeoff["configuration"] == "onnx/cpu") & (tradeoff["level"] == "300")]
    assert len(rows) == 1
    row = rows.iloc[0]
    # levels sort numerically: 150 is the reference, 300 uses twice the energy, 20% less time
    assert row["reference"] == "150"
    assert row["energy_change_pct"] == pytest.approx(100.0)
    assert row["duration_change_pct"] == pytest.approx(-20.0)
    assert "100.0% more energy" in row["sentence"] and "20.0% less time" in row["sentence"]


def _close_pair(models: int, seed: int) -> pd.DataFrame:
    """Two configurations 6% apart: with these seeds the pairs' p-values fall between
    0.01 and 0.05 (one model: p = 0.035; three models: 0.001, 0.033 and 0.005)."""
    return synthetic_results(models=models, configurations=("torch/cpu", "onnx/cpu"),
                             energy_j={"torch/cpu": 106.0, "onnx/cpu": 100.0},
                             relative_sd=0.05, repetitions=10, seed=seed)


def test_alpha_decides_significance_in_every_table_and_sentence() -> None:
    frame = _close_pair(models=1, seed=6)
    loose = analyze_frame(frame, variables=["energy_global_j"], workers=1)
    strict = analyze_frame(frame, alpha=0.01, variables=["energy_global_j"], workers=1)
    p = float(strict.posthoc["p_adjusted"].iloc[0])
    assert 0.01 < p < 0.05
    assert loose.tests["significant"].all() and loose.savings["significant"].all()
    assert "not significant" not in loose.summary["sentence"].iloc[0]
    assert not strict.tests["significant"].any()
    assert not strict.posthoc["significant"].any()
    assert not strict.savings["significant"].any()
    assert strict.savings_range["models_significant_lower"].sum() == 0
    sentence = strict.summary["sentence"].iloc[0]
    assert "not significant at the 1% level" in sentence and "5% level" not in sentence


def test_alpha_decides_how_many_models_differ_significantly() -> None:
    frame = _close_pair(models=3, seed=3)
    loose = analyze_frame(frame, variables=["energy_global_j"], workers=1)
    strict = analyze_frame(frame, alpha=0.01, variables=["energy_global_j"], workers=1)
    assert "significant in 3 of 3 models" in loose.summary["sentence"].iloc[0]
    assert "significant in 2 of 3 models" in strict.summary["sentence"].iloc[0]
    assert strict.savings_range.set_index("configuration").loc[
        "onnx/cpu", "models_significant_lower"] == 2
