"""Result views: what users query.  Views, not tables, so old runs answer new questions.

Terms:
- *relation*: a view or a table macro, (re)created by ``ensure_views`` when a database is
  opened read-write and its relations are not this greenmon's (``VIEWS_HASH``), so a
  newer greenmon improves the results of old files without a migration.  ``REGISTRY``
  lists them in the order they are created: a view binds what it reads when it is
  created, so it comes after the relations it reads.
- *energy source*: the channel that answers for a domain (``energy_sources``, the rule in
  greenmon/sources.py); every result's energy comes from those channels only.
- *selection*: which units a results macro (``*_sel``) computes, and which samples it may
  read (``_selected``, ``_SAMPLE_RANGE``); ``*_for(exp)`` macros compute one experiment,
  and the views of the same names without ``_for`` compute every experiment.
- *materialised results*: rows of ``unit_results_sel`` stored when a unit ends
  (``unit_results_done``), valid while the rules that computed them are these
  (``RULES_HASH``).

The energy arithmetic itself lives in greenmon/energy.py; views only decide which windows
and channels to ask it about.  Long bodies with no Python in them live in greenmon/sql/.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files

import duckdb

from greenmon._version import __version__ as greenmon_version
from greenmon.energy import window_energy_sql, window_integral_sql
from greenmon.sources import (
    ENERGY_SOURCES_SQL,
    energy_channel_sql,
    interval_power_sql,
    window_resolution_sql,
)
from greenmon.thresholds import (
    DEFAULT_BACKGROUND_CPU_PERCENT_MAX,
    MIN_COVERAGE,
    MIN_WINDOW_PERIODS,
    WALL_TOLERANCE,
)


def _sql_file(name: str) -> str:
    """The SQL of greenmon/sql/``name``.sql (shipped in the wheel as package data)."""
    return files("greenmon").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


# Every energy channel of a phase's session, as an energy window.
_PHASE_WINDOWS = f"""
SELECT p.phase_id AS window_id, c.channel_id, p.start_ns, p.end_ns
FROM phases p JOIN channels c ON c.session_id = p.session_id
WHERE p.end_ns IS NOT NULL AND c.domain IS NOT NULL AND {energy_channel_sql("c")}
"""

# Energy of every such channel over every phase (all channels, not only the sources).
_PHASE_CHANNEL_ENERGY = f"""
SELECT p.experiment_id, p.unit_id, p.attempt, p.phase, p.phase_id,
       (p.end_ns - p.start_ns) / 1e9 AS duration_s,
       c.channel_id, c.probe, c.name AS channel, c.domain, c.kind, c.estimated,
       e.energy_j, e.coverage, e.wraps, e.resets, e.intervals
FROM ({window_energy_sql("phase_windows")}) e
JOIN phases p ON p.phase_id = e.window_id
JOIN channels c ON c.channel_id = e.channel_id
"""

# The utilisation gauges the results average (one quantity per channel; NULL: none).
_UTILISATION_CHANNELS = _sql_file("utilisation_channels")

# The samples a results macro may read: between ``lo_ns`` and ``hi_ns`` when given.  Passed
# as literals (Store.materialise_unit_results), they fold into constants that DuckDB
# checks against each row group's min/max t_ns (zone maps), so one unit's results read
# that unit's row groups instead of scanning every sample; NULL folds to no filter.
_SAMPLE_RANGE = "(lo_ns IS NULL OR s.t_ns >= lo_ns) AND (hi_ns IS NULL OR s.t_ns <= hi_ns)"


def _selected(alias: str) -> str:
    """Which units a results macro computes: those of experiment ``exp`` (NULL: all), only
    unit ``only_unit`` when given (not ``unit``: a column of channels, which a macro
    parameter of that name would shadow), and, with ``skip_cached``, only those without a
    valid materialised row (``unit_results_valid``).  Every relation that feeds the
    results (phases, requests, units) is filtered the same way, so the samples read are
    only those of the selected units' time ranges."""
    return (
        f"(exp IS NULL OR {alias}.experiment_id = exp) "
        f"AND (only_unit IS NULL OR {alias}.unit_id = only_unit) "
        f"AND NOT (skip_cached AND EXISTS (SELECT 1 FROM unit_results_valid v "
        f"WHERE v.experiment_id = {alias}.experiment_id AND v.unit_id = {alias}.unit_id))"
    )


# the steady-state window of a unit's measure, as ML.ENERGY defines it for a
# closed loop: from the moment every concurrent slot is busy (the start of the N-th
# request, N = the unit's concurrency; 1 without one, and for an open loop, whose
# arrivals have no slots) until the first slot drains (the first request to end after
# the last request started: from then on fewer than N are in flight for good).  Tokens
# in the window are each request's tokens prorated by the share of its lifetime
# [start, end] inside the window (work spread evenly over a request's life, which is
# also right for a server that streams only after generating).  Its energy comes from
# the same pass over the samples as the phases' (window -phase_id of the measure, shown
# as phase 'steady' in unit_phase_energy), so it costs no second sort of the samples.
_STEADY_REQUESTS = f"""
SELECT q.experiment_id, q.unit_id, q.attempt, q.start_ns, q.end_ns, q.tokens_out,
       row_number() OVER g AS nth,
       max(q.start_ns) OVER (PARTITION BY q.experiment_id, q.unit_id, q.attempt)
           AS last_start_ns,
       CASE WHEN json_extract(u.factors, '$.request_rate_hz') IS NOT NULL THEN 1
            ELSE coalesce(TRY_CAST(json_extract(u.factors, '$.concurrency') AS INTEGER), 1)
       END AS slots
FROM requests q JOIN units u USING (experiment_id, unit_id)
WHERE q.phase = 'measure' AND {_selected("q")}
WINDOW g AS (PARTITION BY q.experiment_id, q.unit_id, q.attempt ORDER BY q.start_ns, q.end_ns)
"""

_STEADY_EDGES = f"""
SELECT experiment_id, unit_id, attempt,
       max(start_ns) FILTER (WHERE nth = slots) AS steady_start_ns,
       min(end_ns) FILTER (WHERE end_ns >= last_start_ns) AS steady_end_ns
FROM ({_STEADY_REQUESTS}) GROUP BY ALL
"""

