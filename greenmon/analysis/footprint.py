"""Carbon and cost of the energy measured: CO2e and money per unit, per token and per
1,000 requests, from the ``[report]`` table of the config file (greenmon/config.py).

The carbon intensity is either one constant (``carbon_intensity_g_per_kwh``) or a CSV file
of ``time,g_per_kwh`` rows (``time`` in ISO 8601 or Unix seconds); with a file each unit
takes the latest row at or before its start (a grid's intensity changes by the hour, so a
campaign over days is not one figure).  The energy is the answer's (global CPU+GPU when
measured: greenmon/analysis/decision.py), so carbon and cost inherit its estimated mark.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from greenmon.analysis.data import AnalysisError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from greenmon.api.messages import ResultRow
    from greenmon.config import ReportOptions

J_PER_KWH = 3.6e6
FOOTPRINT_COLUMNS = [
    "model", "factor_key", "configuration", "n", "energy_variable", "kwh_per_unit",
    "g_per_kwh", "co2e_g_per_unit", "co2e_mg_per_token", "co2e_g_per_1k_requests",
    "cost_per_unit", "cost_per_token", "cost_per_1k_requests", "currency",
]  # fmt: skip


class CarbonIntensityError(AnalysisError):
    title = "Carbon intensity file"


@dataclass(frozen=True)
class Pricing:
    """The config's carbon intensity and price, resolved (the file read)."""

    g_per_kwh: float | None
    series: pd.DataFrame | None  # columns time_ns, g_per_kwh, sorted by time_ns
    source: str
    price_per_kwh: float | None
    currency: str

    @property
    def carbon(self) -> bool:
        return self.g_per_kwh is not None or self.series is not None

    def describe(self) -> str:
        """One sentence naming where the intensity and the price come from."""
        parts: list[str] = []
        if self.carbon:
            parts.append(f"Carbon intensity: {self.source}.")
        if self.price_per_kwh is not None:
            parts.append(f"Electricity price: {self.price_per_kwh:g} {self.currency}/kWh.")
        return " ".join(parts)


def pricing(options: ReportOptions | None, config_path: Path | None = None) -> Pricing | None:
    """The pricing a ``[report]`` table asks for; None when it sets neither carbon nor price."""
    if options is None:
        return None
    series = None
    where = f" ({options.carbon_intensity_source})" if options.carbon_intensity_source else ""
    config = f" in {config_path}" if config_path else ""
    source = ""
    if options.carbon_intensity_file:
        series = read_intensity(Path(options.carbon_intensity_file))
        source = (f"from {options.carbon_intensity_file}{where}, the latest row at or before "
                  "each unit's start")  # fmt: skip
    elif options.carbon_intensity_g_per_kwh is not None:
        source = (f"{options.carbon_intensity_g_per_kwh:g} gCO2e/kWh, a constant "
                  f"carbon_intensity_g_per_kwh{config}"
                  f"{where or ' (source not given)'}")  # fmt: skip
    if series is None and options.carbon_intensity_g_per_kwh is None \
            and options.price_per_kwh is None:  # fmt: skip
        return None
    return Pricing(options.carbon_intensity_g_per_kwh, series, source, options.price_per_kwh,
                   options.currency)  # fmt: skip


