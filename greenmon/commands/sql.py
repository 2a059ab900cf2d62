"""``greenmon sql``: a read-only query on a greenmon database.

When a daemon holds the file, the query goes through its API (read-only there too, with a
row limit); otherwise the file is opened read-only.  Either way the SQL reaches no file
outside the database (greenmon.store.confine), unless ``--allow-file-access`` is given on
a file no daemon holds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from greenmon.commands.common import (
    add_db_argument,
    existing_db,
    format_csv,
    format_json,
    format_table,
    resolve_db,
)
from greenmon.errors import GreenmonError
from greenmon.store import Store

if TYPE_CHECKING:
    from greenmon.api.messages import SqlResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser, socket=True)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print rows as JSON objects")
    output.add_argument("--csv", action="store_true", help="print rows as CSV")
    parser.add_argument(
        "--allow-file-access",
        action="store_true",
        help="on a file no daemon holds: let the query read and write files outside the "
        "database (read_csv, COPY, ATTACH, ...); never through a daemon",
    )
    parser.add_argument("query", help='SQL to run, e.g. "SELECT * FROM channels"')


def _query_daemon(args: argparse.Namespace) -> tuple[list[str], list[Any]] | None:
    """Rows from the daemon holding the file, or None when none does."""
    from greenmon.api.client import call_daemon, find_daemon

    client = find_daemon(resolve_db(args.db), args.socket)
    if client is None:
        return None
    result: SqlResult = call_daemon(client, lambda c: c.sql(args.query))
    if result.truncated:
        print(
            f"greenmon sql: only the first {len(result.rows)} rows (the daemon's limit); "
            "narrow the query or add LIMIT.",
            file=sys.stderr,
        )
    return result.columns, result.rows


LOCAL_FILE_HOW = (
    "To let a query on a file no daemon holds read or write other files, add "
    "--allow-file-access."
)


def run(args: argparse.Namespace) -> int:
    import duckdb

    from greenmon.api.sql import refused_by_confinement

    from_daemon = _query_daemon(args)
    if from_daemon is not None:
        columns, rows = from_daemon
        _print(args, columns, rows)
        return 0
    path = existing_db(args.db)
    with Store.open(path, read_only=True) as store:
        if not args.allow_file_access:
            store.confine()
        try:
            columns, rows = store.query(args.query)
        except duckdb.Error as error:
            refused = refused_by_confinement(error, LOCAL_FILE_HOW)
            if refused is not None:
                raise refused from None
            raise GreenmonError(
                f"{error}. The database is opened read-only: queries may read any table or "
                "view (samples, channels, sessions, events, units, phases, requests, "
                "phase_channel_energy, ...) but not write.",
                title="Query failed",
            ) from None
    _print(args, columns, rows)
    return 0


def _print(args: argparse.Namespace, columns: list[str], rows: Sequence[Sequence[Any]]) -> None:
    if args.json:
        print(format_json(columns, rows))
    elif args.csv:
        print(format_csv(columns, rows), end="")
    else:
        print(format_table(columns, rows))
