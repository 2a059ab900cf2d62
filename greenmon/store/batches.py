"""What the samplers hand the writer: sample batches, events, flush requests, and the
writer's flush timings.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
import pyarrow as pa

# How many recent flushes ``FlushStats`` keeps: about two minutes at the default 0.5 s.
FLUSH_WINDOW = 256


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
        channel_ids, t_ns, values = self.columns()
        return pa.table(
            {
                "channel_id": pa.array(channel_ids, pa.int32()),
                "t_ns": pa.array(t_ns, pa.int64()),
                "value": pa.array(values, pa.float64()),
            }
        )

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch as three numpy columns: channel_id (int32), t_ns (int64), value."""
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
        return (
            np.concatenate([c[0] for c in columns]).astype(np.int32, copy=False),
            np.concatenate([c[1] for c in columns]).astype(np.int64, copy=False),
            np.concatenate([c[2] for c in columns]).astype(np.float64, copy=False),
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
