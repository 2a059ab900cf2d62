"""``greenmon export``: samples, channels, sessions, units, phases, requests and results as
Parquet (partitioned by session) or CSV."""

from __future__ import annotations

import argparse

from greenmon.commands.common import add_db_argument, existing_db, format_table
from greenmon.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    parser.add_argument("--out", required=True, help="directory to write into")


def run(args: argparse.Namespace) -> int:
    db = existing_db(args.db)  # before the output folder is made
    from greenmon.analysis.export import export

    with Store.open(db, read_only=True) as store:
        counts = export(store, args.out, args.format)
    print(format_table(["relation", "rows"], sorted(counts.items())))
    print(f"Written under {args.out} ({args.format}).")
    return 0
