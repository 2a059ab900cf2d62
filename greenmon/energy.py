"""Energy over a time window, computed in DuckDB over raw samples.

Terms:
- *window*: ``[start_ns, end_ns]`` on the monotonic clock, for one channel (a phase of a
  unit, a user's question).
- *interval*: two consecutive samples of a channel ``(t0, v0) -> (t1, v1)``.
- *counter* channels (RAPL ``energy_uj``, NVML mJ, EnergiBridge J, NETIO Wh): energy is the
  sum of wrap-corrected deltas.  A negative delta is a wrap when the channel's metadata gives
  ``counter_range`` (added back once), else a reset (that interval's energy is unknown and
  it does not count as covered).  Windows cut intervals at their edges by linear
  interpolation, so a window's energy does not depend on where samples happened to fall.
- *gauge* power channels (W, mW): the trapezoid integral of the piecewise-linear power,
  cut at the window's edges the same way.  Used only where no counter exists.
- *coverage*: the share of the window that lies within two sample periods of a sample,
  so a probe that stalled shows up as coverage below 1 rather than as silent zeros.

Everything here is one SQL query: a window function for intervals and a range join of
windows against intervals, so it runs over tens of millions of samples in DuckDB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

# Multiplier from a channel's unit to joules (counters) or watts (power gauges).
SCALE_TO_SI_SQL = """CASE unit
    WHEN 'uJ' THEN 1e-6 WHEN 'mJ' THEN 1e-3 WHEN 'J' THEN 1.0
    WHEN 'Wh' THEN 3600.0 WHEN 'kWh' THEN 3600000.0
    WHEN 'uW' THEN 1e-6 WHEN 'mW' THEN 1e-3 WHEN 'W' THEN 1.0
    ELSE NULL END"""

ENERGY_UNITS = ("uJ", "mJ", "J", "Wh", "kWh")
POWER_UNITS = ("uW", "mW", "W")

# Samples this far outside a window are read so that its edges can be interpolated.
EDGE_MARGIN_PERIODS = 10
EDGE_MARGIN_MIN_NS = 5_000_000_000


def window_energy_sql(windows: str) -> str:
    """SQL computing energy per (window_id, channel_id) for the relation ``windows``.

    ``windows`` must name a relation with columns window_id, channel_id, start_ns, end_ns.
    Output columns: window_id, channel_id, energy_native (in the channel's unit, times
    seconds for gauges), energy_j, coverage, wraps, resets, intervals.
    """
    return f"""
