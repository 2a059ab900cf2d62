"""`greenmon run --config FILE` with a [report] table: the summary printed when the run ends
carries CO2e and cost per configuration, computed from the summary's median energy by the
same rule as the report (greenmon/analysis/footprint.py); a bad [report] table stops the
run before any unit, with a clear message.  Separate processes on the fake engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.journeys.test_journeys import greenmon, write_plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

G_PER_KWH = 400.0
PRICE_PER_KWH = 0.25


def test_run_with_config_prints_carbon_and_cost(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, "priced", repetitions=1)
    config = tmp_path / "greenmon.toml"
    config.write_text(
        "[report]\n"
        f"carbon_intensity_g_per_kwh = {G_PER_KWH}\n"
        'carbon_intensity_source = "test grid"\n'
        f"price_per_kwh = {PRICE_PER_KWH}\n"
        'currency = "CHF"\n'
    )
    db = tmp_path / "priced.duckdb"
    done = greenmon("run", "--db", str(db), "--quiet", "--config", str(config), str(plan),
                    cwd=tmp_path)  # fmt: skip
    out = done.stdout
    assert "carbon and cost per configuration" in out, out
    assert "Carbon intensity: 400 gCO2e/kWh" in out and "test grid" in out, out
    assert "Electricity price: 0.25 CHF/kWh" in out, out
    # each configuration's line is its median unit's energy times the intensity and price
    medians = json.loads(greenmon(
        "sql", "--db", str(db), "--json",
        "SELECT configuration, median(energy_global_j) AS e FROM unit_results "
        "WHERE status = 'done' GROUP BY configuration", cwd=tmp_path).stdout)  # fmt: skip
    assert len(medians) == 2
    for row in medians:
        kwh = float(row["e"]) / 3.6e6
        line = re.search(rf"^  {re.escape(row['configuration'])}: (.*) per unit( \(estimated\))?$",
                         out, re.M)  # fmt: skip
        assert line is not None, out
        assert line.group(1) == f"{kwh * G_PER_KWH:.4g} gCO2e, {kwh * PRICE_PER_KWH:.4g} CHF"
        # this machine's CPU energy is the estimate probe's: so are its carbon and cost
        assert (line.group(2) is not None) == ("(estimated)" in out.split("carbon and")[0])


def test_run_without_config_prints_no_footprint_and_a_bad_table_stops_first(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[report]\nprice_per_kwh = -1\n")
    plan = write_plan(tmp_path, "unpriced", repetitions=1)
    db = tmp_path / "unpriced.duckdb"
    refused = greenmon("run", "--db", str(db), "--quiet", "--config", str(bad), str(plan),
                       cwd=tmp_path, check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "price_per_kwh" in refused.stderr and "Traceback" not in refused.stderr
    assert not db.exists()  # stopped before any unit ran
    done = greenmon("run", "--db", str(db), "--quiet", str(plan), cwd=tmp_path)
    assert "gCO2e" not in done.stdout and "medians per configuration" in done.stdout
