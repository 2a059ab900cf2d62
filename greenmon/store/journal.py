"""The sample journal: samples made durable at each hand-off without a DuckDB commit.

A DuckDB commit costs 1-5 ms of CPU whatever its size, so committing every hand-off was
most of what the writer cost.  Instead the writer appends each hand-off's samples to
``<db>.journal`` beside the database (one frame, written and fdatasync'd: as durable as a
commit) and keeps them in memory; every ``journal_load_interval_s``, at every flush request
(a unit's or a window's end: ``Daemon.samples_through``), before every read through the
store, and when the writer stops, the pending frames are bulk-loaded into ``samples`` in
one transaction that also records the last frame's sequence number in ``journal_loads``.
The file is then truncated.

After a crash the next read-write open replays the file: the frames numbered above the
recorded sequence are loaded, the others (loaded, then killed before the truncation) are
skipped, so a sample is never loaded twice.  A frame cut short by the kill (its length or
checksum does not match) ends the replay: it was never acknowledged, and it is within the
loss bound (README, "What a crash can lose").

A frame: ``GMJ1``, the sequence number (u64), the row count (u32), the CRC-32 of the
payload (u32), then the payload: channel ids (int32), t_ns (int64), values (float64), each
column ``rows`` long, little-endian.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from greenmon.store.batches import Event, SampleBatch
from greenmon.store.database import first_row
from greenmon.store.sessions import SessionWrites

MAGIC = b"GMJ1"
HEADER = struct.Struct("<4sQII")
# Loaded once this many rows are pending, whatever the interval: bounds the file (about
# 330 kB, which a nearly full disk must also find for DuckDB's WAL when it is loaded) and
# the memory the pending frames hold.  The default rates hand off under 1,000 rows a
# second, so the interval decides there; 1 kHz RAPL loads every few seconds.
LOAD_ROWS = 16_384
# The one row of journal_loads: one journal per database file.
JOURNAL_KEY = "samples"
# numpy's dtypes for the frame's columns, little-endian whatever the host.
_DTYPES: tuple[np.dtype[Any], ...] = (np.dtype("<i4"), np.dtype("<i8"), np.dtype("<f8"))


def journal_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".journal")


Columns = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Frame:
    seq: int
    columns: Columns  # channel_id, t_ns, value

    @property
    def rows(self) -> int:
        return len(self.columns[1])


def to_arrow(frames: Sequence[Frame]) -> pa.Table:
    """The frames' rows as one Arrow table in ``samples``' column order."""
    parts = [np.concatenate([f.columns[i] for f in frames]) for i in range(3)]
    return pa.table(
        {
            "channel_id": pa.array(parts[0], pa.int32()),
            "t_ns": pa.array(parts[1], pa.int64()),
            "value": pa.array(parts[2], pa.float64()),
        }
    )


def encode_frame(seq: int, columns: Columns) -> bytes:
    payload = b"".join(
        c.astype(dtype, copy=False).tobytes() for c, dtype in zip(columns, _DTYPES, strict=True)
    )
    return HEADER.pack(MAGIC, seq, len(columns[1]), zlib.crc32(payload)) + payload


def read_frames(path: Path) -> Iterator[Frame]:
    """The whole frames of a journal file, in order; stops at the first torn one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    offset = 0
    row_bytes = sum(d.itemsize for d in _DTYPES)
    while offset + HEADER.size <= len(data):
        magic, seq, rows, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        end = start + rows * row_bytes
        if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
            return
        columns = []
        at = start
        for dtype in _DTYPES:
            columns.append(np.frombuffer(data, dtype=dtype, count=rows, offset=at))
            at += rows * dtype.itemsize
        yield Frame(seq, (columns[0], columns[1], columns[2]))
        offset = end


