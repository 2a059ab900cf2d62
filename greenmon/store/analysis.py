"""The analysis's writes: an experiment's rows in the ``analysis_*`` tables (created by the
migrations; greenmon/analysis/tables.py decides what goes in them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from greenmon.store.database import Database

if TYPE_CHECKING:
    import pandas as pd


class AnalysisWrites(Database):
    """The analysis's writes (mixed into ``Store``)."""

    def replace_analysis_rows(
        self, experiment_id: str, tables: Mapping[str, tuple[pd.DataFrame, str]]
    ) -> None:
        """In one transaction, replace ``experiment_id``'s rows of each table named in
        ``tables`` by its frame's rows, inserted through its SELECT list (which casts each
        column: object columns mixing None and numbers confuse DuckDB's type sniffing).
        Other experiments' rows stay."""
        with self.transaction() as con:
            for table, (frame, select) in tables.items():
                con.execute(f"DELETE FROM {table} WHERE experiment_id = ?", [experiment_id])
                if not len(frame):
                    continue
                con.register("greenmon_analysis_rows", frame)
                try:
                    con.execute(f"INSERT INTO {table} SELECT {select} FROM greenmon_analysis_rows")
                finally:
                    con.unregister("greenmon_analysis_rows")