_UNIT_STEADY = f"""
WITH steady_edges AS ({_STEADY_EDGES}),
steady_tokens AS (
    SELECT r.experiment_id, r.unit_id, r.attempt,
           sum(r.tokens_out * greatest(0, least(r.end_ns, e.steady_end_ns)
                                          - greatest(r.start_ns, e.steady_start_ns))
               / nullif(r.end_ns - r.start_ns, 0)) AS steady_tokens
    FROM ({_STEADY_REQUESTS}) r JOIN steady_edges e USING (experiment_id, unit_id, attempt)
    GROUP BY ALL
)
SELECT e.experiment_id, e.unit_id, e.attempt, e.steady_start_ns, e.steady_end_ns,
       (e.steady_end_ns - e.steady_start_ns) / 1e9 AS steady_s, t.steady_tokens
FROM steady_edges e LEFT JOIN steady_tokens t USING (experiment_id, unit_id, attempt)
"""

_SOURCE_WINDOWS = f"""(
    SELECT p.phase_id AS window_id, es.channel_id, p.start_ns, p.end_ns
    FROM phases p JOIN energy_sources es ON es.session_id = p.session_id
    WHERE p.end_ns IS NOT NULL AND {_selected("p")}
    UNION ALL
    -- each measure's steady-state window, as window -phase_id
    SELECT -p.phase_id AS window_id, es.channel_id, e.steady_start_ns, e.steady_end_ns
    FROM ({_STEADY_EDGES}) e
    JOIN phases p USING (experiment_id, unit_id, attempt)
    JOIN energy_sources es ON es.session_id = p.session_id
    WHERE p.phase = 'measure' AND p.end_ns IS NOT NULL
      AND e.steady_end_ns > e.steady_start_ns
)"""

# How finely each source channel resolves its window in time: greenmon/sources.py's rule
# (the source's own update period, or the edge gap where an edge was not read).
_RESOLUTION = window_resolution_sql("es", "e.edge_gap_ns")
# How a domain's edges were met: 'interpolated' if any of its channels was (a stream that
# cannot be asked, EnergiBridge), else 'read' where counters were read at the edges.
_EDGE_OF_DOMAIN = """CASE WHEN bool_or(e.edge = 'interpolated') THEN 'interpolated'
            WHEN bool_or(e.edge = 'read') THEN 'read' ELSE 'integrated' END"""

# Phase 'steady' is the measure's steady-state window: its duration is
# unit_steady's steady_s, so duration_s is NULL on those rows.
_UNIT_PHASE_ENERGY = f"""
SELECT p.experiment_id, p.unit_id, p.attempt,
       CASE WHEN e.window_id < 0 THEN 'steady' ELSE p.phase END AS phase, p.phase_id,
       CASE WHEN e.window_id < 0 THEN NULL ELSE (p.end_ns - p.start_ns) / 1e9 END
           AS duration_s,
       es.domain,
       sum(e.energy_j) AS energy_j, min(e.coverage) AS coverage, sum(e.wraps) AS wraps,
       sum(e.resets) AS resets, bool_or(es.estimated) AS estimated,
       max({_RESOLUTION}) AS period_ns, {_EDGE_OF_DOMAIN} AS edge
FROM ({window_energy_sql(_SOURCE_WINDOWS, _SAMPLE_RANGE)}) e
JOIN phases p ON p.phase_id = abs(e.window_id)
JOIN energy_sources es ON es.channel_id = e.channel_id
GROUP BY ALL
"""

# Idle baseline: per channel, the median power over the cooldown before the measure
# (greenmon/sources.py's interval power: a counter's wrap-corrected rate, a gauge's
# value; none across a reset), summed per domain.
# Samples are matched to their cooldown with an ASOF join keyed by channel (each phase is
# paired with each source channel of its session first), so DuckDB sorts per channel, in
# parallel, rather than one session-wide sort or a range join of samples x phases.
_BASELINE_POWER_W = interval_power_sql(
    kind="kind", unit="unit", counter_range="counter_range", value="value", t_ns="t_ns",
    order="w",
)  # fmt: skip
_UNIT_BASELINE = f"""
WITH pc AS (
    SELECT p.phase_id, p.experiment_id, p.unit_id, p.attempt, p.start_ns, p.end_ns,
           es.channel_id, es.domain, es.kind, es.unit, es.counter_range
    FROM phases p JOIN energy_sources es ON es.session_id = p.session_id
    WHERE p.phase = 'cooldown_before' AND p.end_ns IS NOT NULL
      AND {_selected("p")}
),
span AS (SELECT channel_id, min(start_ns) AS lo_ns, max(end_ns) AS hi_ns FROM pc GROUP BY ALL),
ps AS (
    SELECT pc.*, s.t_ns, s.value
    FROM (
        SELECT s.channel_id, s.t_ns, s.value FROM samples s
        JOIN span r ON r.channel_id = s.channel_id AND s.t_ns BETWEEN r.lo_ns AND r.hi_ns
    ) s
    ASOF JOIN pc ON pc.channel_id = s.channel_id AND s.t_ns >= pc.start_ns
    WHERE s.t_ns <= pc.end_ns
),
pw AS (
    SELECT experiment_id, unit_id, attempt, domain, channel_id,
           {_BASELINE_POWER_W} AS power_w
    FROM ps
    WINDOW w AS (PARTITION BY phase_id, channel_id ORDER BY t_ns)
),
per_channel AS (
    SELECT experiment_id, unit_id, attempt, domain, channel_id, median(power_w) AS median_w
    FROM pw WHERE power_w >= 0 GROUP BY ALL
)
SELECT experiment_id, unit_id, attempt,
       sum(median_w) FILTER (WHERE domain = 'cpu') AS baseline_cpu_w,
       sum(median_w) FILTER (WHERE domain = 'dram') AS baseline_dram_w,
       sum(median_w) FILTER (WHERE domain = 'gpu') AS baseline_gpu_w,
       sum(median_w) FILTER (WHERE domain = 'wall') AS baseline_wall_w
FROM per_channel GROUP BY ALL
"""

