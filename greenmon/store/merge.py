"""The writes of ``greenmon merge`` (greenmon/campaign.py): rows copied from attached shard
files or Parquet exports into a new database, inside the merge's one transaction.

Each method runs on the store's connection under its lock, so called within
``Store.transaction()`` it joins that transaction: a merge refused half-way leaves nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from greenmon.store.database import Database, first_row


class MergeWrites(Database):
    """The merge's writes (mixed into ``Store``)."""

    def _columns(self, relation: str) -> list[str]:
        return [
            str(r[0]) for r in self.con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
        ]

    def copy_rows(
        self,
        table: str,
        relation: str,
        *,
        where: str = "true",
        params: Sequence[Any] = (),
        replace: Mapping[str, str] | None = None,
        fresh_id: str | None = None,
    ) -> int:
        """Insert the rows of ``relation`` into ``table``, by column name: columns the
        output lacks are dropped (a Parquet export's extra session_id), columns the source
        lacks (an older file) stay NULL, ``replace`` gives SQL for some columns, and
        ``fresh_id`` is drawn from the output's own sequence.  Returns the rows inserted."""
        replace = replace or {}
        with self.lock:
            out_columns = self._columns(f"main.{table}")
            have = set(self._columns(relation))
            columns = [c for c in out_columns if c != fresh_id and (c in have or c in replace)]
            select = ", ".join(replace.get(c, f'src."{c}"') for c in columns)
            names = ", ".join(f'"{c}"' for c in columns)
            row = first_row(
                self.con.execute(
                    f"INSERT INTO main.{table} ({names}) SELECT {select} FROM {relation} AS src "
                    f"WHERE {where}",
                    list(params),
                )
            )
        return int(row[0]) if row else 0

    def copy_channels_and_samples(self, channels: str, samples: str | None) -> None:
        """A source's channels under fresh ids, and its samples mapped to them."""
        with self.lock:
            # Keyed by (session, channel): one Parquet directory holds many files' ids.
            self.con.execute(
                f"""CREATE OR REPLACE TEMP TABLE greenmon_channel_map AS
                    SELECT session_id, channel_id AS old_id,
                           (SELECT coalesce(max(channel_id), 0) FROM main.channels)
                           + row_number() OVER (ORDER BY session_id, channel_id) AS new_id
                    FROM {channels}"""
            )
            mapped = f"""(SELECT c.* REPLACE (CAST(m.new_id AS INTEGER) AS channel_id)
                          FROM {channels} c JOIN greenmon_channel_map m
                            ON m.session_id = c.session_id AND m.old_id = c.channel_id)"""
            self.copy_rows("channels", mapped)
            if samples is None:
                return
            if "session_id" in self._columns(samples):
                keyed = f"(SELECT session_id, channel_id, t_ns, value FROM {samples})"
            else:
                keyed = f"""(SELECT c.session_id, s.channel_id, s.t_ns, s.value FROM {samples} s
                             JOIN {channels} c USING (channel_id))"""
            self.con.execute(
                f"""INSERT INTO main.samples
                    SELECT CAST(m.new_id AS INTEGER), s.t_ns, s.value FROM {keyed} s
                    JOIN greenmon_channel_map m
                      ON m.session_id = s.session_id AND m.old_id = s.channel_id"""
            )

    def advance_channel_sequence(self) -> None:
        """Channels registered in the merged file later (a daemon on it) get fresh ids."""
        with self.lock:
            row = first_row(
                self.con.execute("SELECT coalesce(max(channel_id), 0) FROM main.channels")
            )
            top = int(row[0]) if row else 0
            self.con.execute("DROP SEQUENCE channel_id_seq")
            self.con.execute(f"CREATE SEQUENCE channel_id_seq START {top + 1}")
