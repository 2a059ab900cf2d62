"""Energy over a time window, computed in DuckDB over raw samples.

Terms:
- *window*: ``[start_ns, end_ns]`` on the monotonic clock, for one channel (a phase of a
  unit, a user's question).
- *interval*: two consecutive samples of a channel ``(t0, v0) -> (t1, v1)``.
- *counter* channels (RAPL ``energy_uj``, NVML mJ, EnergiBridge J, NETIO Wh): energy is the
  sum of counter deltas (greenmon/sources.py: a negative step is a wrap when the channel's
  metadata gives ``counter_range``, else a reset, whose interval's energy is unknown and
  does not count as covered).
- *edge*: how a window's edges were met, per channel (column ``edge``).  ``read``: the
  counter was read at the very instant of both edges (the daemon's edge reads,
  greenmon/sampling.py), so the window's energy is the exact wrap-corrected difference of
  those two readings, with no interpolation, and its coverage is whole (the counter
  counted all along; a reset still leaves it unknown).  ``interpolated``: a counter that
  cannot be asked (EnergiBridge's stream, an older file) has the interval at each edge cut
  by linear interpolation, so the window's energy does not depend on where samples fell,
  but a power step between the last sample and the edge is spread over the interval.
  ``integrated``: a gauge.
- *gauge* power channels (W, mW): the trapezoid integral of the piecewise-linear power,
  cut at the window's edges the same way.  Used only where no counter exists.  A gauge
  whose every sample is the mean over the interval since the previous one (metadata
  ``interval_mean``: the host's CPU utilisation from tick counters, the estimate built on
  it) is a step instead, each value holding over the interval that ends at it, so with
  samples at a window's edges its mean over the window is exactly the ticks' between them.
- *coverage*: the share of the window whose energy the samples give (whole for a counter
  with ``edge`` = ``read`` and no reset): all of an interval up
  to four periods long, the two periods at either end of a longer gap, none of a reset
  interval, and nothing before the first sample or after the last (no energy is counted
  there either).  A probe that stalled shows up as coverage below 1 rather than as
  silent zeros.
- *wraps*, *resets*: the wrapped or reset intervals a window takes energy from, including
  one that a window edge cuts.
- *edge gap* (column ``edge_gap_ns``): the farther of the window's two edges from the
  channel's nearest sample, 0 when both were read (an edge beyond the samples cuts no
  interval and counts none).  Where an edge cuts an interval, how the interval's energy
  splits at the edge is not known; whichever way, the error is at most the power's swing
  times the part on the edge's shorter side, so that part, not the interval, is what the
  window cannot place (greenmon/sources.py ``window_resolution_sql`` judges a window by
  it).

Everything here is one SQL query: a window function for intervals and ASOF joins of the
windows' edges to them, so it runs over tens of millions of samples in DuckDB.  Which
channels a result asks about is greenmon/sources.py's rule, applied by greenmon/views.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from greenmon.sources import (
    counter_delta_sql,
    counter_range_sql,
    interval_mean_sql,
    scale_to_si_sql,
)

# Samples this far outside a window are read so that its edges can be interpolated.
EDGE_MARGIN_PERIODS = 10
EDGE_MARGIN_MIN_NS = 5_000_000_000


def _interval_after(row: str, channel: str) -> str:
    """SQL columns for the interval from sample ``row`` to the next one: wrap_next,
    reset_next and e_next (its energy in the channel's native unit)."""
    r, c = row, channel
    return f"""coalesce({c}.kind = 'counter' AND {r}.next_v < {r}.value
                    AND {c}.counter_range IS NOT NULL, false) AS wrap_next,
           coalesce({c}.kind = 'counter' AND {r}.next_v < {r}.value
                    AND {c}.counter_range IS NULL, false) AS reset_next,
           CASE
               WHEN {r}.next_t IS NULL THEN 0.0
               -- a reset interval's energy is unknown: none is counted (nor covered)
               WHEN {c}.kind = 'counter'
                   THEN coalesce({counter_delta_sql(f"{r}.value", f"{r}.next_v",
                                                    f"{c}.counter_range")}, 0.0)
               -- a mean over the interval ending at each sample: a step back in time
               WHEN {c}.interval_mean THEN {r}.next_v * ({r}.next_t - {r}.t_ns) * 1e-9
               ELSE ({r}.value + {r}.next_v) / 2.0 * ({r}.next_t - {r}.t_ns) * 1e-9
           END AS e_next"""


def window_energy_sql(windows: str, sample_filter: str = "") -> str:
    """SQL computing energy per (window_id, channel_id) for the relation ``windows``
    (``window_integral_sql``, whose integral of an energy channel is its energy in the
    channel's own unit: column ``energy_native``)."""
    return window_integral_sql(windows, sample_filter, native_column="energy_native")


def window_integral_sql(
    windows: str, sample_filter: str = "", *, native_column: str = "integral_native"
) -> str:
    # Long on purpose: one SQL statement whose CTEs build on each other, read best whole.
    """SQL computing, per (window_id, channel_id) of the relation ``windows``, the
    integral of each channel over its window: a counter's increase, a gauge's trapezoid
    integral over time.  For an energy channel that is its energy; for a utilisation
    gauge (%) it is percent-seconds, whose mean over the window is the integral divided
    by the window's length (greenmon/views.py).

    ``sample_filter`` (an SQL condition on ``s``, the samples) may narrow the samples read
    beforehand with constants DuckDB can check against each row group's zone map; it must
    keep every sample within the windows' edge margins (``EDGE_MARGIN_*``).

    ``windows`` must name a relation with columns window_id, channel_id, start_ns, end_ns.
    Output columns: window_id, channel_id, ``native_column`` (the integral in the
    channel's unit, times seconds for gauges), energy_j (that integral in joules for an
    energy channel, NULL for any other unit), coverage, wraps, resets, intervals, edge
    (``read``, ``interpolated`` or ``integrated``) and edge_gap_ns (the module's terms).

    How: one ordered pass over the samples gives, at every sample, the cumulative energy
    C(t) and the cumulative covered time Cov(t) since the first sample.  Both are
    continuous and piecewise simple between samples (linear for counters and coverage,
    quadratic for the trapezoid of a linear power), so a window's energy is C(end) -
    C(start), with each edge found by an ASOF join to the sample at or before it.  That
    costs one sort of the samples however many windows are asked, where a range join of
    windows against intervals grew with windows x samples.
    """
    return f"""
WITH win AS (SELECT window_id, channel_id, start_ns, end_ns FROM {windows}),
ch AS (
    SELECT channel_id, kind, period_ns,
           {interval_mean_sql("channels")} AS interval_mean,
           {scale_to_si_sql()} AS scale_si,
           {counter_range_sql("channels")} AS counter_range
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
    WHERE s.value IS NOT NULL {("AND " + sample_filter) if sample_filter else ""}
),
seq AS (
    SELECT channel_id, t_ns, value,
           lead(t_ns) OVER w AS next_t, lead(value) OVER w AS next_v,
           row_number() OVER w AS rn
    FROM pts
    WINDOW w AS (PARTITION BY channel_id ORDER BY t_ns)
),
iv AS (
    -- what lies between this sample and the next: energy (native units), covered time
    SELECT s.*, c.kind, c.period_ns, c.scale_si,
           {_interval_after("s", "c")},
           CASE
               WHEN s.next_t IS NULL THEN 0
               WHEN c.kind = 'counter' AND s.next_v < s.value AND c.counter_range IS NULL
                   THEN 0
               ELSE least(s.next_t - s.t_ns, 4 * c.period_ns)
           END AS cov_next
    FROM seq s JOIN ch c USING (channel_id)
),
span AS (
    SELECT channel_id, arg_min(value, t_ns) AS first_v, min(t_ns) AS first_t,
           max(t_ns) AS last_t
    FROM pts GROUP BY channel_id
),
-- Intervals that are not plain counter steps: wraps, resets, gaps longer than four
-- periods, and every gauge interval.  Only these need a running sum; for the plain rest,
-- a counter's own value is its cumulative energy and time itself is cumulative coverage.
ev AS (
    SELECT channel_id, t_ns,
           CASE WHEN kind = 'counter' THEN e_next - (next_v - value) ELSE e_next END
               AS d_energy,
           (next_t - t_ns) - cov_next AS d_uncovered,
           wrap_next::INTEGER AS d_wraps, reset_next::INTEGER AS d_resets
    FROM iv
    WHERE next_t IS NOT NULL
      AND (kind <> 'counter' OR wrap_next OR reset_next OR next_t - t_ns > 4 * period_ns)
),
evc AS (
    SELECT channel_id, t_ns,
           sum(d_energy) OVER w AS c_energy, sum(d_uncovered) OVER w AS c_uncovered,
           sum(d_wraps) OVER w AS c_wraps, sum(d_resets) OVER w AS c_resets
    FROM ev
    WINDOW w AS (PARTITION BY channel_id ORDER BY t_ns ROWS UNBOUNDED PRECEDING)
),
edges AS (
    SELECT window_id, channel_id, start_ns AS x, 0 AS side FROM win
    UNION ALL
    SELECT window_id, channel_id, end_ns AS x, 1 AS side FROM win
),
edge_row AS (
    -- the sample at or before each edge; the ASOF join reads only the narrow ordered
    -- columns (sorting 50 million wide rows cost more than the rest of the query), and
    -- the interval after that sample is worked out again for these few rows
    SELECT e.window_id, e.channel_id, e.side, e.x, c.t_ns, c.value, c.next_t, c.next_v,
           c.rn, ch.kind, ch.period_ns, ch.interval_mean,
           {_interval_after("c", "ch")}
    FROM edges e
    JOIN ch ON ch.channel_id = e.channel_id
    ASOF LEFT JOIN (SELECT channel_id, t_ns, value, next_t, next_v, rn FROM seq) c
      ON c.channel_id = e.channel_id AND e.x >= c.t_ns
),
at_edge AS (
    SELECT r.window_id, r.channel_id, r.side, r.rn, r.kind,
           coalesce(r.t_ns = r.x, false) AS at_sample,
           -- wraps and resets of the intervals wholly before the edge; the interval an
           -- end edge cuts counts as inside the window, the one a start edge cuts too
           -- (it is left out of the start's count): a window counts every interval it
           -- takes energy from
           coalesce(v.c_wraps, 0)
               + coalesce((r.side = 1 AND r.wrap_next AND r.x > r.t_ns)::INTEGER, 0)
               AS wraps_at,
           coalesce(v.c_resets, 0)
               + coalesce((r.side = 1 AND r.reset_next AND r.x > r.t_ns)::INTEGER, 0)
               AS resets_at,
           -- C(x): cumulative energy since the first sample
           CASE WHEN r.t_ns IS NULL THEN 0.0 ELSE
               CASE WHEN r.kind = 'counter' THEN r.value - sp.first_v ELSE 0.0 END
               + coalesce(v.c_energy, 0.0)
               + CASE
                   WHEN r.next_t IS NULL OR r.x = r.t_ns THEN 0.0
                   WHEN r.kind = 'counter' THEN r.e_next * (r.x - r.t_ns) / (r.next_t - r.t_ns)
                   WHEN r.interval_mean THEN r.next_v * (r.x - r.t_ns) * 1e-9
                   ELSE (r.value + (r.value + (r.next_v - r.value) * (r.x - r.t_ns)
                                    / (r.next_t - r.t_ns))) / 2.0 * (r.x - r.t_ns) * 1e-9
                 END
           END AS energy_at,
           -- Cov(x): covered time since the first sample; nothing before the first
           -- sample or after the last is covered, as no energy is counted there
           CASE
               WHEN r.t_ns IS NULL THEN 0.0
               ELSE (r.t_ns - sp.first_t) - coalesce(v.c_uncovered, 0)
                    + CASE
                        WHEN r.next_t IS NULL THEN 0
                        WHEN r.reset_next THEN 0
                        WHEN r.next_t - r.t_ns <= 4 * r.period_ns THEN r.x - r.t_ns
                        ELSE least(r.x - r.t_ns, 2 * r.period_ns)
                             + greatest(0, r.x - (r.next_t - 2 * r.period_ns))
                      END
           END AS cov_at,
           -- an edge before the first sample or after the last cuts no interval: what
           -- lies beyond is not counted, and coverage says so
           CASE WHEN r.next_t IS NOT NULL THEN least(r.x - r.t_ns, r.next_t - r.x)
           END AS gap_ns,
           ch.scale_si
    FROM edge_row r
    JOIN ch ON ch.channel_id = r.channel_id
    LEFT JOIN span sp ON sp.channel_id = r.channel_id
    ASOF LEFT JOIN evc v ON v.channel_id = r.channel_id AND r.t_ns > v.t_ns
)
SELECT w.window_id, w.channel_id,
       CASE WHEN sp.first_t IS NULL OR w.end_ns <= sp.first_t OR w.start_ns >= sp.last_t
            THEN NULL ELSE b.energy_at - a.energy_at END AS {native_column},
       CASE WHEN sp.first_t IS NULL OR w.end_ns <= sp.first_t OR w.start_ns >= sp.last_t
            THEN NULL ELSE (b.energy_at - a.energy_at) * b.scale_si END AS energy_j,
       CASE WHEN sp.first_t IS NULL OR w.end_ns <= w.start_ns THEN 0.0
            -- read at both edges: the counter's difference is the whole window's energy
            WHEN a.kind = 'counter' AND a.at_sample AND b.at_sample
                 AND b.resets_at = a.resets_at THEN 1.0
            ELSE greatest(0.0, least(1.0, (b.cov_at - a.cov_at) / (w.end_ns - w.start_ns)))
       END AS coverage,
       b.wraps_at - a.wraps_at AS wraps,
       b.resets_at - a.resets_at AS resets,
       coalesce(b.rn, 0) - coalesce(a.rn, 0) AS intervals,
       CASE WHEN a.kind <> 'counter' THEN 'integrated'
            WHEN a.at_sample AND b.at_sample THEN 'read'
            ELSE 'interpolated' END AS edge,
       greatest(a.gap_ns, b.gap_ns) AS edge_gap_ns
FROM win w
LEFT JOIN span sp ON sp.channel_id = w.channel_id
JOIN at_edge a ON a.window_id = w.window_id AND a.channel_id = w.channel_id AND a.side = 0
JOIN at_edge b ON b.window_id = w.window_id AND b.channel_id = w.channel_id AND b.side = 1
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
    edge: str = "interpolated"
    edge_gap_ns: int | None = None


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
            edge=str(r[8]),
            edge_gap_ns=None if r[9] is None else int(r[9]),
        )
        for r in rows
    }