WITH win AS (SELECT window_id, channel_id, start_ns, end_ns FROM {windows}),
ch AS (
    SELECT channel_id, kind, period_ns,
           {SCALE_TO_SI_SQL} AS scale_si,
           TRY_CAST(json_extract_string(metadata, '$.counter_range') AS DOUBLE) AS counter_range
    FROM channels
    WHERE channel_id IN (SELECT channel_id FROM win)
),
bounds AS (
    SELECT w.channel_id,
           min(w.start_ns) - greatest({EDGE_MARGIN_PERIODS} * ch.period_ns,
                                      {EDGE_MARGIN_MIN_NS}) AS lo_ns,
           max(w.end_ns) + greatest({EDGE_MARGIN_PERIODS} * ch.period_ns,
                                    {EDGE_MARGIN_MIN_NS}) AS hi_ns
    FROM win w JOIN ch USING (channel_id)
    GROUP BY w.channel_id, ch.period_ns
),
pts AS (
    SELECT s.channel_id, s.t_ns, s.value
    FROM samples s JOIN bounds b
      ON s.channel_id = b.channel_id AND s.t_ns BETWEEN b.lo_ns AND b.hi_ns
    WHERE s.value IS NOT NULL
),
seq AS (
    SELECT channel_id, t_ns AS t1, value AS v1,
           lag(t_ns) OVER w AS prev_t_ns, lag(value) OVER w AS prev_value,
           lead(t_ns) OVER w IS NULL AS last_sample
    FROM pts
    WINDOW w AS (PARTITION BY channel_id ORDER BY t_ns)
),
iv2 AS (
    -- One row per sample: the interval from the previous sample, or for the first sample
    -- an "edge" stretch of two periods before it (covered, no energy).  The last sample
    -- also covers two periods after it (trailing_ns).
    SELECT s.channel_id, coalesce(s.prev_t_ns, s.t1 - 2 * ch.period_ns) AS t0, s.t1,
           coalesce(s.prev_value, s.v1) AS v0, s.v1, s.prev_t_ns IS NULL AS edge,
           CASE WHEN s.last_sample THEN 2 * ch.period_ns ELSE 0 END AS trailing_ns,
           ch.kind, ch.period_ns, ch.scale_si,
           (ch.kind = 'counter' AND s.prev_t_ns IS NOT NULL AND s.v1 < s.prev_value) AS negative,
           CASE
               WHEN ch.kind <> 'counter' OR s.prev_t_ns IS NULL THEN NULL
               WHEN s.v1 >= s.prev_value THEN s.v1 - s.prev_value
               WHEN ch.counter_range IS NOT NULL THEN s.v1 - s.prev_value + ch.counter_range
               ELSE NULL
           END AS delta
    FROM seq s JOIN ch USING (channel_id)
    WHERE s.prev_t_ns IS NULL OR s.t1 > s.prev_t_ns
),
cut AS (
    SELECT w.window_id, w.channel_id, w.start_ns, w.end_ns, i.*,
           greatest(i.t0, w.start_ns) AS s_ns, greatest(least(i.t1, w.end_ns), i.t0) AS e_ns
    FROM win w JOIN iv2 i
      ON i.channel_id = w.channel_id AND i.t1 + i.trailing_ns > w.start_ns
     AND i.t0 < w.end_ns
),
parts AS (
    SELECT window_id, channel_id, start_ns, end_ns, scale_si, edge, negative, delta,
           trailing_ns, t1,
           CASE
               WHEN edge OR s_ns >= e_ns THEN 0.0
               WHEN kind = 'counter' AND s_ns = t0 AND e_ns = t1 THEN delta
               WHEN kind = 'counter' THEN delta * (e_ns - s_ns) / (t1 - t0)
               ELSE ((v0 + (v1 - v0) * (s_ns - t0) / (t1 - t0))
                     + (v0 + (v1 - v0) * (e_ns - t0) / (t1 - t0))) / 2.0
                    * (e_ns - s_ns) * 1e-9
           END AS part_native,
           CASE
               WHEN kind = 'counter' AND NOT edge AND delta IS NULL THEN 0
               WHEN t1 - t0 <= 4 * period_ns OR edge THEN greatest(0, e_ns - s_ns)
               ELSE greatest(0, least(t0 + 2 * period_ns, e_ns) - s_ns)
                    + greatest(0, e_ns - greatest(t1 - 2 * period_ns, s_ns))
           END
           + greatest(0, least(t1 + trailing_ns, end_ns) - greatest(t1, start_ns))
               AS covered_ns
    FROM cut
)
SELECT w.window_id, w.channel_id,
       sum(p.part_native) AS energy_native,
       sum(p.part_native) * any_value(p.scale_si) AS energy_j,
       coalesce(least(1.0, coalesce(sum(p.covered_ns), 0) / nullif(w.end_ns - w.start_ns, 0)), 0.0)
            AS coverage,
       coalesce(count_if(p.negative AND p.delta IS NOT NULL), 0) AS wraps,
       coalesce(count_if(p.negative AND p.delta IS NULL), 0) AS resets,
       coalesce(count_if(NOT p.edge), 0) AS intervals
FROM win w LEFT JOIN parts p
  ON p.window_id = w.window_id AND p.channel_id = w.channel_id
GROUP BY w.window_id, w.channel_id, w.start_ns, w.end_ns
"""


@dataclass(frozen=True)
class Window:
    window_id: int
    channel_id: int
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class WindowEnergy:
    window_id: int
    channel_id: int
    energy_native: float | None
    energy_j: float | None
    coverage: float
    wraps: int
    resets: int
    intervals: int


def window_energy(
    con: duckdb.DuckDBPyConnection, windows: Sequence[Window]
) -> dict[tuple[int, int], WindowEnergy]:
    """Energy of each (window, channel), keyed by (window_id, channel_id)."""
    if not windows:
        return {}
    table = pa.table(
        {
            "window_id": pa.array([w.window_id for w in windows], pa.int64()),
            "channel_id": pa.array([w.channel_id for w in windows], pa.int32()),
            "start_ns": pa.array([w.start_ns for w in windows], pa.int64()),
            "end_ns": pa.array([w.end_ns for w in windows], pa.int64()),
        }
    )
    cursor = con.cursor()
    try:
        cursor.register("greenmon_windows", table)
        rows = cursor.execute(window_energy_sql("greenmon_windows")).fetchall()
    finally:
        cursor.close()
    return {
        (int(r[0]), int(r[1])): WindowEnergy(
            window_id=int(r[0]),
            channel_id=int(r[1]),
            energy_native=None if r[2] is None else float(r[2]),
            energy_j=None if r[3] is None else float(r[3]),
            coverage=float(r[4]),
            wraps=int(r[5]),
            resets=int(r[6]),
            intervals=int(r[7]),
        )
        for r in rows
    }
