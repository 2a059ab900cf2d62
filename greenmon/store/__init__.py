"""The DuckDB store: schema, migrations, the single writer, and read-only access.

DuckDB allows one read-write process per file.  The daemon holds it through one ``Store``;
within the daemon every write goes through this module's methods, serialised by one lock,
and samples arrive in batches from the writer task (``run_writer``), which flushes by size
or at least every ``flush_interval_s``: in the daemon into the sample journal beside the
file (``journal``), loaded into DuckDB in one transaction far less often.  Everything else
opens the file read-only (``Store.open(path, read_only=True)``) or asks the daemon.

Terms:
- *session*: one daemon run on one host: its hardware, versions and clock anchor.  Every
  row reaches its session (samples through their channel), so files from many hosts can
  later be read as one dataset.
- *channel*: one probe quantity within a session (probes/base.py); *sample*: one reading
  ``(channel_id, t_ns, value)`` in long format; *event*: something a person should know
  about a session (probe errors, gaps, restarts), stamped on the same clock.
- *experiment*, *unit*, *phase*, *request*: the runner's records (greenmon/runner.py).

The package, one module per reason to change: ``schema`` (the migrations), ``batches``
(what the samplers hand the writer), ``database`` (open, confinement, reads),
``sessions`` (the daemon's writes), ``runs`` (the runner's writes), ``merge`` (``greenmon
merge``'s), ``analysis`` (the analysis tables'), ``journal`` (samples made durable between DuckDB
commits), ``writer`` (the writer task).  Every write
goes through a ``Store`` method, and every table is created by the migrations.  ``Store``
joins the writes; import every name from here.
"""

from __future__ import annotations

from greenmon.store.analysis import AnalysisWrites
from greenmon.store.batches import FLUSH_WINDOW, Event, FlushRequest, FlushStats, SampleBatch
from greenmon.store.database import (
    Database,
    DuckDBSettings,
    confine,
    duckdb_settings,
    is_confined,
    require_database,
)
from greenmon.store.journal import JournalWrites, SampleJournal, journal_path, read_frames
from greenmon.store.merge import MergeWrites
from greenmon.store.runs import NewExperiment, NewUnit, RunWrites
from greenmon.store.schema import APP_ID, MIGRATIONS, SCHEMA_VERSION
from greenmon.store.writer import run_writer


class Store(JournalWrites, RunWrites, MergeWrites, AnalysisWrites):
    """One open greenmon database.  Thread-safe: every statement runs under ``lock``."""


__all__ = [
    "APP_ID",
    "FLUSH_WINDOW",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Database",
    "DuckDBSettings",
    "Event",
    "FlushRequest",
    "FlushStats",
    "NewExperiment",
    "NewUnit",
    "SampleBatch",
    "SampleJournal",
    "Store",
    "confine",
    "duckdb_settings",
    "is_confined",
    "journal_path",
    "read_frames",
    "require_database",
    "run_writer",
]
