"""Exports of a greenmon database as Parquet or CSV, for fleet-wide analysis.

Parquet is partitioned by session (``<table>/session_id=<id>/*.parquet``), so files from
many hosts copied into one directory read as one dataset in DuckDB, Spark or Trino.  Rows
that carry no session themselves get it by a join: samples through their channel, phases,
requests and results through their unit (every row reaches its session).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from greenmon.errors import GreenmonError

if TYPE_CHECKING:
    from greenmon.store import Store

FORMATS = ("parquet", "csv")

# Exported relation -> query giving its rows with a session_id column.
EXPORTS: dict[str, str] = {
    "sessions": "SELECT * REPLACE (CAST(started_at AS VARCHAR) AS started_at) FROM sessions",
    "channels": "SELECT * FROM channels",
    "samples": """SELECT c.session_id, s.channel_id, s.t_ns, s.value
                  FROM samples s JOIN channels c USING (channel_id)""",
    "events": "SELECT * FROM events",
    "experiments": "SELECT * FROM experiments",
    "units": "SELECT * FROM units",
    "phases": "SELECT * FROM phases",
    "requests": """SELECT u.session_id, r.* FROM requests r
                   LEFT JOIN units u USING (experiment_id, unit_id)""",
    "unit_results": """SELECT u.session_id, r.* FROM unit_results r
                       LEFT JOIN units u USING (experiment_id, unit_id)""",
}


class ExportError(GreenmonError):
    title = "Export failed"


def export(store: Store, out_dir: str | Path, fmt: str = "parquet") -> dict[str, int]:
    """Write every relation in ``EXPORTS`` under ``out_dir``; returns rows per relation."""
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for name, sql in EXPORTS.items():
        _, rows = store.query(f"SELECT count(*) FROM ({sql})")
        counts[name] = int(rows[0][0])
        target = out / name if fmt == "parquet" else out / f"{name}.csv"
        if fmt == "parquet":
            # A partition directory for a session with no rows is never written, so the
            # empty relation would vanish; keep its schema in one unpartitioned file.
            if counts[name] == 0:
                target.mkdir(parents=True, exist_ok=True)
                options = "FORMAT parquet"
                target = target / "empty.parquet"
            else:
                options = "FORMAT parquet, PARTITION_BY (session_id), OVERWRITE_OR_IGNORE"
        else:
            options = "FORMAT csv, HEADER"
        store.copy_query_to(sql, target, options)
    return counts
