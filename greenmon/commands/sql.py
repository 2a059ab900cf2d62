"""``greenmon sql``: a read-only query on a greenmon database."""

from __future__ import annotations

import argparse

from greenmon.commands.common import (
    add_db_argument,
    format_csv,
    format_json,
    format_table,
    resolve_db,
)
from greenmon.errors import GreenmonError
from greenmon.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print rows as JSON objects")
    output.add_argument("--csv", action="store_true", help="print rows as CSV")
    parser.add_argument("query", help='SQL to run, e.g. "SELECT * FROM channels"')


def run(args: argparse.Namespace) -> int:
    import duckdb

    path = resolve_db(args.db)
    with Store.open(path, read_only=True) as store:
        try:
            columns, rows = store.query(args.query)
        except duckdb.Error as error:
            raise GreenmonError(
                f"{error}. The database is opened read-only: queries may read any table or "
                "view (samples, channels, sessions, events, units, phases, requests, "
                "phase_channel_energy, ...) but not write.",
                title="Query failed",
            ) from None
    if args.json:
        print(format_json(columns, rows))
    elif args.csv:
        print(format_csv(columns, rows), end="")
    else:
        print(format_table(columns, rows))
    return 0