class SampleJournal:
    """The open journal file of a running writer and its frames not yet loaded."""

    def __init__(self, path: Path, next_seq: int, *, sync: bool = True) -> None:
        self.path = path
        self.next_seq = next_seq
        self.sync = sync
        self.lock = threading.Lock()
        self.pending: list[Frame] = []
        self.pending_rows = 0
        self.frames = 0
        self.bytes = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, batch: SampleBatch) -> None:
        """One hand-off's samples, durable when this returns."""
        columns = batch.columns()
        with self.lock:
            frame = Frame(self.next_seq, columns)
            data = encode_frame(frame.seq, columns)
            os.write(self._fd, data)
            if self.sync:
                # fdatasync: what a DuckDB commit gives (its WAL is synced), so a power cut
                # loses no more than before; macOS has no fdatasync.
                (os.fsync if sys.platform == "darwin" else os.fdatasync)(self._fd)
            self.next_seq += 1
            self.pending.append(frame)
            self.pending_rows += frame.rows
            self.frames += 1
            self.bytes += len(data)

    def truncate(self) -> None:
        os.ftruncate(self._fd, 0)

    def close(self) -> None:
        """Close the file (idempotent); it stays on disk."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class JournalWrites(SessionWrites):
    """The journal's writes (mixed into ``Store``): attach one for the writer, append to
    it, load it, replay a crashed one on open."""

    journal: SampleJournal | None = None

    def attach_journal(self, *, sync: bool = True) -> SampleJournal:
        """Start journaling samples (the writer, as it starts); replays any file left."""
        with self.lock:
            self.replay_journal()
            self.journal = SampleJournal(journal_path(self.path), self._loaded_seq() + 1, sync=sync)
            return self.journal

    def detach_journal(self) -> None:
        """Load what is pending, close the journal and remove its file (a clean stop)."""
        with self.lock:
            journal = self.journal
            if journal is None:
                return
            self.load_journal()
            self.journal = None
            journal.close()
            journal.path.unlink(missing_ok=True)

    def close(self) -> None:
        # A journal still attached (the writer did not end cleanly) keeps its file: the
        # next open replays it.
        with self.lock:
            if self.journal is not None:
                self.journal.close()
                self.journal = None
            super().close()

    def append_samples(
        self, samples: SampleBatch, events: Sequence[Event], session_id: str
    ) -> None:
        """One hand-off: the samples into the journal (into DuckDB when none is attached),
        the events, which are few, straight into DuckDB."""
        journal = self.journal
        if journal is None:
            self.write(samples, events, session_id)
            return
        if len(samples):
            journal.append(samples)
        if events:
            self.write(SampleBatch(), events, session_id)

    def load_journal(self) -> int:
        """Bulk-load the pending frames into ``samples`` in one transaction with the last
        frame's sequence number, then truncate the file.  Returns the rows loaded."""
        journal = self.journal
        if journal is None or not journal.pending:
            return 0
        with self.lock, journal.lock:
            frames, rows = journal.pending, journal.pending_rows
            if not frames:
                return 0
            started_ns = time.perf_counter_ns()
            self._load_frames(frames)
            journal.pending, journal.pending_rows = [], 0
            # Truncated only after the commit: a kill between the two leaves frames whose
            # numbers journal_loads already holds, which the replay skips.
            journal.truncate()
            self.flush_stats.record(rows, time.perf_counter_ns() - started_ns)
        return rows

    def replay_journal(self) -> int:
        """Load the frames a crashed writer left that are not in ``samples`` yet, then
        remove the file.  Returns the rows loaded."""
        path = journal_path(self.path)
        if not path.exists():
            return 0
        with self.lock:
            loaded = self._loaded_seq()
            frames = [f for f in read_frames(path) if f.seq > loaded]
            if frames:
                self._load_frames(frames)
            path.unlink()
        return sum(f.rows for f in frames)

    def _loaded_seq(self) -> int:
        row = first_row(
            self.con.execute(
                "SELECT loaded_seq FROM journal_loads WHERE journal = ?", [JOURNAL_KEY]
            )
        )
        return int(row[0]) if row else 0

    def _load_frames(self, frames: list[Frame]) -> None:
        table = to_arrow(frames)
        with self.transaction() as con:
            con.from_arrow(table).insert_into("samples")
            con.execute(
                "INSERT OR REPLACE INTO journal_loads VALUES (?, ?)", [JOURNAL_KEY, frames[-1].seq]
            )

    @classmethod
    def _left_unloaded(cls, db_path: Path) -> bool:
        path = journal_path(db_path)
        return path.exists() and path.stat().st_size > 0

    def _opened_read_write(self) -> None:
        self.replay_journal()

    def _before_read(self) -> None:
        # A read sees every sample handed off: the daemon's readers (the API's SQL, a
        # window's figures, the runner at a unit's end) query DuckDB, not the journal.
        if self.journal is not None and self.journal.pending:
            self.load_journal()
