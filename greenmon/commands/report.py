"""``greenmon report``: a self-contained HTML report (and Markdown twin) of one experiment."""

from __future__ import annotations

import argparse

from greenmon.commands.common import add_db_argument, analysis_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    parser.add_argument("--experiment", default=None, help="experiment id (default: the latest)")
    parser.add_argument(
        "--config", default=None,
        help="config file whose [report] table sets carbon intensity and electricity price",
    )  # fmt: skip
    parser.add_argument(
        "--out", default="greenmon-report",
        help="directory for report.html, report.md and plots/ (default: ./greenmon-report)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    db = analysis_source(args.db)  # before the report folder is made
    from greenmon.analysis.report import write_report
    from greenmon.campaign import open_for_analysis
    from greenmon.commands.analyze import load_pricing

    pricing = load_pricing(args.config)
    # --db may also be a directory of Parquet exports or a campaign directory
    with open_for_analysis(db) as store:
        path = write_report(store, args.experiment, args.out, pricing)
    print(f"Wrote {path} and {path.with_suffix('.md')}")
    return 0
