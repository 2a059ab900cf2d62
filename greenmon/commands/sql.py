"""``greenmon sql``: a read-only query on a greenmon database.

When a daemon holds the file, the query goes through its API (read-only there too, with a
row limit); otherwise the file is opened read-only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
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
    from greenmon.api import SqlResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print rows as JSON objects")
    output.add_argument("--csv", action="store_true", help="print rows as CSV")
    parser.add_argument("--socket", default=None, help="the daemon's API socket")
    parser.add_argument("query", help='SQL to run, e.g. "SELECT * FROM channels"')


def _query_daemon(args: argparse.Namespace) -> tuple[list[str], list[Any]] | None:
    """Rows from the running daemon, or None when none runs or it holds another file."""
    from greenmon.api import ApiClient, call_daemon, find_daemon, resolve_socket_path

    client = find_daemon(resolve_socket_path(args.socket))
    if client is None:
        return None

    async def ask(c: ApiClient) -> SqlResult | None:
        if args.db is not None:
            status = await c.status()
            if Path(status["db_path"]) != resolve_db(args.db).resolve():
                return None
        return await c.sql(args.query)

    result: SqlResult | None = call_daemon(client, ask)
    if result is None:
        return None
    if result.truncated:
        print(
            f"greenmon sql: only the first {len(result.rows)} rows (the daemon's limit); "
            "narrow the query or add LIMIT.",
            file=sys.stderr,
        )
    return result.columns, result.rows


def run(args: argparse.Namespace) -> int:
    import duckdb

    from_daemon = _query_daemon(args)
    if from_daemon is not None:
        columns, rows = from_daemon
        _print(args, columns, rows)
        return 0
    with Store.open(existing_db(args.db), read_only=True) as store:
        try:
            columns, rows = store.query(args.query)
        except duckdb.Error as error:
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
