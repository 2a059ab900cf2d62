"""Options and output helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Where the database file is comes from greenmon.config (the Python Monitor asks too).
from greenmon.config import DEFAULT_DB as DEFAULT_DB
from greenmon.config import resolve_db as resolve_db
from greenmon.errors import GreenmonError


def add_db_argument(parser: argparse.ArgumentParser, *, socket: bool = False) -> None:
    parser.add_argument(
        "--db",
        default=None,
        help=f"database file (default: $GREENMON_DB, the config's [daemon] db, or ./{DEFAULT_DB})",
    )
    if socket:
        parser.add_argument(
            "--socket",
            default=None,
            help="the daemon's API socket (default: $GREENMON_SOCKET, else the one derived "
            "from the database's path)",
        )


def greenmon_error_in(group: BaseExceptionGroup[Any]) -> GreenmonError | None:
    """The first GreenmonError inside a task group's failure, however deeply nested.

    When one task fails, the others often fail *because* of it (a sampler finds the
    writer's stream closed); the GreenmonError is the one a person needs to read.
    """
    matched, _ = group.split(GreenmonError)
    error: BaseException | None = matched
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error if isinstance(error, GreenmonError) else None


def existing_db(arg: str | None, config_db: str | None = None) -> Path:
    """The database a reading command (sql, status, analyze, report, export, restore) uses;
    a DatabaseNotFoundError, with nothing created, when the file is not there."""
    # Imported here: the store pulls in duckdb and pyarrow, which `greenmon probes` and
    # `engines` never need.
    from greenmon.store import require_database

    path = resolve_db(arg, config_db)
    require_database(path)
    return path


def analysis_source(arg: str | None) -> Path:
    """What ``analyze`` and ``report`` read: a database file that exists, or a directory of
    Parquet exports or shard files (checked where it is merged)."""
    path = resolve_db(arg)
    return path if path.is_dir() else existing_db(arg)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 40) -> str:
    """A plain aligned text table (no dependency: this runs in every command)."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    body = [[cell(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in body:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(line.rstrip() for line in lines)


def format_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def format_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=str, indent=2)
