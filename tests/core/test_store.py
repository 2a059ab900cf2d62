"""Opening databases: foreign and newer files are refused and left untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest

from greenmon.errors import StoreError
from greenmon.store import SCHEMA_VERSION, Store


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_new_database_gets_the_schema(db_path: Path) -> None:
    with Store.open(db_path) as store:
        _, rows = store.query("SELECT value FROM greenmon_meta WHERE key = 'schema_version'")
    assert rows == [(str(SCHEMA_VERSION),)]
    with Store.open(db_path) as store:  # reopening migrates nothing and keeps it
        _, rows = store.query("SELECT count(*) FROM greenmon_meta")
    assert rows == [(2,)]


def test_a_text_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_text("my thesis notes\n" * 10)
    before = _digest(path)
    with pytest.raises(StoreError, match="not a DuckDB database"):
        Store.open(path)
    assert _digest(path) == before


def test_a_foreign_duckdb_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE trades (id INTEGER)")
    con.close()
    before = _digest(path)
    with pytest.raises(StoreError, match="not a greenmon one"):
        Store.open(path)
    assert _digest(path) == before


def test_a_newer_schema_is_refused_untouched(db_path: Path) -> None:
    Store.open(db_path).close()
    con = duckdb.connect(str(db_path))
    con.execute("UPDATE greenmon_meta SET value = '999' WHERE key = 'schema_version'")
    con.close()
    before = _digest(db_path)
    with pytest.raises(StoreError, match="newer greenmon"):
        Store.open(db_path)
    assert _digest(db_path) == before


def test_read_only_open_of_a_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(tmp_path / "nope.duckdb", read_only=True)
    assert not (tmp_path / "nope.duckdb").exists()
