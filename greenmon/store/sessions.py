"""The daemon's writes: sessions, clock anchors, channels, and batches of samples and
events (the writer task's one call, ``write``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from greenmon.probes.base import Channel
from greenmon.store.batches import Event, SampleBatch
from greenmon.store.database import Database, first_row


class SessionWrites(Database):
    """The daemon's writes (mixed into ``Store``)."""

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
                row = first_row(
                    self.con.execute(
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
                    )
                )
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
        """Record each channel's detected update period (channel_id ->
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

    def open_window(
        self,
        session_id: str,
        name: str,
        kind: str,
        tags: Mapping[str, Any],
        start_ns: int,
        baseline_window_id: int | None,
    ) -> int:
        """A user's named window opens (greenmon/windows.py); returns its window_id."""
        with self.lock:
            row = first_row(self.con.execute(
                """INSERT INTO windows (session_id, name, kind, tags, start_ns,
                       baseline_window_id)
                   VALUES (?, ?, ?, ?, ?, ?) RETURNING window_id""",
                [session_id, name, kind, json.dumps(dict(tags), default=str), start_ns,
                 baseline_window_id],
            ))  # fmt: skip
        assert row is not None
        return int(row[0])

    def close_window(self, window_id: int, end_ns: int) -> None:
        with self.lock:
            self.con.execute(
                "UPDATE windows SET end_ns = ? WHERE window_id = ?", [end_ns, window_id]
            )

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
