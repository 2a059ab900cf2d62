"""Opening databases: foreign and newer files are refused and left untouched."""

from __future__ import annotations

import hashlib
import threading
import weakref
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
        _, rows = store.query("SELECT key FROM greenmon_meta ORDER BY key")
    assert rows == [("app",), ("schema_version",), ("views_hash",)]


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


def test_relations_are_recreated_only_when_they_are_not_this_greenmon_s(db_path: Path) -> None:
    """A read-write open recreates the views and macros (about 0.45 s at study scale) only
    when the file records other definitions than this greenmon's (views.VIEWS_HASH)."""
    from greenmon.views import VIEWS_HASH, ensure_views

    Store.open(db_path).close()
    with Store.open(db_path) as store:
        assert store.execute("SELECT value FROM greenmon_meta WHERE key = 'views_hash'") == [
            (VIEWS_HASH,)
        ]
        assert ensure_views(store.con) is False
        # an older greenmon's relations (or an open interrupted half-way) look like this
        store.con.execute("DROP VIEW phase_windows")
        store.con.execute("UPDATE greenmon_meta SET value = 'older' WHERE key = 'views_hash'")
    with Store.open(db_path) as store:
        assert store.execute("SELECT count(*) FROM phase_windows") == [(0,)]
        assert ensure_views(store.con) is False


def test_close_interrupts_a_reader_and_lets_go_of_the_connection(db_path: Path) -> None:
    """A store closed while another thread reads on a cursor (an API request the daemon
    answers as it stops) interrupts that read and waits for it, rather than failing with
    DuckDB's "connection is busy"; closed, it holds no DuckDB object, and says so if used."""
    store = Store.open(db_path)
    started = threading.Event()
    outcome: list[BaseException | None] = []

    def read() -> None:
        started.set()
        try:
            store.query("SELECT count(*) FROM range(10000000000) t(i) WHERE i % 7 = 3")
            outcome.append(None)
        except BaseException as error:  # the interruption, whatever DuckDB calls it
            outcome.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    started.wait()
    while not store._cursors:  # the read has its cursor
        reader.join(0.01)
    connection = weakref.ref(store.con)
    store.close()
    reader.join(10)
    assert not reader.is_alive()
    assert isinstance(outcome[0], duckdb.InterruptException), outcome
    assert store._con is None and not store._cursors
    assert connection() is None
    with pytest.raises(StoreError, match="closed"):
        store.query("SELECT 1")
    store.close()  # twice: harmless


def test_a_reopened_file_takes_a_batch_as_its_first_write(db_path: Path) -> None:
    """Opening an existing file read-write reads a few single rows (the views' hash, the
    journal's sequence); none may leave its result unfinished, or DuckDB refuses the first
    batch written through a relation ("connection has an unfinished result")."""
    from greenmon.store.batches import SampleBatch

    Store.open(db_path).close()
    store = Store.open(db_path)
    try:
        batch = SampleBatch()
        batch.append_row(1_000, [1], [2.5])
        store.write(batch, [], "session")
        assert store.query("SELECT t_ns, value FROM samples")[1] == [(1_000, 2.5)]
    finally:
        store.close()
