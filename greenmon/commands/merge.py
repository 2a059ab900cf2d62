"""``greenmon merge SHARDS... -o OUT``: the shards of one plan as one campaign database."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+",
        help="shard database files (results/*.duckdb) or directories of Parquet exports",
    )  # fmt: skip
    parser.add_argument("-o", "--out", required=True, help="the merged database (a new file)")


def run(args: argparse.Namespace) -> int:
    from greenmon.campaign import merge

    summary = merge(args.inputs, args.out)
    statuses = ", ".join(f"{n} {s}" for s, n in summary.units_by_status.items())
    print(
        f"merged {len(summary.parts)} parts of plan '{summary.plan_name}' into {args.out} as "
        f"experiment {summary.experiment_id}: {summary.units} units ({statuses}) from "
        f"{len(summary.hosts)} host(s) ({', '.join(summary.hosts)}), {summary.sessions} "
        f"sessions, {summary.samples} samples"
    )
    if summary.missing_units:
        print(
            f"note: {summary.missing_units} units of the plan are in none of the inputs "
            "(a shard not given, or not started); the analysis will go without them."
        )
    print(f"analyse it: greenmon analyze --db {args.out}")
    return 0