# Mean utilisation over the measured phase, time-weighted: the trapezoid integral of each
# gauge over the window (greenmon/energy.py, one sort per channel) divided by its length.
_UTILISATION_WINDOWS = f"""(
    SELECT p.phase_id AS window_id, uc.channel_id, p.start_ns, p.end_ns
    FROM phases p JOIN utilisation_channels uc ON uc.session_id = p.session_id
    WHERE p.phase = 'measure' AND p.end_ns IS NOT NULL AND uc.quantity IS NOT NULL
      AND {_selected("p")}
)"""

UTILISATION_QUANTITIES = (
    "cpu_percent",
    "ram_percent",
    "gpu_percent",
    "gpu_mem_util_percent",
    "gpu_mem_used_percent",
)


def _utilisation_means(window: str) -> str:
    """Time-weighted mean of each utilisation quantity over ``window`` (start_ns, end_ns):
    the trapezoid integral ``e.integral_native`` (percent-seconds) divided by the window's
    length."""
    return ",\n       ".join(
        f"avg(e.integral_native / (({window}.end_ns - {window}.start_ns) / 1e9)) "
        f"FILTER (WHERE uc.quantity = '{q}') AS {q}"
        for q in UTILISATION_QUANTITIES
    )


_UNIT_UTILISATION = f"""
SELECT p.experiment_id, p.unit_id, p.attempt,
       {_utilisation_means("p")}
FROM ({window_integral_sql(_UTILISATION_WINDOWS, _SAMPLE_RANGE)}) e
JOIN phases p ON p.phase_id = e.window_id
JOIN utilisation_channels uc ON uc.channel_id = e.channel_id
GROUP BY ALL
"""

# interference.  Per unit, the time-weighted mean CPU of processes outside
# greenmon's own tree (probes/host.py ``background.cpu_percent``, percent of one core) over
# the cooldown before the measure (the idle baseline) and over the measure, the most
# background processes seen on any GPU (probes/nvml.py), and the plan's threshold
# (``[cooldown] background_cpu_percent_max``; its default from greenmon/thresholds.py when the
# plan left it out).  Also a virtual machine's steal over the measure (``steal.cpu_percent``):
# not background, as no process here ran, but a measure the hypervisor slowed down.
_BACKGROUND_WINDOWS = f"""(
    SELECT p.phase_id AS window_id, c.channel_id, p.start_ns, p.end_ns
    FROM phases p JOIN channels c ON c.session_id = p.session_id
    WHERE p.phase IN ('cooldown_before', 'measure') AND p.end_ns > p.start_ns
      AND ((c.probe = 'host' AND c.name IN ('background.cpu_percent', 'steal.cpu_percent'))
           OR (c.probe = 'nvml' AND c.name LIKE '%.background_processes'))
      AND {_selected("p")}
)"""

_UNIT_BACKGROUND = f"""
WITH m AS (
    SELECT p.experiment_id, p.unit_id, p.attempt, p.phase, c.probe, c.name AS channel,
           e.integral_native / ((p.end_ns - p.start_ns) / 1e9) AS mean_value
    FROM ({window_integral_sql(_BACKGROUND_WINDOWS, _SAMPLE_RANGE)}) e
    JOIN phases p ON p.phase_id = e.window_id
    JOIN channels c ON c.channel_id = e.channel_id
)
SELECT m.experiment_id, m.unit_id, m.attempt,
       avg(mean_value) FILTER (WHERE channel = 'background.cpu_percent' AND phase = 'measure')
           AS background_cpu_percent,
       avg(mean_value) FILTER (WHERE channel = 'background.cpu_percent'
                                 AND phase = 'cooldown_before')
           AS baseline_background_cpu_percent,
       avg(mean_value) FILTER (WHERE channel = 'steal.cpu_percent' AND phase = 'measure')
           AS steal_cpu_percent,
       max(mean_value) FILTER (WHERE probe = 'nvml') AS background_gpu_processes,
       any_value(coalesce(TRY_CAST(json_extract(x.plan, '$.cooldown.background_cpu_percent_max')
                                   AS DOUBLE), {DEFAULT_BACKGROUND_CPU_PERCENT_MAX}))
           AS background_cpu_percent_max
FROM m LEFT JOIN experiments x USING (experiment_id)
GROUP BY ALL
"""

# The observer's own cost over each unit's measure: the increase of the host probe's CPU
# counters (probes/host.py), read at the phase's edges like the energy counters.
# greenmon.cpu_s is the daemon process's CPU, engines it runs in-process included;
# greenmon.sampling_cpu_s its sampling thread's, every probe's reads and nothing else.
OBSERVER_CHANNELS = ("greenmon.cpu_s", "greenmon.sampling_cpu_s")
_OBSERVER_WINDOWS = f"""(
    SELECT p.phase_id AS window_id, c.channel_id, p.start_ns, p.end_ns
    FROM phases p JOIN channels c ON c.session_id = p.session_id
    WHERE p.phase = 'measure' AND p.end_ns > p.start_ns AND c.probe = 'host'
      AND c.name IN {OBSERVER_CHANNELS!r} AND (exp IS NULL OR p.experiment_id = exp)
)"""
_OBSERVER_COST = f"""
SELECT p.experiment_id, p.unit_id, p.attempt, p.session_id,
       (p.end_ns - p.start_ns) / 1e9 AS measure_s,
       sum(e.integral_native) FILTER (WHERE c.name = 'greenmon.cpu_s') AS daemon_cpu_s,
       sum(e.integral_native) FILTER (WHERE c.name = 'greenmon.sampling_cpu_s')
           AS sampling_cpu_s
FROM ({window_integral_sql(_OBSERVER_WINDOWS)}) e
JOIN phases p ON p.phase_id = e.window_id
JOIN channels c ON c.channel_id = e.channel_id
GROUP BY ALL
"""

# The thresholds behind the validity flags live in greenmon/thresholds.py (imported above,
# and still importable from here).


