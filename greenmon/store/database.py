"""Opening a greenmon database, confining it, and reading it.

``Database`` is the base of ``Store``: one DuckDB connection, its lock, ``transaction()``,
the open that checks the file and migrates it, and the read paths (``query``,
``read_only_query`` for a client's SQL on a confined database).  The writes live in the
modules beside this one, each a mixin on ``Database``.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import duckdb

from greenmon.errors import DatabaseLockedError, DatabaseNotFoundError, StoreError
from greenmon.store.batches import FlushStats, SampleBatch
from greenmon.store.schema import APP_ID, SCHEMA_VERSION, migrate

if TYPE_CHECKING:
    import pandas as pd

_LOCK_PATTERN = re.compile(r"(Conflicting lock|Could not set lock|lock on file)", re.I)
_PID_PATTERN = re.compile(r"PID (\d+)")
_DUCKDB_MAGIC = b"DUCK"


def _explain_open_error(path: Path, error: duckdb.Error) -> StoreError:
    text = str(error)
    if _LOCK_PATTERN.search(text):
        pid = _PID_PATTERN.search(text)
        holder = f" (process {pid.group(1)})" if pid else ""
        return DatabaseLockedError(
            # Commands that read ask the file's daemon first, so this is a holder whose API
            # did not answer: one starting or stopping (seen as a run ended), or an older
            # greenmon, not one to ask again.
            f"{path} is held by another process{holder}: a greenmon daemon whose API did "
            "not answer (starting or stopping: try again in a few seconds) or another "
            "DuckDB client. If it keeps the file, stop it with Ctrl-C or SIGTERM, or point "
            "--db at another file."
        )
    return StoreError(f"Could not open {path}: {text.splitlines()[0]}")


def require_database(path: Path) -> None:
    """Refuse a database file that does not exist (or is empty), before anything creates it.

    Every command that only reads results (sql, status, analyze, report, export, restore)
    checks this first: opening a missing path read-write would create an empty database,
    and a mistyped --db would look like an experiment with no data.
    """
    if path.is_dir():
        problem = "is a folder, not a database file"
    elif not path.exists():
        problem = "does not exist"
    elif path.stat().st_size == 0:
        problem = "is empty: no greenmon database was ever written to it"
    else:
        return
    raise DatabaseNotFoundError(
        f"{path} {problem} (looked for {path.absolute()}); nothing was created. Check --db "
        "(or $GREENMON_DB); a database is written by `greenmon run PLAN --db PATH`, "
        "`greenmon daemon --db PATH` or `greenmon demo`."
    )


def _check_file_is_duckdb(path: Path) -> None:
    with path.open("rb") as handle:
        header = handle.read(16)
    if header[8:12] != _DUCKDB_MAGIC:
        raise StoreError(
            f"{path} is not a DuckDB database, so it is not a greenmon database either. "
            "It was left untouched; pass --db with a new or existing greenmon file."
        )


def _schema_version(con: duckdb.DuckDBPyConnection, path: Path) -> int | None:
    """The file's greenmon schema version; None for an empty database."""
    tables = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "greenmon_meta" not in tables:
        if tables:
            raise StoreError(
                f"{path} is a DuckDB database but not a greenmon one (it has tables "
                f"{', '.join(sorted(tables)[:5])} and no greenmon_meta). It was left "
                "untouched; pass --db with a new or existing greenmon file."
            )
        return None
    rows = dict(con.execute("SELECT key, value FROM greenmon_meta").fetchall())
    if rows.get("app") != APP_ID or "schema_version" not in rows:
        raise StoreError(f"{path} has a greenmon_meta table that greenmon did not write.")
    return int(rows["schema_version"])


def is_confined(con: duckdb.DuckDBPyConnection) -> bool:
    # fetchall: DuckDB 2.0 keeps a connection busy until its result is read to the end.
    ((external, locked),) = con.execute(
        "SELECT current_setting('enable_external_access'), current_setting('lock_configuration')"
    ).fetchall()
    return not external and bool(locked)


def confine(con: duckdb.DuckDBPyConnection) -> None:
    """Keep SQL on ``con``'s database inside it: no file outside it can be read, listed or
    written (``read_text``, ``read_csv``, ``glob``, ``COPY``, ``ATTACH``, extensions), and no
    setting can be changed back.

    DuckDB's ``enable_external_access = false`` still lets the database use its own file,
    WAL and temp directory (DuckDB adds them to ``allowed_paths`` / ``allowed_directories``),
    and Arrow tables passed in by ``register`` / ``from_arrow``; replacement scans of Python
    variables stop.  ``lock_configuration`` then refuses every ``SET``, this one's undoing
    included.  Both are database-wide (every cursor) and last until the database closes, so
    the daemon confines its store once nothing it does needs a file (the API's queries run
    on cursors of the same database); ``greenmon export`` opens its own, unconfined.
    Idempotent.
    """
    if is_confined(con):
        return
    con.execute("SET GLOBAL enable_external_access = false")
    con.execute("SET GLOBAL lock_configuration = true")


