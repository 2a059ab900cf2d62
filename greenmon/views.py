"""Result views: what users query.  Views, not tables, so old runs answer new questions.

Views are (re)created every time a database is opened read-write, so a newer greenmon
improves the results of old files without a migration.  The energy arithmetic itself lives
in greenmon/energy.py; views only decide which windows and channels to ask it about.
"""

from __future__ import annotations

import duckdb

from greenmon.energy import ENERGY_UNITS, POWER_UNITS, window_energy_sql

_ENERGY_CHANNEL = (
    f"(c.kind = 'counter' AND c.unit IN {ENERGY_UNITS!r}) "
    f"OR (c.kind = 'gauge' AND c.unit IN {POWER_UNITS!r})"
)

VIEWS: dict[str, str] = {
    # Every energy-bearing channel of a phase's session, as an energy window.
    "phase_windows": f"""
        SELECT p.phase_id AS window_id, c.channel_id, p.start_ns, p.end_ns
        FROM phases p JOIN channels c ON c.session_id = p.session_id
        WHERE p.end_ns IS NOT NULL AND c.domain IS NOT NULL AND ({_ENERGY_CHANNEL})
    """,
    "phase_channel_energy": f"""
        SELECT p.experiment_id, p.unit_id, p.attempt, p.phase, p.phase_id,
               (p.end_ns - p.start_ns) / 1e9 AS duration_s,
               c.channel_id, c.probe, c.name AS channel, c.domain, c.kind, c.estimated,
               e.energy_j, e.coverage, e.wraps, e.resets, e.intervals
        FROM ({window_energy_sql("phase_windows")}) e
        JOIN phases p ON p.phase_id = e.window_id
        JOIN channels c ON c.channel_id = e.channel_id
    """,
}


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    for name, sql in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