def _shorter_than_resolved(duration_s: str, period_ns: str) -> str:
    """SQL: a window of ``duration_s`` is shorter than its sources resolve, ``period_ns``
    being the coarsest of their resolutions (``window_resolution_sql``)."""
    return f"{duration_s} * 1e9 < {MIN_WINDOW_PERIODS} * {period_ns}"


def _validity_flags(*, fidelity: str = "false", measured: str = "true", unit_only: str = "") -> str:
    """The ``flags`` list of a measured window (a unit's measure phase, a user's window),
    from its columns duration_s, max_period_ns (the coarsest resolution of its energy
    sources over that window), min_coverage, wraps, resets, estimated, energy_*_j and
    probe_errors; ``fidelity`` and ``measured`` are SQL conditions; ``unit_only`` adds
    CASE items that only units have columns for."""
    return f"""list_filter([
           CASE WHEN duration_s IS NOT NULL AND max_period_ns IS NOT NULL
                 AND {_shorter_than_resolved("duration_s", "max_period_ns")}
                THEN 'short_window' END,
           CASE WHEN min_coverage < {MIN_COVERAGE} THEN 'low_coverage' END,
           CASE WHEN wraps > 0 THEN 'counter_wrap' END,
           CASE WHEN resets > 0 THEN 'counter_reset' END,
           CASE WHEN estimated THEN 'estimated' END,
           CASE WHEN energy_wall_j IS NOT NULL
                 AND coalesce(energy_cpu_j, 0) + coalesce(energy_dram_j, 0)
                     + coalesce(energy_gpu_j, 0) > (1 + {WALL_TOLERANCE}) * energy_wall_j
                THEN 'wall_below_components' END,
           CASE WHEN {fidelity} THEN 'fidelity' END,
           CASE WHEN probe_errors THEN 'probe_errors' END,
           CASE WHEN {measured} AND energy_global_j IS NULL AND energy_wall_j IS NULL
                THEN 'no_energy_source' END{unit_only}
       ], lambda x: x IS NOT NULL)"""


# served units: a token count that differs from what was asked, and a steady
# state (every slot busy) shorter than the sensors allow.  A GPU measured by a
# power gauge only (no energy counter): NVML's power on recent data-centre GPUs averages
# or samples only part of each second, so its integral can miss energy; other load, here
# (background_load) or on a virtual machine's host (cpu_steal: the hypervisor kept this
# machine's CPUs from it, so the measure took longer than the work needed), above the same
# threshold.
_UNIT_ONLY_FLAGS = f""",
           CASE WHEN token_count_mismatches > 0 THEN 'token_count_mismatch' END,
           CASE WHEN failed_requests > 0 THEN 'failed_requests' END,
           CASE WHEN status = 'done' AND requests > 0 AND max_period_ns IS NOT NULL
                 AND {
    _shorter_than_resolved("coalesce(steady_s, 0)", "coalesce(steady_period_ns, max_period_ns)")
}
                THEN 'short_steady_state' END,
           CASE WHEN energy_gpu_j IS NOT NULL AND EXISTS (
                    SELECT 1 FROM units gu JOIN energy_sources ges USING (session_id)
                    WHERE gu.experiment_id = base.experiment_id AND gu.unit_id = base.unit_id
                      AND ges.domain = 'gpu' AND ges.kind = 'gauge')
                THEN 'gpu_power_gauge' END,
           CASE WHEN greatest(background_cpu_percent, baseline_background_cpu_percent)
                     > background_cpu_percent_max OR background_gpu_processes > 0
                THEN 'background_load' END,
           CASE WHEN steal_cpu_percent > background_cpu_percent_max THEN 'cpu_steal' END"""


def _domain(kind: str, domain: str) -> str:
    return f"sum(energy_j) FILTER (WHERE phase = '{kind}' AND domain = '{domain}')"


