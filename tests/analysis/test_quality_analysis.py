"""Quality beside energy in the analysis: tested like energy, weighed in the findings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from greenmon.analysis.stats import QUALITY_TOLERANCE, analyze_frame, verdict
from tests.support.synthetic import synthetic_results

ENERGY = {"torch/cpu": 300.0, "onnx/cpu": 100.0, "openvino/cpu": 200.0}
# onnx saves the most energy but answers worse; openvino saves some at equal quality.
QUALITY = {"torch/cpu": 0.80, "onnx/cpu": 0.50, "openvino/cpu": 0.80}


def _frame(seed: int = 3) -> pd.DataFrame:
    frame = synthetic_results(models=1, configurations=tuple(ENERGY), energy_j=ENERGY,
                              relative_sd=0.03, seed=seed, repetitions=6)
    rng = np.random.default_rng(seed)
    frame["quality"] = [QUALITY[c] + rng.normal(0, 0.005) for c in frame["configuration"]]
    frame["quality_metric"] = "token_f1"
    frame["correct_answers"] = (frame["quality"] * 10).round()
    frame["correct_share"] = frame["correct_answers"] / 10
    frame["j_per_correct"] = frame["energy_global_j"] / frame["correct_answers"]
    return frame


def test_verdicts() -> None:
    assert verdict(-30.0, -0.3) == "trade-off"
    assert verdict(-30.0, -QUALITY_TOLERANCE / 2) == "win"
    assert verdict(-30.0, 0.1) == "win"
    assert verdict(10.0, 0.0) == "costlier"
    assert verdict(10.0, -0.3) == "worse"


def test_energy_saving_that_loses_quality_is_a_trade_off() -> None:
    result = analyze_frame(_frame(), workers=1)
    # quality is tested like energy
    tests = result.tests[result.tests["variable"] == "quality"]
    assert len(tests) == 1 and tests["significant"].iloc[0]
    table = result.quality[result.quality["comparison"] == "configuration"].set_index("configuration")
    assert table.loc["torch/cpu", "verdict"] == "reference"
    assert table.loc["onnx/cpu", "verdict"] == "trade-off"
    assert table.loc["openvino/cpu", "verdict"] == "win"
    assert abs(table.loc["onnx/cpu", "quality_change"] + 0.30) < 0.02
    assert table.loc["onnx/cpu", "energy_change_pct"] < -60
    # energy per correct answer, per configuration
    assert abs(table.loc["onnx/cpu", "j_per_correct"] - 100.0 / 5) < 2
    summary = result.summary.set_index("variable")
    assert "trade-off, not a win" in summary.loc["energy_global_j", "sentence"]
    assert summary.loc["quality", "best"] in ("torch/cpu", "openvino/cpu")
    assert "less quality" not in summary.loc["quality", "sentence"]


def test_factor_levels_are_weighed_too() -> None:
    frame = _frame()
    low = frame.copy()
    low["factors"] = json.dumps({"cpu_max_freq_khz": 1000000})
    low["energy_global_j"] *= 0.7
    low["quality"] -= 0.1
    frame["factors"] = json.dumps({"cpu_max_freq_khz": 3000000})
    both = pd.concat([frame, low], ignore_index=True)
    both["unit_id"] = range(len(both))
    result = analyze_frame(both, workers=1)
    levels = result.quality[result.quality["comparison"] == "factor:cpu_max_freq_khz"]
    row = levels[(levels["configuration"] == "torch/cpu") & (levels["level"] == "3000000")].iloc[0]
    assert row["versus"] == "1000000" and row["verdict"] == "costlier"
    assert "more energy" in row["sentence"]


def test_equal_quality_everywhere_is_a_tie_not_a_best() -> None:
    """Tiny models answer every question wrong: quality 0 in every configuration names no
    configuration as having the highest quality."""
    frame = _frame()
    frame["quality"] = 0.0
    frame["correct_answers"] = 0.0
    frame["correct_share"] = 0.0
    frame["j_per_correct"] = np.nan
    sentence = analyze_frame(frame, workers=1).summary.set_index("variable").loc[
        "quality", "sentence"
    ]
    assert sentence.startswith("All 3 configurations had the same median quality")
    assert "highest" not in sentence
