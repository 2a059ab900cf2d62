"""Energy sources: which channel answers for a domain, and how readings become power.

Every surface that shows energy or power asks here: the result views (greenmon/views.py,
through the ``energy_sources`` view), the report's figures (greenmon/analysis/plots.py),
the live power of the TUI and of the ``greenmon run`` progress line
(greenmon/livepower.py), Prometheus metrics (greenmon/metrics.py) and the energy
arithmetic itself (greenmon/energy.py).  No database or vendor library is imported here:
the rules are plain Python and SQL text.

Terms:
- *domain*: what a channel's energy belongs to: ``cpu`` (the CPU package), ``dram``,
  ``gpu``, ``wall`` (the socket).
- *energy channel*: a counter in an energy unit (uJ, mJ, J, Wh, kWh) or a gauge in a
  power unit (uW, mW, W).
- *source*: the channels that answer for a domain in a session.  When several probes
  could, measured comes before estimated, then the direct sources (RAPL, NVML, the
  wattmeter) before EnergiBridge, then the rest; within the chosen probe, fine counters
  before power gauges before coarse counters (NETIO's Wh steps of 3600 J).  Every channel
  of that kind of the chosen probe counts (two packages of a two-socket machine add up).
  Probes that read different devices of one domain (NVML the NVIDIA GPUs, amdsmi the AMD
  ones: ``DEVICE_SPLIT_PROBES``) answer together when more than one has measured channels
  for it, each with its own best kind, so a machine with both GPUs adds both.
- *counter delta*: the increase of a counter between two readings, in its own unit: a
  negative step is a wrap when the channel's ``counter_range`` metadata says where it
  wraps (the range is added back once), else a reset, whose delta is unknown.
- *interval power*: a counter's delta over the time between its readings, or a power
  gauge's reading, in watts.
"""

from __future__ import annotations

DOMAINS = ("cpu", "dram", "gpu", "wall")

# Multiplier from a channel's unit to joules (counters) or watts (power gauges).
SCALE_TO_SI: dict[str, float] = {
    "uJ": 1e-6, "mJ": 1e-3, "J": 1.0, "Wh": 3600.0, "kWh": 3600000.0,
    "uW": 1e-6, "mW": 1e-3, "W": 1.0,
}  # fmt: skip
ENERGY_UNITS = ("uJ", "mJ", "J", "Wh", "kWh")
POWER_UNITS = ("uW", "mW", "W")
FINE_COUNTER_UNITS = ("uJ", "mJ", "J")

# Probes that read the hardware directly rank before EnergiBridge (a wrapper around the
# same counters); any other probe ranks last.
PROBE_RANK: dict[str, int] = {
    "rapl": 0, "nvml": 0, "amdsmi": 0, "netio": 0, "energibridge": 1,
}  # fmt: skip
OTHER_PROBE_RANK = 2
# Probes that each see only their vendor's devices of a domain: never the same energy.
DEVICE_SPLIT_PROBES: dict[str, tuple[str, ...]] = {"gpu": ("nvml", "amdsmi")}
# Every probe whose channels can answer for an energy domain: the measured ones above, then
# the estimate (its figures are estimated).  The plan check reads it for the slowest source.
ENERGY_PROBES = (*PROBE_RANK, "estimate")
# Probes the sampling thread reads at every edge (sampling.py EdgeDesk) whose energy is
# exact between two reads: counters, and the estimate (the mean since its previous read),
# so how often they are polled does not limit how short a window may be.  EnergiBridge
# streams on its own thread and NETIO answers over HTTP: their edges are interpolated.
EDGE_READ_PROBES = ("rapl", "nvml", "amdsmi", "estimate")


def scale_to_si_sql(unit: str = "unit") -> str:
    """SQL: the multiplier to joules or watts of the unit in column ``unit``."""
    cases = " ".join(f"WHEN '{u}' THEN {scale!r}" for u, scale in SCALE_TO_SI.items())
    return f"CASE {unit} {cases} ELSE NULL END"