_UNIT_RESULTS = f"""
WITH pe AS (SELECT * FROM unit_phase_energy_sel(exp, only_unit, skip_cached, lo_ns, hi_ns)),
energy AS (
    SELECT experiment_id, unit_id, attempt,
           {_domain("measure", "cpu")} AS energy_cpu_j,
           {_domain("measure", "dram")} AS energy_dram_j,
           {_domain("measure", "gpu")} AS energy_gpu_j,
           {_domain("measure", "wall")} AS energy_wall_j,
           sum(energy_j) FILTER (WHERE phase = 'load' AND domain IN ('cpu', 'gpu'))
               AS load_energy_j,
           sum(energy_j) FILTER (WHERE phase = 'cooldown_after' AND domain IN ('cpu', 'gpu'))
               AS tail_energy_j,
           sum(energy_j) FILTER (WHERE phase = 'steady' AND domain IN ('cpu', 'gpu'))
               AS steady_energy_j,
           min(coverage) FILTER (WHERE phase = 'measure') AS min_coverage,
           sum(wraps) FILTER (WHERE phase = 'measure') AS wraps,
           sum(resets) FILTER (WHERE phase = 'measure') AS resets,
           bool_or(estimated) AS estimated,
           -- each window judged by its own edges: the measure's are read, the steady
           -- state's (request times) are not
           max(period_ns) FILTER (WHERE phase = 'measure') AS max_period_ns,
           max(period_ns) FILTER (WHERE phase = 'steady') AS steady_period_ns,
           list(DISTINCT domain) FILTER (WHERE estimated) AS estimated_domains,
           list(DISTINCT domain) FILTER (WHERE phase = 'measure' AND edge = 'interpolated')
               AS interpolated_domains
    FROM pe GROUP BY ALL
),
stats AS (
    SELECT * FROM unit_baseline_sel(exp, only_unit, skip_cached, lo_ns, hi_ns)
    FULL JOIN unit_utilisation_sel(exp, only_unit, skip_cached, lo_ns, hi_ns)
        USING (experiment_id, unit_id, attempt)
),
measure AS (
    SELECT experiment_id, unit_id, attempt, (end_ns - start_ns) / 1e9 AS duration_s
    FROM phases WHERE phase = 'measure' AND end_ns IS NOT NULL
      AND {_selected("phases")}
),
load AS (
    SELECT experiment_id, unit_id, attempt, (end_ns - start_ns) / 1e9 AS load_s
    FROM phases WHERE phase = 'load' AND end_ns IS NOT NULL
      AND {_selected("phases")}
),
req AS (
    SELECT experiment_id, unit_id, attempt, count(*) AS requests,
           sum(tokens_out) AS tokens_out,
           -- one engine call (a batch's forward pass for a classifier) per distinct start
           count(DISTINCT start_ns) AS inferences,
           -- latency per request (end to end), time to first token, time per
           -- output token after the first; a served request's count against what was
           -- asked and against the server's usage claim
           quantile_cont((end_ns - start_ns) / 1e9, 0.5) AS latency_p50_s,
           quantile_cont((end_ns - start_ns) / 1e9, 0.9) AS latency_p90_s,
           quantile_cont((end_ns - start_ns) / 1e9, 0.99) AS latency_p99_s,
           quantile_cont(ttft_ns / 1e9, 0.5) AS ttft_p50_s,
           quantile_cont(ttft_ns / 1e9, 0.9) AS ttft_p90_s,
           median((end_ns - start_ns - ttft_ns) / 1e9 / nullif(tokens_out - 1, 0))
               AS tpot_p50_s,
           count(*) FILTER (WHERE error IS NULL
                            AND (tokens_out <> tokens_requested
                                 OR usage_tokens_out <> tokens_out)) AS token_count_mismatches,
           -- a served request that failed or timed out (its error recorded, not retried)
           count(*) FILTER (WHERE error IS NOT NULL) AS failed_requests,
           -- quality beside energy (greenmon/quality.py); NULL when unscored
           any_value(quality_metric) AS quality_metric, avg(quality) AS quality,
           count(quality) AS quality_scored,
           count(*) FILTER (WHERE correct) AS correct_answers
    FROM requests WHERE phase = 'measure' AND {_selected("requests")}
    GROUP BY ALL
),
base AS (
    SELECT u.experiment_id, u.unit_id, u.model, u.engine, u.provider,
           u.engine || '/' || u.provider AS configuration, u.repetition, u.factors, u.status,
           u.reason, u.params, u.size_category, u.attempt, m.duration_s, l.load_s,
           r.requests, r.tokens_out, r.inferences,
           r.tokens_out / nullif(m.duration_s, 0) AS throughput_tok_s,
           r.requests / nullif(m.duration_s, 0) AS requests_per_s,
           r.latency_p50_s, r.latency_p90_s, r.latency_p99_s, r.ttft_p50_s, r.ttft_p90_s,
           r.tpot_p50_s, r.token_count_mismatches, r.failed_requests,
           st.steady_s, st.steady_tokens, e.steady_energy_j,
           e.steady_energy_j / nullif(st.steady_tokens, 0) AS steady_j_per_token,
           r.requests, r.tokens_out, r.quality_metric, r.quality, r.quality_scored,
           CASE WHEN r.quality_scored > 0 THEN r.correct_answers END AS correct_answers,
           CASE WHEN r.quality_scored > 0 THEN r.correct_answers / r.quality_scored END
               AS correct_share,
           e.energy_cpu_j, e.energy_dram_j, e.energy_gpu_j, e.energy_wall_j,
           CASE WHEN e.energy_cpu_j IS NULL AND e.energy_gpu_j IS NULL THEN NULL
                ELSE coalesce(e.energy_cpu_j, 0) + coalesce(e.energy_gpu_j, 0) END
               AS energy_global_j,
           e.energy_cpu_j - b.baseline_cpu_w * m.duration_s AS dynamic_cpu_j,
           e.energy_dram_j - b.baseline_dram_w * m.duration_s AS dynamic_dram_j,
           e.energy_gpu_j - b.baseline_gpu_w * m.duration_s AS dynamic_gpu_j,
           e.energy_wall_j - b.baseline_wall_w * m.duration_s AS dynamic_wall_j,
           b.baseline_cpu_w, b.baseline_gpu_w, b.baseline_wall_w,
           e.load_energy_j, e.tail_energy_j, e.min_coverage, e.wraps, e.resets,
           coalesce(e.estimated, false) AS estimated, e.estimated_domains, e.max_period_ns,
           e.steady_period_ns, e.interpolated_domains,
           b.cpu_percent, b.ram_percent, b.gpu_percent, b.gpu_mem_util_percent,
           b.gpu_mem_used_percent, u.fidelity_share, u.fidelity_first_divergence,
           bg.background_cpu_percent, bg.baseline_background_cpu_percent,
           bg.background_gpu_processes, bg.background_cpu_percent_max, bg.steal_cpu_percent,
           TRY_CAST(json_extract(u.load_info, '$.quiet_wait_s') AS DOUBLE) AS quiet_wait_s,
           -- a probe that failed while this unit ran: its figures may have gaps
           EXISTS (SELECT 1 FROM events ev
                   WHERE ev.session_id = u.session_id AND ev.probe IS NOT NULL
                     AND ev.level IN ('warning', 'error')
                     AND ev.t_ns BETWEEN u.started_ns AND coalesce(u.ended_ns, u.started_ns))
               AS probe_errors
    FROM units u
    LEFT JOIN measure m USING (experiment_id, unit_id, attempt)
    LEFT JOIN load l USING (experiment_id, unit_id, attempt)
    LEFT JOIN req r USING (experiment_id, unit_id, attempt)
    LEFT JOIN energy e USING (experiment_id, unit_id, attempt)
    LEFT JOIN stats b USING (experiment_id, unit_id, attempt)
    LEFT JOIN unit_steady_sel(exp, only_unit, skip_cached, lo_ns, hi_ns) st
        USING (experiment_id, unit_id, attempt)
    LEFT JOIN unit_background_sel(exp, only_unit, skip_cached, lo_ns, hi_ns) bg
        USING (experiment_id, unit_id, attempt)
    WHERE {_selected("u")}
)
SELECT *,
       CASE WHEN energy_cpu_j IS NULL AND energy_gpu_j IS NULL THEN NULL
            ELSE coalesce(dynamic_cpu_j, 0) + coalesce(dynamic_gpu_j, 0) END AS dynamic_global_j,
       energy_global_j / nullif(requests, 0) AS j_per_request,
       energy_global_j / nullif(inferences, 0) AS j_per_inference,
       energy_global_j / nullif(tokens_out, 0) AS j_per_token,
       -- energy per correct answer; NULL when none was correct (not infinite)
       energy_global_j / nullif(correct_answers, 0) AS j_per_correct,
       {
    _validity_flags(
        fidelity="fidelity_share < 1", measured="status = 'done'", unit_only=_UNIT_ONLY_FLAGS
    )
} AS flags
FROM base
"""

