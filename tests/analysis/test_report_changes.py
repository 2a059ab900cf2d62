"""Percentage changes in the report's trade-off, quality and serving-cost tables follow the
report's rule (greenmon/analysis/decision.py): a percentage only against a baseline that is
not near zero and under 1000%; otherwise the difference in the variable's units."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from greenmon.analysis import serving
from greenmon.analysis.decision import MAX_CHANGE_PCT, change_pct, change_phrase, change_text
from greenmon.analysis.report import (
    QUALITY_CHANGES,
    TRADEOFF_CHANGES,
    change_rows,
    result_table,
    serving_cost_table,
)
from greenmon.analysis.stats import analyze_frame
from tests.support.synthetic import synthetic_results

PERCENT = re.compile(r"([-+]?\d+(?:\.\d+)?)%")


def _percentages(texts: list[str]) -> list[float]:
    return [float(m) for t in texts for m in PERCENT.findall(t)]


def test_change_rule() -> None:
    assert change_pct(110.0, 100.0, 100.0) == pytest.approx(10.0)
    assert change_text(110.0, 100.0, 100.0, "J") == "+10.0%"
    # a baseline near zero against the largest median: units
    assert change_pct(5.0, 1e-6, 100.0) is None
    assert change_text(5.0, 1e-6, 100.0, "J") == "+5 J"
    # a change of 1000% or more: units
    assert change_pct(1100.0, 100.0, 1100.0) is None
    assert change_pct(1099.0, 100.0, 1100.0) == pytest.approx(999.0)
    assert change_text(1100.0, 100.0, 1100.0, "s") == "+1000 s"
    assert change_phrase(50.0, 100.0, 100.0, "J") == "50.0% less"
    assert change_phrase(3000.0, 100.0, 3000.0, "J") == "2900 J more"
    assert change_text(None, 1.0, 1.0, "J") == ""


def _extreme() -> pd.DataFrame:
    """Three power-limit levels; onnx's first level uses almost nothing (a near-zero
    baseline), torch's last uses 50 times the energy and 30 times the time."""
    frame = synthetic_results(
        models=1, configurations=("torch/cpu", "onnx/cpu"),
        energy_j={"torch/cpu": 300.0, "onnx/cpu": 100.0}, relative_sd=0.0, repetitions=4,
        factors=({"gpu_power_limit_w": 150}, {"gpu_power_limit_w": 300},
                 {"gpu_power_limit_w": 600}), seed=5,
    )  # fmt: skip
    onnx = frame["configuration"] == "onnx/cpu"
    torch = frame["configuration"] == "torch/cpu"
    first = frame["factors"].str.contains("150")
    last = frame["factors"].str.contains("600")
    energy = [c for c in frame.columns if c.startswith("energy_") and c.endswith("_j")]
    frame.loc[onnx & first, energy] *= 1e-6
    frame.loc[torch & last, energy] *= 50.0
    frame.loc[torch & last, "duration_s"] *= 30.0
    rng = np.random.default_rng(1)
    frame["quality"] = 0.8 + rng.normal(0, 0.005, len(frame))
    frame["quality_metric"] = "token_f1"
    frame["correct_answers"] = (frame["quality"] * 10).round()
    frame["correct_share"] = frame["correct_answers"] / 10
    frame["j_per_correct"] = frame["energy_global_j"] / frame["correct_answers"]
    return frame


def test_extreme_factor_levels_give_no_misleading_percentage() -> None:
    result = analyze_frame(_extreme(), workers=1)
    # the analysis keeps the raw percentages (analyze --json); the report guards them
    raw = result.tradeoff["energy_change_pct"].dropna().abs()
    assert raw.max() >= MAX_CHANGE_PCT

    columns, rows = change_rows(result, "tradeoff", *result_table(result, "tradeoff"),
                                TRADEOFF_CHANGES)  # fmt: skip
    assert "energy_change" in columns and "energy_change_pct" not in columns
    cells = [str(row[columns.index(c)]) for row in rows
             for c in ("energy_change", "duration_change")]  # fmt: skip
    assert all(abs(p) < MAX_CHANGE_PCT for p in _percentages(cells)), cells
    at = {(row[columns.index("configuration")], row[columns.index("level")]): row
          for row in rows}  # fmt: skip
    # onnx against its near-zero first level: joules, not a percentage
    onnx_300 = str(at[("onnx/cpu", "300")][columns.index("energy_change")])
    assert onnx_300.endswith(" J") and "%" not in onnx_300
    # torch at 600 W: 4900% more energy and 2900% more time, in units
    torch_600 = at[("torch/cpu", "600")]
    assert str(torch_600[columns.index("energy_change")]).endswith(" J")
    assert str(torch_600[columns.index("duration_change")]).endswith(" s")
    # an ordinary change stays a percentage
    assert str(at[("torch/cpu", "300")][columns.index("energy_change")]).endswith("%")

    sentences = [s for s in result.tradeoff["sentence"] if isinstance(s, str)]
    assert sentences and all(abs(p) < MAX_CHANGE_PCT for p in _percentages(sentences))
    assert any(" J more energy" in s for s in sentences), sentences

    columns, rows = change_rows(result, "quality", *result_table(result, "quality"),
                                QUALITY_CHANGES)  # fmt: skip
    cells = [str(row[columns.index("energy_change")]) for row in rows]
    assert any(c.endswith(" J") for c in cells), cells
    assert all(abs(p) < MAX_CHANGE_PCT for p in _percentages(cells)), cells
    sentences = [s for s in result.quality["sentence"] if isinstance(s, str)]
    assert all(abs(p) < MAX_CHANGE_PCT for p in _percentages(sentences)), sentences


def test_serving_cost_against_a_near_zero_or_tiny_in_process_figure() -> None:
    table = pd.DataFrame(
        [{"model": "m", "level": "-", "configuration": "http/cpu", "n": 3,
          "j_per_token": 2.0, "throughput_tok_s": 50.0, "latency_p50_s": 0.9},
         {"model": "m", "level": "-", "configuration": "torch/cpu", "n": 3,
          "j_per_token": 1e-6, "throughput_tok_s": 45.0, "latency_p50_s": 0.05}],
        columns=serving.SERVING_COLUMNS,
    )  # fmt: skip
    cost = serving.serving_cost(table)
    assert cost["j_per_token_change_pct"].iloc[0] > 1e6  # what the table used to print
    shown = serving_cost_table(table, cost)
    (row,) = shown.rows
    cells = dict(zip(shown.columns, row, strict=True))
    assert cells["j_per_token_change"] == "+2 J/token"  # near-zero baseline
    assert cells["throughput_change"] == "+11.1%"
    assert cells["latency_p50_change"] == "+0.85 s"  # 1700%