def counter_range_sql(alias: str = "c") -> str:
    """SQL: where channel ``alias``'s counter wraps (NULL: it resets instead)."""
    return f"TRY_CAST(json_extract_string({alias}.metadata, '$.counter_range') AS DOUBLE)"


def interval_mean_sql(alias: str = "c") -> str:
    """SQL: channel ``alias`` is a gauge whose every sample is its mean over the interval
    since the previous sample (metadata ``interval_mean``, greenmon/energy.py)."""
    return (
        f"coalesce(TRY_CAST(json_extract({alias}.metadata, '$.interval_mean') AS BOOLEAN), "
        "false)"
    )


def window_resolution_sql(source: str = "es", edge_gap_ns: str = "e.edge_gap_ns") -> str:
    """SQL: the time resolution, in ns, of a window over the energy source ``source`` (a
    row of ``energy_sources``) whose farther edge lies ``edge_gap_ns`` from a sample of it
    (greenmon/energy.py's edge gap; 0 where both edges were read).

    The one rule behind ``short_window`` and ``short_steady_state`` (greenmon/views.py: a
    window shorter than MIN_WINDOW_PERIODS of it) and the plan check's shortest measure.
    Whatever happened at the edges, a source resolves time no finer than its own
    ``edge_period_ns`` (below); where an edge was not read, the part of the interval it
    cuts on its shorter side is energy the samples cannot place, so the window resolves
    no finer than that either.  So, by kind of source:
    - a counter read at both edges (RAPL, NVML, amdsmi): its hardware update period;
    - the estimate read at both edges (a mean since its previous read, so a counter's
      difference): the kernel's tick it is computed from, not its 1 Hz polling;
    - the same cut between samples (EnergiBridge's stream, a steady-state window, whose
      edges are request times): that update period or the edge gap, whichever is longer;
    - a power gauge (NVML power, NETIO): its sampling period, read at the edges or not,
      as the trapezoid between samples is what gives its energy.
    The gap, not a yes/no "read at both edges", because an edge read can come back empty:
    the estimate read again within one tick of its previous read (a phase's start right
    after the previous phase's end) has no new tick to say anything about, and that edge
    then lies those few ms from the previous read, which is all it cannot place."""
    return f"greatest({source}.edge_period_ns, {edge_gap_ns})"


def is_energy_channel(kind: str, unit: str) -> bool:
    return unit in ENERGY_UNITS if kind == "counter" else kind == "gauge" and unit in POWER_UNITS


def energy_channel_sql(alias: str = "c") -> str:
    """SQL: channel ``alias`` is an energy channel (``is_energy_channel``)."""
    c = alias
    return (
        f"(({c}.kind = 'counter' AND {c}.unit IN {ENERGY_UNITS!r}) "
        f"OR ({c}.kind = 'gauge' AND {c}.unit IN {POWER_UNITS!r}))"
    )


def _rank_sql(column: str, ranks: dict[str, int], other: int) -> str:
    cases = " ".join(f"WHEN '{key}' THEN {rank}" for key, rank in ranks.items())
    return f"CASE {column} {cases} ELSE {other} END"


def _device_split_sql() -> str:
    """SQL: candidate ``c`` answers beside the chosen probe ``b.probe`` because both read
    different devices of the domain (``DEVICE_SPLIT_PROBES``) and ``c`` is measured."""
    terms = [
        f"(c.domain = '{domain}' AND NOT c.estimated AND c.probe IN {probes!r} "
        f"AND b.probe IN {probes!r})"
        for domain, probes in DEVICE_SPLIT_PROBES.items()
    ]
    return " OR ".join(terms) or "FALSE"


# The time resolution the samples really have: the sampling period, or the sensor's
# detected update period where it is slower (greenmon/update_periods.py).
_SAMPLED_PERIOD = """greatest(c.period_ns,
                TRY_CAST(json_extract_string(c.metadata, '$.update_period_ns') AS BIGINT))"""