# a user's windows (table ``windows``), with what unit_results gives per unit
# where it applies.  ``ids`` selects windows by id (NULL: all); the baseline windows they
# name are computed with them.  Energy per domain comes from energy_sources and
# window_energy_sql, exactly as for phases; utilisation channels ride in the same query.
# The baseline of a window is the mean power of its baseline window (energy / duration)
# per domain; dynamic energy is energy minus that power times the window's duration.
_WINDOW_SELECTED = """(ids IS NULL OR list_contains(ids, w.window_id)
       OR w.window_id IN (SELECT baseline_window_id FROM windows
                          WHERE list_contains(ids, window_id)))"""

_WINDOW_CHANNELS = f"""(
    SELECT w.window_id, es.channel_id, w.start_ns, w.end_ns
    FROM windows w JOIN energy_sources es ON es.session_id = w.session_id
    WHERE w.end_ns IS NOT NULL AND {_WINDOW_SELECTED}
    UNION ALL
    SELECT w.window_id, uc.channel_id, w.start_ns, w.end_ns
    FROM windows w JOIN utilisation_channels uc ON uc.session_id = w.session_id
    WHERE w.end_ns IS NOT NULL AND uc.quantity IS NOT NULL AND {_WINDOW_SELECTED}
)"""


def _window_domain(domain: str) -> str:
    return f"sum(energy_j) FILTER (WHERE domain = '{domain}') AS energy_{domain}_j"


_WINDOW_RESULTS = f"""
WITH e AS MATERIALIZED ({window_integral_sql(_WINDOW_CHANNELS)}),
de AS (
    SELECT e.window_id, es.domain, e.energy_j, e.coverage, e.wraps, e.resets, es.estimated,
           {_RESOLUTION} AS period_ns, e.edge
    FROM e JOIN energy_sources es ON es.channel_id = e.channel_id
),
energy AS (
    SELECT window_id, {_window_domain("cpu")}, {_window_domain("dram")},
           {_window_domain("gpu")}, {_window_domain("wall")},
           min(coverage) AS min_coverage, sum(wraps) AS wraps, sum(resets) AS resets,
           bool_or(estimated) AS estimated, max(period_ns) AS max_period_ns,
           list(DISTINCT domain) FILTER (WHERE estimated) AS estimated_domains,
           list(DISTINCT domain) FILTER (WHERE edge = 'interpolated') AS interpolated_domains
    FROM de GROUP BY window_id
),
util AS (
    SELECT e.window_id, {_utilisation_means("w")}
    FROM e JOIN windows w ON w.window_id = e.window_id
    JOIN utilisation_channels uc ON uc.channel_id = e.channel_id
    GROUP BY e.window_id
),
figures AS MATERIALIZED (
    SELECT w.window_id, w.session_id, w.name, w.kind, w.tags, w.start_ns, w.end_ns,
           (w.end_ns - w.start_ns) / 1e9 AS duration_s, w.baseline_window_id,
           en.energy_cpu_j, en.energy_dram_j, en.energy_gpu_j, en.energy_wall_j,
           CASE WHEN en.energy_cpu_j IS NULL AND en.energy_gpu_j IS NULL THEN NULL
                ELSE coalesce(en.energy_cpu_j, 0) + coalesce(en.energy_gpu_j, 0) END
               AS energy_global_j,
           en.min_coverage, en.wraps, en.resets, coalesce(en.estimated, false) AS estimated,
           en.estimated_domains, en.max_period_ns, en.interpolated_domains,
           u.cpu_percent, u.ram_percent, u.gpu_percent, u.gpu_mem_util_percent,
           u.gpu_mem_used_percent,
           -- a probe that failed while this window was open: its figures may have gaps
           EXISTS (SELECT 1 FROM events ev
                   WHERE ev.session_id = w.session_id AND ev.probe IS NOT NULL
                     AND ev.level IN ('warning', 'error')
                     AND ev.t_ns BETWEEN w.start_ns AND w.end_ns) AS probe_errors
    FROM windows w
    LEFT JOIN energy en ON en.window_id = w.window_id
    LEFT JOIN util u ON u.window_id = w.window_id
    WHERE w.end_ns IS NOT NULL AND {_WINDOW_SELECTED}
),
base AS (
    SELECT f.*,
           b.energy_cpu_j / nullif(b.duration_s, 0) AS baseline_cpu_w,
           b.energy_dram_j / nullif(b.duration_s, 0) AS baseline_dram_w,
           b.energy_gpu_j / nullif(b.duration_s, 0) AS baseline_gpu_w,
           b.energy_wall_j / nullif(b.duration_s, 0) AS baseline_wall_w
    FROM figures f LEFT JOIN figures b ON b.window_id = f.baseline_window_id
)
SELECT *,
       energy_cpu_j - baseline_cpu_w * duration_s AS dynamic_cpu_j,
       energy_dram_j - baseline_dram_w * duration_s AS dynamic_dram_j,
       energy_gpu_j - baseline_gpu_w * duration_s AS dynamic_gpu_j,
       energy_wall_j - baseline_wall_w * duration_s AS dynamic_wall_j,
       CASE WHEN baseline_window_id IS NULL
                 OR (energy_cpu_j IS NULL AND energy_gpu_j IS NULL) THEN NULL
            ELSE coalesce(energy_cpu_j - baseline_cpu_w * duration_s, 0)
                 + coalesce(energy_gpu_j - baseline_gpu_w * duration_s, 0)
       END AS dynamic_global_j,
       {_validity_flags()} AS flags
FROM base
WHERE ids IS NULL OR list_contains(ids, window_id)
"""