def read_intensity(path: Path) -> pd.DataFrame:
    """A CSV of ``time,g_per_kwh`` rows as (time_ns, g_per_kwh), sorted by time."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise CarbonIntensityError(
            f"Cannot read the carbon intensity file {path}: {error}. Give a CSV file with a "
            "header 'time,g_per_kwh' in [report] carbon_intensity_file."
        ) from None
    if not {"time", "g_per_kwh"} <= set(frame.columns) or frame.empty:
        raise CarbonIntensityError(
            f"{path} needs the columns time and g_per_kwh and at least one row (it has "
            f"{', '.join(map(str, frame.columns)) or 'none'}). Write a header "
            "'time,g_per_kwh' with times in ISO 8601 or Unix seconds."
        )
    times = frame["time"]
    if pd.api.types.is_numeric_dtype(times):
        time_ns = (times.astype(float) * 1e9).astype("int64")
    else:
        try:
            # as nanoseconds whatever resolution pandas infers from the text
            time_ns = pd.to_datetime(times, utc=True).dt.as_unit("ns").astype("int64")
        except (ValueError, TypeError) as error:
            raise CarbonIntensityError(
                f"{path} has a time that is not ISO 8601 or Unix seconds: {error}. Fix "
                "that row."
            ) from None
    out = pd.DataFrame({"time_ns": time_ns.to_numpy(),
                        "g_per_kwh": pd.to_numeric(frame["g_per_kwh"],
                                                   errors="coerce")})  # fmt: skip
    if out["g_per_kwh"].isna().any():
        raise CarbonIntensityError(f"{path} has a g_per_kwh that is not a number; fix it.")
    return out.sort_values("time_ns").reset_index(drop=True)


def unit_intensity(price: Pricing, started_wall_ns: pd.Series) -> np.ndarray:
    """gCO2e/kWh for each unit: the constant, or the file's latest row before its start
    (the first row for a unit that started before the file does)."""
    if price.series is None:
        return np.full(len(started_wall_ns), float(price.g_per_kwh or 0.0))
    times = price.series["time_ns"].to_numpy()
    values = price.series["g_per_kwh"].to_numpy(dtype=float)
    starts = pd.to_numeric(started_wall_ns, errors="coerce").fillna(times[0]).to_numpy()
    at = np.clip(np.searchsorted(times, starts, side="right") - 1, 0, len(times) - 1)
    out: np.ndarray = values[at]
    return out


def footprint_table(done: pd.DataFrame, price: Pricing, energy_variable: str) -> pd.DataFrame:
    """Per model, factor levels and configuration: medians over units of energy in kWh,
    CO2e and cost per unit, per token and per 1,000 requests."""
    energy_j = done[energy_variable].astype(float)
    kwh = energy_j / J_PER_KWH
    starts = done["started_wall_ns"] if "started_wall_ns" in done else pd.Series(
        [None] * len(done), index=done.index)  # fmt: skip
    intensity = unit_intensity(price, starts) if price.carbon else np.full(len(done), np.nan)
    tokens = pd.to_numeric(done["tokens_out"], errors="coerce").replace(0, np.nan)
    requests = pd.to_numeric(done["requests"], errors="coerce").replace(0, np.nan)
    co2e = kwh * intensity
    cost = kwh * (price.price_per_kwh if price.price_per_kwh is not None else np.nan)
    frame = done.assign(
        _kwh=kwh, _g=intensity, _co2e=co2e, _co2e_tok=co2e / tokens * 1e3,
        _co2e_1k=co2e / requests * 1e3, _cost=cost, _cost_tok=cost / tokens,
        _cost_1k=cost / requests * 1e3,
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    for (model, factors, config), part in frame.groupby(
        ["model", "factor_key", "configuration"], sort=True
    ):
        def med(column: str, part: pd.DataFrame = part) -> float | None:
            values = part[column].dropna()
            return float(values.median()) if len(values) else None

        rows.append(
            {"model": model, "factor_key": factors, "configuration": config, "n": len(part),
             "energy_variable": energy_variable, "kwh_per_unit": med("_kwh"),
             "g_per_kwh": med("_g"), "co2e_g_per_unit": med("_co2e"),
             "co2e_mg_per_token": med("_co2e_tok"), "co2e_g_per_1k_requests": med("_co2e_1k"),
             "cost_per_unit": med("_cost"), "cost_per_token": med("_cost_tok"),
             "cost_per_1k_requests": med("_cost_1k"),
             "currency": price.currency if price.price_per_kwh is not None else None}
        )  # fmt: skip
    return pd.DataFrame(rows, columns=FOOTPRINT_COLUMNS)


def per_unit(price: Pricing, energy_j: float | None, at_ns: int) -> tuple[float | None,
                                                                      float | None]:  # fmt: skip
    """(gCO2e, cost) of one unit's energy, the intensity taken at ``at_ns`` (the same rule
    as ``footprint_table``: the constant, or the file's latest row at or before it)."""
    if energy_j is None or energy_j != energy_j:
        return None, None
    kwh = float(energy_j) / J_PER_KWH
    co2e = None
    if price.carbon:
        co2e = kwh * float(unit_intensity(price, pd.Series([at_ns]))[0])
    cost = kwh * price.price_per_kwh if price.price_per_kwh is not None else None
    return co2e, cost


def summary_lines(price: Pricing, summary: Sequence[ResultRow], at_ns: int) -> list[str]:
    """The run summary's carbon and cost: per configuration, CO2e and cost of its median
    unit (``median_energy_j``), with where the intensity and price come from.  The summary
    holds medians, not units, so a time-varying intensity is taken at ``at_ns`` (the end of
    the run); ``greenmon report --config`` matches each unit to its own start."""
    lines: list[str] = []
    for row in summary:
        co2e, cost = per_unit(price, row.median_energy_j, at_ns)
        parts = []
        if co2e is not None:
            parts.append(f"{co2e:.4g} gCO2e")
        if cost is not None:
            parts.append(f"{cost:.4g} {price.currency}")
        # an estimated energy makes its carbon and cost estimated too
        mark = " (estimated)" if row.estimated_domains else ""
        if parts:
            lines.append(f"  {row.configuration}: {', '.join(parts)} per unit{mark}")
    if not lines:
        return []
    when = " (at the run's end)" if price.series is not None else ""
    return [
        f"carbon and cost per configuration (median unit, from its energy){when}:", *lines,
        f"  {price.describe()}",
    ]  # fmt: skip
