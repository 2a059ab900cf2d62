"""The daemon's read-only SQL: which statements are allowed, and what a refusal says.

A client's query is checked here (one statement, SELECT or EXPLAIN of one), then runs
through the store's one read-only path (``Store.read_only_query``: its own cursor, a READ
ONLY transaction on a confined database, a time limit); this module turns DuckDB's
errors into messages a person can act on.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import duckdb

from greenmon.api.errors import QueryFailed, QueryRefused
from greenmon.api.messages import SqlResult

if TYPE_CHECKING:
    from greenmon.store import Store

SQL_ROW_LIMIT = 10_000
SQL_TIMEOUT_S = 60.0

_ALLOWED_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(ANALYZE\s+)?", re.IGNORECASE)
_STATEMENT_WORDS = {
    duckdb.StatementType.INSERT: "INSERT",
    duckdb.StatementType.UPDATE: "UPDATE",
    duckdb.StatementType.DELETE: "DELETE",
    duckdb.StatementType.CREATE: "CREATE",
    duckdb.StatementType.DROP: "DROP",
    duckdb.StatementType.ALTER: "ALTER",
    duckdb.StatementType.ATTACH: "ATTACH",
    duckdb.StatementType.DETACH: "DETACH",
    duckdb.StatementType.COPY: "COPY",
    duckdb.StatementType.COPY_DATABASE: "COPY DATABASE",
    duckdb.StatementType.EXPORT: "EXPORT",
    duckdb.StatementType.LOAD: "INSTALL/LOAD",
    duckdb.StatementType.SET: "SET/USE",
    duckdb.StatementType.VARIABLE_SET: "SET VARIABLE",
    duckdb.StatementType.PRAGMA: "PRAGMA",
    duckdb.StatementType.CALL: "CALL",
    duckdb.StatementType.TRANSACTION: "transaction control",
    duckdb.StatementType.VACUUM: "VACUUM",
    duckdb.StatementType.MERGE_INTO: "MERGE",
}


def check_read_only(sql: str) -> str:
    """The one statement in ``sql`` if it only reads; else QueryRefused saying why.

    Allowed: SELECT (with WITH, FROM-first, DESCRIBE, SHOW, SUMMARIZE, which DuckDB parses
    as SELECT) and EXPLAIN of such a statement.  PRAGMA and CALL are refused too, because
    some of them change settings; ``SELECT * FROM pragma_table_info('samples')`` reads the
    same information.  Queries also run in a READ ONLY transaction, so a function with a
    side effect (``nextval``) fails there rather than writing.
    """
    try:
        # A connection of its own to parse with, closed here rather than whenever
        # something lets go of this frame.
        with duckdb.connect(":memory:") as parser:
            statements = parser.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryFailed(f"{str(error).splitlines()[0]}") from None
    if len(statements) != 1:
        raise QueryRefused(
            f"Send exactly one statement (got {len(statements)}); run them one at a time."
        )
    statement = statements[0]
    if statement.type == duckdb.StatementType.EXPLAIN:
        inner = _EXPLAIN_PREFIX.sub("", statement.query, count=1)
        check_read_only(inner)
        return statement.query
    if statement.type not in _ALLOWED_STATEMENTS:
        word = _STATEMENT_WORDS.get(statement.type, statement.type.name)
        raise QueryRefused(
            f"{word} statements are refused: the daemon's SQL is read-only (SELECT, "
            "EXPLAIN, DESCRIBE, SHOW, SUMMARIZE). Anything that writes, attaches, copies, "
            "installs or loads runs only on a file no daemon holds."
        )
    return statement.query


FILE_ACCESS_REFUSED = (
    "Reading, listing or writing files is refused: SQL here reaches only the database's "
    "own tables and views (DuckDB's external access is off and its settings are locked), "
    "so read_text, read_csv, read_parquet, glob, COPY, ATTACH, INSTALL/LOAD and SET cannot "
    "touch a file outside it. {how}"
)
DAEMON_FILE_HOW = (
    "To work with files, stop the daemon and run `greenmon export` or `greenmon sql "
    "--allow-file-access` on the database file."
)


def refused_by_confinement(error: duckdb.Error, how: str) -> QueryRefused | None:
    """QueryRefused for an error raised by a confined database (greenmon.store.confine);
    None for any other error."""
    first_line = str(error).splitlines()[0]
    if isinstance(error, duckdb.PermissionException) or "configuration has been locked" in (
        first_line
    ):
        return QueryRefused(f"{FILE_ACCESS_REFUSED.format(how=how)} (DuckDB: {first_line})")
    return None


def run_read_only(store: Store, sql: str, row_limit: int, timeout_s: float) -> SqlResult:
    """Check ``sql`` and run it through the store's read-only, time-limited path (blocking)."""
    query = check_read_only(sql)
    try:
        columns, rows, truncated = store.read_only_query(query, row_limit, timeout_s)
    except duckdb.InterruptException:
        raise QueryFailed(
            f"The query ran longer than {timeout_s:g} s and was interrupted; narrow it "
            "(a WHERE on session_id or t_ns) or use LIMIT."
        ) from None
    except duckdb.Error as error:
        refused = refused_by_confinement(error, DAEMON_FILE_HOW)
        if refused is not None:
            raise refused from None
        raise QueryFailed(
            f"{str(error).splitlines()[0]}. Queries may read any table or view (samples, "
            "channels, sessions, events, experiments, units, phases, requests, "
            "phase_channel_energy, ...)."
        ) from None
    return SqlResult(columns, [list(r) for r in rows], truncated)