# -- the registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    name: str
    sql: str

    def create(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(f"CREATE OR REPLACE VIEW {self.name} AS {self.sql}")


@dataclass(frozen=True)
class Macro:
    """A table macro; DuckDB binds its body when it is called, not when it is created."""

    name: str
    parameters: str
    sql: str

    def create(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(f"CREATE OR REPLACE MACRO {self.name}({self.parameters}) AS TABLE {self.sql}")


@dataclass(frozen=True)
class Step:
    """A step that is neither: the materialised results table (``_create_cache``)."""

    name: str
    run: Callable[[duckdb.DuckDBPyConnection], None]

    def create(self, con: duckdb.DuckDBPyConnection) -> None:
        self.run(con)


# The per-unit results as table macros: ``*_sel(exp, only_unit, skip_cached, lo_ns,
# hi_ns)`` compute from samples for the selected units (``_selected``) within a time range
# (``_SAMPLE_RANGE``).
_SEL_PARAMS = "exp, only_unit, skip_cached, lo_ns, hi_ns"
_SEL_MACROS = (
    Macro("unit_phase_energy_sel", _SEL_PARAMS, _UNIT_PHASE_ENERGY),
    Macro("unit_baseline_sel", _SEL_PARAMS, _UNIT_BASELINE),
    Macro("unit_utilisation_sel", _SEL_PARAMS, _UNIT_UTILISATION),
    Macro("unit_steady_sel", _SEL_PARAMS, _UNIT_STEADY),
    Macro("unit_background_sel", _SEL_PARAMS, _UNIT_BACKGROUND),
    Macro("unit_results_sel", _SEL_PARAMS, _UNIT_RESULTS),
)
_RULE_VIEWS = (
    View("energy_sources", ENERGY_SOURCES_SQL),
    View("utilisation_channels", _UTILISATION_CHANNELS),
)

# Materialised results ("a unit's figures are also materialised once when it
# ends, same SQL").  ``unit_results_done`` holds rows of ``unit_results_sel``, each with the
# hash of the rules that computed it and the unit's ``ended_ns`` when it was computed.  A
# row is *valid* while the rules are this greenmon's and the unit has not changed since
# (same attempt, status and end): anything else is computed live from samples, so a newer
# greenmon's energy rules, a rerun unit or a cleared cache never show stale figures.
RULES_HASH = hashlib.sha256(
    "\n".join(relation.sql for relation in (*_RULE_VIEWS, *_SEL_MACROS)).encode()
).hexdigest()[:16]
CACHE_TABLE = "unit_results_done"
_VALID = f"""
SELECT c.experiment_id, c.unit_id
FROM {CACHE_TABLE} c JOIN units u USING (experiment_id, unit_id)
WHERE c.rules_hash = '{RULES_HASH}' AND c.attempt = u.attempt AND c.status = u.status
  AND c.unit_ended_ns IS NOT DISTINCT FROM u.ended_ns
"""


def _create_cache(con: duckdb.DuckDBPyConnection) -> None:
    """The materialised table, shaped like ``unit_results_sel``; rebuilt (emptied) when a
    newer greenmon changed the results' columns: it is a cache, recomputed on demand."""
    # An empty stand-in lets the macros bind before the table they consult exists.
    con.execute(
        "CREATE OR REPLACE VIEW unit_results_valid AS "
        "SELECT NULL::VARCHAR AS experiment_id, NULL::INTEGER AS unit_id WHERE false"
    )
    wanted = con.execute(
        "DESCRIBE SELECT *, NULL::VARCHAR AS rules_hash, NULL::BIGINT AS unit_ended_ns "
        "FROM unit_results_sel(NULL, NULL, false, NULL, NULL)"
    ).fetchall()
    have = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
        "ORDER BY column_index",
        [CACHE_TABLE],
    ).fetchall()
    if [(r[0], r[1]) for r in wanted] != [(r[0], r[1]) for r in have]:
        con.execute(f"DROP TABLE IF EXISTS {CACHE_TABLE}")
        columns = ", ".join(f'"{name}" {dtype}' for name, dtype, *_ in wanted)
        con.execute(f"CREATE TABLE {CACHE_TABLE} ({columns})")
    con.execute(f"CREATE OR REPLACE VIEW unit_results_valid AS {_VALID}")


# What every reader asks: materialised rows where valid, the rest from samples.
_UNIT_RESULTS_FOR = f"""
SELECT c.* EXCLUDE (rules_hash, unit_ended_ns)
FROM {CACHE_TABLE} c SEMI JOIN unit_results_valid v USING (experiment_id, unit_id)
WHERE exp IS NULL OR c.experiment_id = exp
UNION ALL BY NAME
SELECT * FROM unit_results_sel(exp, NULL, true, NULL, NULL)
"""


def _over_experiment(name: str, sel: str | None = None) -> Macro:
    """``name``_for(exp): ``sel`` (default ``name``_sel) over one experiment (NULL: every
    experiment), every unit computed from samples."""
    sel = sel or f"{name}_sel"
    return Macro(f"{name}_for", "exp", f"SELECT * FROM {sel}(exp, NULL, false, NULL, NULL)")


def _over_everything(macro: Macro) -> View:
    """The view ``macro``'s name without ``_for``: the macro over every experiment."""
    return View(macro.name.removesuffix("_for"), f"SELECT * FROM {macro.name}(NULL)")


_FOR_MACROS = (
    _over_experiment("unit_phase_energy"),
    _over_experiment("unit_baseline"),
    _over_experiment("unit_utilisation"),
    _over_experiment("unit_steady"),
    Macro("unit_results_for", "exp", _UNIT_RESULTS_FOR),
    # the same from samples only (tests compare the two)
    _over_experiment("unit_results_live", "unit_results_sel"),
    # a user's windows (a list of window ids; NULL: every window)
    Macro("window_results_for", "ids", _WINDOW_RESULTS),
    Macro("observer_cost_for", "exp", _OBSERVER_COST),
)

# Every relation, in the order it is created.
REGISTRY: tuple[View | Macro | Step, ...] = (
    *_RULE_VIEWS,
    View("phase_windows", _PHASE_WINDOWS),
    View("phase_channel_energy", _PHASE_CHANNEL_ENERGY),
    *_SEL_MACROS,
    Step(CACHE_TABLE, _create_cache),
    *_FOR_MACROS,
    *(_over_everything(m) for m in _FOR_MACROS if m.name != "unit_results_live_for"),
)

# Views and macros of earlier versions, dropped so an old file does not keep stale ones.
RETIRED_VIEWS: tuple[str, ...] = ()
RETIRED_MACROS: tuple[str, ...] = ()


def _definition(relation: View | Macro | Step) -> str:
    if isinstance(relation, Step):
        try:
            source = inspect.getsource(relation.run)
        except OSError:  # an install that ships bytecode only: greenmon's version stands in
            source = relation.run.__qualname__
        return f"step {relation.name}: {source}{_VALID}"
    parameters = getattr(relation, "parameters", "")
    return f"{type(relation).__name__} {relation.name}({parameters}): {relation.sql}"


# What the relations of a file opened read-write must be: every definition, the retired
# names, the DuckDB that binds them and greenmon's version.  Recreating them all costs
# ~0.45 s on every read-write open (analyze, report, run, the daemon), so it is done only
# when this differs from the hash the file records (greenmon_meta 'views_hash').
VIEWS_HASH = hashlib.sha256(
    "\n".join(
        [
            duckdb.__version__,
            greenmon_version,
            *RETIRED_VIEWS,
            *RETIRED_MACROS,
            *map(_definition, REGISTRY),
        ]
    ).encode()
).hexdigest()[:16]


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create every relation of ``REGISTRY``, in order, after dropping retired ones."""
    for name in RETIRED_VIEWS:
        con.execute(f"DROP VIEW IF EXISTS {name}")
    for name in RETIRED_MACROS:
        con.execute(f"DROP MACRO TABLE IF EXISTS {name}")
    for relation in REGISTRY:
        relation.create(con)


def ensure_views(con: duckdb.DuckDBPyConnection) -> bool:
    """``create_views`` unless the file's relations are already these (``VIEWS_HASH``);
    True when they were (re)created.  The hash is recorded only after every relation was
    created, so an open interrupted half-way recreates them all next time."""
    # fetchall, not fetchone: a result left unfinished makes DuckDB refuse the next
    # relation write on this connection (greenmon.store.database.first_row says so).
    found = con.execute("SELECT value FROM greenmon_meta WHERE key = 'views_hash'").fetchall()
    if found and found[0][0] == VIEWS_HASH:
        return False
    create_views(con)
    con.execute("INSERT OR REPLACE INTO greenmon_meta VALUES ('views_hash', ?)", [VIEWS_HASH])
    return True


# (Re)materialising one experiment's finished units: stale rows go, then the units without
# a valid row are computed in one pass (only their samples are read) into the temporary
# table ``FRESH_TABLE`` (of the connection that materialises), and stored from it.  A unit
# of the running session is stored only once it ended before $settled_ns, when the writer
# has flushed its last samples (README: the loss bound); $except_unit is left out.  The
# units computed but not stored (not settled) stay in ``FRESH_TABLE`` for
# ``UNIT_RESULTS_MATERIALISED`` until Store.materialise_unit_results drops it.
# The time range the units still to materialise cover (their phases), before the edge
# margins are added (Store.materialise_unit_results).
MATERIALISE_SPAN_SQL = """
SELECT min(p.start_ns), max(p.end_ns), (SELECT max(period_ns) FROM channels)
FROM phases p JOIN units u USING (experiment_id, unit_id)
WHERE p.experiment_id = $exp AND u.status IN ('done', 'failed', 'cancelled')
  AND u.unit_id NOT IN (SELECT unit_id FROM unit_results_valid WHERE experiment_id = $exp)
"""
FRESH_TABLE = "unit_results_fresh"
MATERIALISE_SQL = (
    f"""DELETE FROM {CACHE_TABLE}
        WHERE experiment_id = $exp AND unit_id NOT IN (
            SELECT unit_id FROM unit_results_valid WHERE experiment_id = $exp)""",
    f"""CREATE OR REPLACE TEMP TABLE {FRESH_TABLE} AS
        SELECT * FROM unit_results_sel($exp, NULL, true, {{lo_ns}}, {{hi_ns}})""",
    f"""INSERT INTO {CACHE_TABLE}
        SELECT r.*, '{RULES_HASH}', u.ended_ns
        FROM {FRESH_TABLE} r
        JOIN units u USING (experiment_id, unit_id)
        WHERE u.status IN ('done', 'failed', 'cancelled')
          AND ($session IS NULL OR u.session_id IS DISTINCT FROM $session
               OR u.ended_ns <= $settled_ns)
          AND u.unit_id IS DISTINCT FROM $except_unit""",
)
# Nothing finished lacks a valid row: nothing to compute, an empty FRESH_TABLE.
FRESH_EMPTY_SQL = f"""CREATE OR REPLACE TEMP TABLE {FRESH_TABLE} AS
    SELECT * EXCLUDE (rules_hash, unit_ended_ns) FROM {CACHE_TABLE} LIMIT 0"""
# ``unit_results_for(?)`` over finished units (done, failed, cancelled; callers filter by
# status), right after materialising and on the same connection: the valid stored rows,
# and the finished units still without one (not settled) from the pass that materialised,
# not from a second evaluation of the results SQL (Store.materialise_and_query: a unit
# end's live summary).
UNIT_RESULTS_MATERIALISED = f"""
SELECT c.* EXCLUDE (rules_hash, unit_ended_ns)
FROM {CACHE_TABLE} c SEMI JOIN unit_results_valid v USING (experiment_id, unit_id)
WHERE c.experiment_id = ?
UNION ALL BY NAME
SELECT f.* FROM {FRESH_TABLE} f ANTI JOIN unit_results_valid v USING (experiment_id, unit_id)
"""
