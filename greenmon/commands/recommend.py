"""``greenmon recommend``: the least-energy configuration under a latency bound (and a
quality floor), per model and factor levels, from an experiment's results."""

from __future__ import annotations

import argparse
import json
from typing import Any

from greenmon.campaign import open_for_analysis
from greenmon.commands.common import add_db_argument, analysis_source, format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    parser.add_argument("--experiment", default=None, help="experiment id (default: the latest)")
    parser.add_argument(
        "--max-p90-s", type=float, default=None, metavar="SECONDS",
        help="latency p90 the configuration must not exceed (median over units)",
    )  # fmt: skip
    parser.add_argument(
        "--min-quality", type=float, default=None, metavar="Q",
        help="task quality (0-1) the configuration must reach (median over units)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def run(args: argparse.Namespace) -> int:
    db = analysis_source(args.db)
    from greenmon.analysis.data import configuration_label, factor_label, load_results
    from greenmon.analysis.data import resolve_experiment as resolve
    from greenmon.analysis.decision import front, recommend

    with open_for_analysis(db) as store:
        experiment = resolve(store, args.experiment)
        frame = load_results(store, experiment)
    done = frame[frame["status"] == "done"]
    table = front(done)
    # the energy rests on a modelled source in some unit: say so beside the answer
    estimated = bool(done["estimated"].fillna(False).astype(bool).any())
    choices = recommend(table, args.max_p90_s, args.min_quality)
    constraint = _constraint(args)
    satisfied = [c for c in choices if c.row is not None]
    if args.json:
        print(json.dumps({
            "experiment_id": experiment, "max_p90_s": args.max_p90_s,
            "min_quality": args.min_quality, "energy_estimated": estimated,
            "choices": [{"model": c.model, "factor_key": c.factor_key,
                         "configuration": None if c.row is None else c.row["configuration"],
                         "energy": None if c.row is None else c.row["energy"],
                         "energy_variable": None if c.row is None else c.row["energy_variable"],
                         "latency_p90_s": None if c.row is None else c.row["latency_p90_s"],
                         "quality": None if c.row is None else _plain(c.row["quality"]),
                         "candidates": c.candidates, "reason": c.reason} for c in choices],
        }, indent=2))  # fmt: skip
        return 0 if satisfied else 1
    print(f"Experiment {experiment}: least energy with {constraint}.")
    rows: list[list[Any]] = []
    for c in choices:
        where = factor_label(c.factor_key) or "-"
        if c.row is None:
            rows.append([c.model, where, "none", None, None, None, c.reason])
            continue
        rows.append([c.model, where, configuration_label(str(c.row["configuration"])),
                     c.row["energy"], c.row["latency_p90_s"], _plain(c.row["quality"]),
                     ""])  # fmt: skip
    unit = "J/token" if len(table) and table["energy_variable"].iloc[0] == "j_per_token" \
        else "J/request"  # fmt: skip
    print(format_table(["model", "factor levels", "configuration", f"energy ({unit})",
                        "latency p90 (s)", "quality", "note"], rows, max_width=90))  # fmt: skip
    if estimated:
        print("\nEnergy is estimated (modelled from CPU utilisation), not measured; see "
              "`greenmon report` for the model.")  # fmt: skip
    if not satisfied:
        print(f"\nNo configuration satisfies {constraint} in any model. Relax the bound "
              "(the note gives the best reached), or measure faster configurations.")  # fmt: skip
        return 1
    return 0


def _constraint(args: argparse.Namespace) -> str:
    parts = []
    if args.max_p90_s is not None:
        parts.append(f"latency p90 <= {args.max_p90_s:g} s")
    if args.min_quality is not None:
        parts.append(f"quality >= {args.min_quality:g}")
    return " and ".join(parts) or "no constraint"


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value