# The value types duckdb.connect(config=...) accepts.
DuckDBSettings = dict[str, str | bool | int | float | list[str]]


def duckdb_settings(db_path: Path, memory_limit: str | None, threads: int | None) -> DuckDBSettings:
    """DuckDB's connection settings for ``Store.open``, applied before the file is read.

    With a memory limit, what does not fit spills to ``<db>.tmp`` beside the database,
    named explicitly: a temp directory on tmpfs (``/tmp`` on many systems) would put the
    spill back in RAM.
    """
    settings: DuckDBSettings = {}
    if memory_limit is not None:
        settings["memory_limit"] = memory_limit
        settings["temp_directory"] = str(db_path.with_name(db_path.name + ".tmp"))
    if threads is not None:
        settings["threads"] = threads
    return settings


def first_row(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first row of a statement's ``result`` (None without one), the result read to
    its end: DuckDB refuses a relation's write (``from_arrow(...).insert_into``) on a
    connection whose last result is unfinished, which ``fetchone`` leaves it."""
    rows = result.fetchall()
    return rows[0] if rows else None


# How long ``Database.close`` waits for interrupted readers to close their cursors.
CLOSE_WAIT_S = 5.0
CLOSE_POLL_S = 0.05


class Database:
    """One open greenmon database.  Thread-safe: every statement runs under ``lock``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, read_only: bool) -> None:
        self._con: duckdb.DuckDBPyConnection | None = con
        self.path = path
        self.read_only = read_only
        self.lock = threading.RLock()
        # Cursors reading outside the lock (``_cursor``): ``close`` interrupts them and
        # waits until they are closed, since DuckDB refuses to close a busy connection.
        self._cursors: set[duckdb.DuckDBPyConnection] = set()
        self._cursors_closed = threading.Condition(self.lock)
        self.flush_stats = FlushStats()

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The open connection; a closed database says so rather than reaching DuckDB."""
        con = self._con
        if con is None:
            raise StoreError(f"{self.path} was closed by this process; open it again to use it.")
        return con

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The one way to write several statements atomically: under the lock, BEGIN, then
        COMMIT, or ROLLBACK on any exception (which is re-raised).  The connection it yields
        is for this block only; code outside greenmon/store writes through Store methods
        that use this, not through ``con``."""
        with self.lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                yield self.con
                self.con.execute("COMMIT")
            except BaseException:
                # A failed COMMIT leaves no open transaction: its ROLLBACK error hides nothing.
                with contextlib.suppress(duckdb.Error):
                    self.con.execute("ROLLBACK")
                raise

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        read_only: bool = False,
        memory_limit: str | None = None,
        threads: int | None = None,
    ) -> Self:
        """Open (or, read-write, create) a greenmon database.

        The schema version is checked on a read-only connection first, so a foreign file or
        one written by a newer greenmon is refused without a single byte written to it.

        ``memory_limit`` (a DuckDB size, ``"128MB"``) and ``threads`` bound DuckDB in this
        process; None keeps DuckDB's defaults (80% of RAM, every core), right for a
        command that reads and exits.  The daemon passes its config's ``[daemon]
        duckdb_memory_limit`` and ``duckdb_threads`` (greenmon/config.py says why).
        """
        db_path = Path(path)
        settings = duckdb_settings(db_path, memory_limit, threads)
        exists = db_path.exists() and db_path.stat().st_size > 0
        if exists:
            _check_file_is_duckdb(db_path)
            try:
                probe_con = duckdb.connect(str(db_path), read_only=True, config=settings)
            except duckdb.Error as error:
                raise _explain_open_error(db_path, error) from None
            try:
                version = _schema_version(probe_con, db_path)
            finally:
                probe_con.close()
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(
                    f"{db_path} was written by a newer greenmon (schema version {version}; "
                    f"this greenmon knows up to {SCHEMA_VERSION}). Upgrade greenmon to read "
                    "it; the file was left untouched."
                )
            if read_only and version is not None and cls._left_unloaded(db_path):
                # A writer killed with samples in its journal: one read-write open loads
                # them (the replay), so a reader sees every sample the daemon took.
                try:
                    cls.open(db_path, memory_limit=memory_limit, threads=threads).close()
                except DatabaseLockedError:
                    raise
                except (StoreError, OSError, duckdb.Error):
                    # A file this user cannot write, or a full disk: read what DuckDB
                    # holds; the journal stays for an open that can load it.
                    pass
        elif read_only:
            require_database(db_path)
        else:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            version = None
        try:
            con = duckdb.connect(str(db_path), read_only=read_only, config=settings)
        except duckdb.Error as error:
            raise _explain_open_error(db_path, error) from None
        # DuckDB turns an ASOF join whose probe side it *estimates* small into a nested
        # loop; its estimate for samples matched to phases was 26 rows against 5 million
        # real ones, and the view took 72 s instead of 1 s.  greenmon's ASOF joins are
        # always meant as sorts.
        con.execute("SET GLOBAL asof_loop_join_threshold = 0")
        store = cls(con, db_path, read_only)
        # pyarrow initialises itself on first use for ~0.3 s while holding the GIL; do it
        # now, before any sampler thread runs, not in the middle of the first flush.
        SampleBatch().to_arrow()
        if not read_only:
            try:
                migrate(store, version or 0)
                store._opened_read_write()
            except BaseException:
                # closed, so this process can open the file again (read-only, say)
                con.close()
                raise
        return store

    # Hooks for the writes mixed into ``Store`` (greenmon/store/journal.py).
    @classmethod
    def _left_unloaded(cls, db_path: Path) -> bool:
        """Whether a writer left samples beside the file that are not in it yet."""
        return False

    def _opened_read_write(self) -> None:
        """Run once a read-write open has migrated the file."""

    def _before_read(self) -> None:
        """Run before every read: make what was written visible to it."""

    def confine(self) -> None:
        """From now on, SQL on this database reaches no file but its own (see ``confine``)."""
        with self.lock:
            confine(self.con)

    def close(self) -> None:
        """Close the connection and let go of it.

        Readers still running on cursors of their own (an API request the daemon was
        answering as it stopped) are interrupted and waited for, at most
        ``CLOSE_WAIT_S``: DuckDB refuses to close a connection one of its cursors is using.
        Then whatever still holds this Database (a finished task's frame, aiohttp's
        module-wide cache of the API's handlers) holds no DuckDB object: one still alive
        when the interpreter tears DuckDB's bindings down is reported by them as leaked,
        after the command's last line.  Closing twice is harmless.
        """
        with self.lock:
            deadline = time.monotonic() + CLOSE_WAIT_S
            while self._cursors and time.monotonic() < deadline:
                # Again and again: an interrupt sent before its cursor starts executing is
                # not seen by the statement it then runs.
                for cursor in self._cursors:
                    with contextlib.suppress(duckdb.Error):
                        cursor.interrupt()
                self._cursors_closed.wait(CLOSE_POLL_S)
            con, self._con = self._con, None
            if con is not None:
                con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement under the lock and return its rows (runner bookkeeping)."""
        self._before_read()
        with self.lock:
            return self.con.execute(sql, params or []).fetchall()

    def copy_query_to(self, sql: str, path: Path, options: str) -> None:
        """``COPY (sql) TO path (options)``: a query's rows into a file (``greenmon
        export``; refused on a confined database, see ``confine``)."""
        quoted = str(path).replace("'", "''")
        self._before_read()
        with self.lock:
            self.con.execute(f"COPY ({sql}) TO '{quoted}' ({options})")

    # -- reading -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of its own for one read, which runs without the lock (so readers do
        not wait for the writer); closed after it, and known to ``close`` meanwhile."""
        self._before_read()
        with self.lock:
            cursor = self.con.cursor()
            self._cursors.add(cursor)
        try:
            yield cursor
        finally:
            cursor.close()
            with self.lock:
                self._cursors.discard(cursor)
                self._cursors_closed.notify_all()

    def query(
        self, sql: str, params: Sequence[Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._cursor() as cursor:
            result = cursor.execute(sql, params or [])
            columns = [d[0] for d in result.description or []]
            return columns, result.fetchall()

    def query_frame(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """A query's rows as a pandas DataFrame (the analysis), on a cursor of its own."""
        with self._cursor() as cursor:
            return cursor.execute(sql, params or []).df()

    def read_only_query(
        self, sql: str, row_limit: int, timeout_s: float
    ) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        """The one path for SQL a client sends (the API's ``POST /sql``): ``sql`` runs on a
        cursor of its own in a READ ONLY transaction on a confined database, interrupted
        after ``timeout_s``.  Returns the columns, at most ``row_limit`` rows, and whether
        more were left out.  DuckDB's errors (``duckdb.InterruptException`` on timeout) are
        raised as they come: the caller says what they mean to its client.
        """
        with self._cursor() as cursor:
            # Whoever opened the store, a client's SQL never reaches a file.  The settings
            # are the database's, so the cursor answers for them without holding the lock.
            if not is_confined(cursor):
                self.confine()
            timer = threading.Timer(timeout_s, cursor.interrupt)
            timer.daemon = True
            timer.start()
            try:
                cursor.execute("BEGIN TRANSACTION READ ONLY")
                try:
                    result = cursor.execute(sql)
                    columns = [d[0] for d in result.description or []]
                    rows = result.fetchmany(row_limit + 1)
                finally:
                    with contextlib.suppress(duckdb.Error):
                        cursor.execute("ROLLBACK")
            finally:
                timer.cancel()
                # The timer's thread holds the cursor (its ``interrupt``) until it returns:
                # a daemon thread still alive when the interpreter exits keeps the cursor
                # past DuckDB's bindings, which then report it leaked.  Cancelled, it
                # returns at once: wait for that.
                timer.join()
        return columns, rows[:row_limit], len(rows) > row_limit
