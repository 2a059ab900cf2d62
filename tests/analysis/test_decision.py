"""The reader's decisions from figures alone: the answer, the front, recommend, carbon."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from greenmon.analysis.data import normalise_results
from greenmon.analysis.decision import answers, comparable, front, recommend
from greenmon.analysis.footprint import (
    CarbonIntensityError,
    footprint_table,
    pricing,
    read_intensity,
    unit_intensity,
)
from greenmon.config import ReportOptions, parse_config
from greenmon.errors import ConfigError


def _units(rows: list[tuple[str, float, float, float | None]]) -> pd.DataFrame:
    """(configuration, energy J, latency p90 s, quality) per unit, one model."""
    frame = pd.DataFrame(
        [{"experiment_id": "e", "unit_id": i, "model": "m", "engine": c.split("/")[0],
          "provider": "cpu", "configuration": c, "repetition": i, "factors": None,
          "status": "done", "energy_global_j": e, "j_per_token": e / 100,
          "latency_p90_s": lat, "quality": q, "tokens_out": 100, "requests": 10}
         for i, (c, e, lat, q) in enumerate(rows)]
    )  # fmt: skip
    return normalise_results(frame)


def test_the_front_and_recommend_trade_energy_against_latency_and_quality() -> None:
    done = _units([(c, e, lat, q) for c, e, lat, q in (
        ("a/cpu", 10.0, 2.0, 0.9), ("b/cpu", 20.0, 1.0, 0.9), ("c/cpu", 30.0, 3.0, 0.95),
        ("torch/cpu", 40.0, 2.5, 0.5)) for _ in range(3)])  # fmt: skip
    table = front(done).set_index("configuration")
    # torch/cpu is beaten on everything by a/cpu; c/cpu survives on quality alone
    assert table["pareto"].to_dict() == {"a/cpu": True, "b/cpu": True, "c/cpu": True,
                                         "torch/cpu": False}  # fmt: skip
    (choice,) = recommend(front(done), max_p90_s=1.5)
    assert choice.row is not None and choice.row["configuration"] == "b/cpu"
    (choice,) = recommend(front(done), max_p90_s=5.0, min_quality=0.92)
    assert choice.row is not None and choice.row["configuration"] == "c/cpu"
    (none,) = recommend(front(done), max_p90_s=0.5)
    assert none.row is None and none.reason is not None and "1 s" in none.reason


def test_the_answer_gives_a_near_zero_baseline_in_units_not_percent() -> None:
    assert comparable(1.0, 10.0, 10.0) and not comparable(1.0, 0.05, 10.0)
    assert not comparable(-1.0, 5.0, 5.0)
    done = _units([("a/cpu", 1e-12, 1.0, None)] * 3 + [("torch/cpu", 0.5, 1.0, None)] * 3
                  + [("b/cpu", 100.0, 1.0, None)] * 3)  # fmt: skip
    (row,) = answers(done, pd.DataFrame(), "energy_global_j").to_dict(orient="records")
    assert row["best"] == "a/cpu" and row["next"] == "torch/cpu"
    assert row["next_pct"] is None and row["next_diff"] == pytest.approx(0.5)
    assert "not as a percentage" in row["percent_note"]


def test_carbon_from_a_file_is_matched_to_each_unit_start(tmp_path: Path) -> None:
    csv = tmp_path / "intensity.csv"
    csv.write_text("time,g_per_kwh\n1970-01-01T00:00:10Z,100\n1970-01-01T00:00:20Z,300\n")
    series = read_intensity(csv)
    starts = pd.Series([5 * 10**9, 12 * 10**9, 25 * 10**9])
    price = pricing(ReportOptions(carbon_intensity_file=str(csv), price_per_kwh=0.5))
    assert price is not None and "intensity.csv" in price.describe()
    assert list(unit_intensity(price, starts)) == [100, 100, 300]
    assert len(series) == 2
    done = _units([("a/cpu", 3.6e6, 1.0, None)] * 2).assign(started_wall_ns=[12e9, 25e9])
    (row,) = footprint_table(done, price, "energy_global_j").to_dict(orient="records")
    assert row["kwh_per_unit"] == pytest.approx(1.0)
    assert row["co2e_g_per_unit"] == pytest.approx(200.0)  # median of 100 g and 300 g
    assert row["cost_per_1k_requests"] == pytest.approx(0.5 / 10 * 1000)
    (tmp_path / "bad.csv").write_text("when,value\n1,2\n")
    with pytest.raises(CarbonIntensityError, match="time and g_per_kwh"):
        read_intensity(tmp_path / "bad.csv")


def test_the_report_table_is_validated() -> None:
    config = parse_config("[report]\ncarbon_intensity_g_per_kwh = 250\nprice_per_kwh = 0.3\n")
    assert config.report.carbon_intensity_g_per_kwh == 250
    with pytest.raises(ConfigError, match=r"Unknown key 'report\.carbon'"):
        parse_config("[report]\ncarbon = 1\n")
    with pytest.raises(ConfigError, match="Keep one"):
        parse_config('[report]\ncarbon_intensity_g_per_kwh = 1\ncarbon_intensity_file = "x"\n')
    with pytest.raises(ConfigError, match="negative"):
        parse_config("[report]\nprice_per_kwh = -1\n")