# The body of the ``energy_sources`` view (greenmon/views.py): one row per source channel
# with its session, domain, probe, name, kind, unit, estimated, period_ns, counter_range
# and edge_period_ns.
ENERGY_SOURCES_SQL = f"""
WITH cand AS (
    SELECT c.*,
           CASE WHEN c.kind = 'counter' AND c.unit IN {FINE_COUNTER_UNITS!r} THEN 0
                WHEN c.kind = 'gauge' THEN 1 ELSE 2 END AS kind_rank,
           {_rank_sql("c.probe", PROBE_RANK, OTHER_PROBE_RANK)} AS probe_rank
    FROM channels c
    WHERE c.domain IN {DOMAINS!r} AND {energy_channel_sql("c")}
),
best_probe AS (
    SELECT session_id, domain, arg_min(probe, estimated::INTEGER * 10 + probe_rank) AS probe
    FROM cand GROUP BY session_id, domain
),
chosen AS (
    SELECT DISTINCT c.session_id, c.domain, c.probe
    FROM cand c JOIN best_probe b USING (session_id, domain)
    WHERE c.probe = b.probe OR ({_device_split_sql()})
),
best_kind AS (
    SELECT c.session_id, c.domain, c.probe, min(c.kind_rank) AS kind_rank
    FROM cand c JOIN chosen b USING (session_id, domain, probe)
    GROUP BY c.session_id, c.domain, c.probe
)
SELECT c.session_id, c.domain, c.channel_id, c.probe, c.name, c.kind, c.unit, c.estimated,
       {_SAMPLED_PERIOD} AS period_ns,
       {counter_range_sql("c")} AS counter_range,
       -- the time resolution of the source at a read edge (window_resolution_sql): for a
       -- counter, or a mean since the previous read, how often the quantity it counts
       -- changes (declared by the probe), whatever the polling rate; for a power gauge,
       -- how often it is sampled, as between samples its power is interpolated
       coalesce(CASE WHEN c.kind = 'counter' OR {interval_mean_sql("c")} THEN
                    TRY_CAST(json_extract_string(c.metadata, '$.counter_update_ns') AS BIGINT)
                END,
                {_SAMPLED_PERIOD}) AS edge_period_ns
FROM cand c JOIN best_kind b USING (session_id, domain, probe, kind_rank)
"""


# -- counter to power ---------------------------------------------------------------------
def counter_delta(before: float, after: float, counter_range: float | None) -> float | None:
    """A counter's increase from ``before`` to ``after`` in its unit, or None (a reset)."""
    delta = after - before
    if delta >= 0:
        return delta
    return None if counter_range is None else delta + counter_range


def counter_delta_sql(before: str, after: str, counter_range: str) -> str:
    """SQL: ``counter_delta`` of the columns or expressions given (NULL for a reset)."""
    return (
        f"CASE WHEN {after} >= {before} THEN {after} - {before} "
        f"WHEN {counter_range} IS NOT NULL THEN {after} - {before} + {counter_range} END"
    )


def interval_power_w(
    kind: str,
    unit: str,
    counter_range: float | None,
    previous: tuple[int, float] | None,
    current: tuple[int, float],
) -> float | None:
    """Power at reading ``current`` (t_ns, value): a counter's rate since ``previous``
    (None without one, when no time passed, or after a reset), a power gauge's value."""
    scale = SCALE_TO_SI[unit]
    if kind != "counter":
        return current[1] * scale
    if previous is None or current[0] <= previous[0]:
        return None
    delta = counter_delta(previous[1], current[1], counter_range)
    return None if delta is None else delta * scale / ((current[0] - previous[0]) / 1e9)


def interval_power_sql(
    *, kind: str, unit: str, counter_range: str, value: str, t_ns: str, order: str
) -> str:
    """SQL: ``interval_power_w`` at each sample, the previous one found by ``lag`` over the
    window named ``order`` (samples of one channel ordered by time)."""
    delta = counter_delta_sql(f"lag({value}) OVER {order}", value, counter_range)
    return (
        f"(CASE WHEN {kind} = 'counter' "
        f"THEN ({delta}) / (nullif({t_ns} - lag({t_ns}) OVER {order}, 0) / 1e9) "
        f"ELSE {value} END * {scale_to_si_sql(unit)})"
    )
