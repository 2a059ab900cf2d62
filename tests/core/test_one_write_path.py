"""One write path: every write to the database goes through a ``Store`` method
(greenmon/store/), and every table is created by the store's migrations.

A source scan: a module outside greenmon/store whose string literals hold INSERT, UPDATE,
DELETE or CREATE TABLE writes around the store, and fails this test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from greenmon.analysis.tables import TABLE_COLUMNS, TABLE_PREFIX, sql_type
from greenmon.store import Store

PACKAGE = Path(__file__).resolve().parents[2] / "greenmon"
WRITE_SQL = re.compile(
    r"\b(INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+(\s+\w+)?\s+SET|DELETE\s+FROM"
    r"|CREATE\s+(OR\s+REPLACE\s+)?(TEMP\s+|TEMPORARY\s+)?TABLE)\b",
    re.IGNORECASE,
)
# The views registry defines derived relations (views, macros, the materialised results
# cache and its refresh): SQL that only the store runs, recreated by its hash on open.
ALLOWED = {PACKAGE / "views.py"}


def writes_outside_store() -> list[str]:
    offenders: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "store") in path.parents or path in ALLOWED:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            if id(node) in docstrings:
                continue
            match = WRITE_SQL.search(node.value)
            if match:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {match[0]}")
    return offenders


def test_no_module_outside_the_store_writes_sql() -> None:
    offenders = writes_outside_store()
    assert not offenders, (
        "SQL writes outside greenmon/store (add a Store method and call it):\n"
        + "\n".join(offenders)
    )


def test_the_scan_finds_a_write(tmp_path: Path) -> None:
    # The scan must be able to fail: the regex matches the writes it is for.
    for sql in (
        "INSERT INTO samples VALUES (1, 2, 3)",
        "UPDATE units SET status = 'done'",
        "UPDATE requests r SET task = q.task",
        "DELETE FROM analysis_medians WHERE experiment_id = ?",
        "CREATE TABLE x (a INTEGER)",
        "CREATE OR REPLACE TEMP TABLE m AS SELECT 1",
        "INSERT OR REPLACE INTO greenmon_meta VALUES ('a', 'b')",
    ):
        assert WRITE_SQL.search(sql), sql
    assert not WRITE_SQL.search("SELECT * FROM samples WHERE t_ns > 0")


def test_analysis_tables_are_the_migrations(tmp_path: Path) -> None:
    """Each analysis table's columns and types, as created by the migrations, are the ones
    analysis/tables.py fills: a change to TABLE_COLUMNS needs a migration."""
    with Store.open(tmp_path / "t.duckdb") as store:
        for name, columns in TABLE_COLUMNS.items():
            _, rows = store.query(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                "ORDER BY column_index",
                [f"{TABLE_PREFIX}{name}"],
            )
            wanted = [("experiment_id", "VARCHAR")] + [(c, sql_type(c)) for c in columns]
            assert rows == wanted, name
