"""``greenmon analyze``: the study's tables and tests for one experiment, stored and printed."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from greenmon.campaign import open_for_analysis
from greenmon.commands.common import add_db_argument, analysis_source, format_table
from greenmon.estimates import WORD

if TYPE_CHECKING:
    import pandas as pd

    from greenmon.analysis.footprint import Pricing

# What the text output shows of each table; --json prints every column.
_TEXT_COLUMNS = {
    "tests": ["variable", "model", "factor_key", "test", "statistic", "p_value",
              "effect_size_kind", "effect_size", "pairs_significant", "pairs_total"],
    "savings_range": ["variable", "factor_key", "configuration", "versus", "range_text",
                      "models_significant_lower", "models"],
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    parser.add_argument("--experiment", default=None, help="experiment id (default: the latest)")
    parser.add_argument(
        "--config", default=None,
        help="config file whose [report] table sets carbon intensity and electricity price",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print every table as JSON")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="processes for the tests (default: one per core for large experiments)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    db = analysis_source(args.db)
    from greenmon.analysis.tables import analyze

    pricing = load_pricing(args.config)
    # --db may also be a directory of Parquet exports or a campaign directory
    with open_for_analysis(db) as store:
        result = analyze(store, args.experiment, workers=args.workers, pricing=pricing)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
        return 0
    print(
        f"Experiment {result.experiment_id}: {result.units_analysed} of {result.units_total} "
        "units analysed; tables analysis_* written (query them with `greenmon sql`)."
    )
    for note in result.notes:
        print(f"\nnote: {note.title}: {note.message}")
    print("\nFindings:")
    for row in result.summary.to_dict(orient="records"):
        extra = row.get("models_sentence")
        print(f"- {row['sentence']}" + (f" {extra}" if isinstance(extra, str) else ""))
    columns = _TEXT_COLUMNS["tests"]
    if len(result.tests):
        print("\ntests:")
        print(format_table(columns, _marked_rows(result.tests, columns)))
    from greenmon.analysis.report import Marked, cell, one_way_savings, shown_variables

    def text(value: Any) -> str:
        return f"{cell(value.value)} ({WORD})" if isinstance(value, Marked) else cell(value)

    # savings one way (each variable's winner against the others), as in the report
    columns, rows = one_way_savings(result, shown_variables(result))
    if rows:
        keep = [columns.index(c) for c in _TEXT_COLUMNS["savings_range"]]
        print("\nsavings of the winner (range over models):")
        print(format_table(_TEXT_COLUMNS["savings_range"],
                           [[text(row[i]) for i in keep] for row in rows]))  # fmt: skip
    if len(result.footprint):
        print(f"\nCarbon and cost (medians per unit). {result.pricing_source}")
        columns = [c for c in ("model", "factor_key", "configuration", "co2e_g_per_unit",
                               "co2e_mg_per_token", "co2e_g_per_1k_requests", "cost_per_unit",
                               "cost_per_1k_requests", "currency")
                   if result.footprint[c].notna().any()]  # fmt: skip
        print(format_table(columns, result.footprint[columns].values.tolist()))
    legend = result.estimated.get("legend")
    if legend:
        print(f"\n{legend}")
    return 0


def _marked_rows(frame: pd.DataFrame, columns: list[str]) -> list[list[Any]]:
    """Rows of a table, the variable of a row whose figure is estimated marked so."""
    estimated = frame[WORD] if WORD in frame.columns else [False] * len(frame)
    rows: list[list[Any]] = frame[columns].values.tolist()
    at = columns.index("variable")
    for row, flag in zip(rows, estimated, strict=True):
        if flag:
            row[at] = f"{row[at]} ({WORD})"
    return rows


def load_pricing(config: str | None) -> Pricing | None:
    """The carbon intensity and price of ``--config``'s ``[report]`` table (None: none)."""
    if config is None:
        return None
    from pathlib import Path

    from greenmon.analysis.footprint import pricing
    from greenmon.config import load_config

    loaded = load_config(config)
    return pricing(loaded.report, Path(config))
