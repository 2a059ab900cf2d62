"""Result views: what users query.  Views, not tables, so old runs answer new questions.

Views are (re)created every time a database is opened read-write, so a newer greenmon
improves the results of old files without a migration.  The energy arithmetic itself lives
in greenmon/energy.py; views only decide which windows and channels to ask it about.
"""

from __future__ import annotations

import hashlib

import duckdb

from greenmon.energy import ENERGY_UNITS, POWER_UNITS, SCALE_TO_SI_SQL, window_energy_sql

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


# Views and macros of earlier versions, dropped so an old file does not keep stale ones.
RETIRED_VIEWS: tuple[str, ...] = ()
RETIRED_MACROS: tuple[str, ...] = ()


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    for name in RETIRED_VIEWS:
        con.execute(f"DROP VIEW IF EXISTS {name}")
    for name in RETIRED_MACROS:
        con.execute(f"DROP MACRO TABLE IF EXISTS {name}")
    for name, sql in VIEWS.items():
        if name in _MACRO_VIEWS:
            continue
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
    for name, sql in MACROS.items():
        con.execute(f"CREATE OR REPLACE MACRO {name}({_SEL_PARAMS}) AS TABLE {sql}")
    _create_cache(con)
    for name, sql in FOR_MACROS.items():
        con.execute(f"CREATE OR REPLACE MACRO {name}(exp) AS TABLE {sql}")
    for name in _MACRO_VIEWS:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {VIEWS[name]}")


_MACRO_VIEWS = ("unit_phase_energy", "unit_baseline", "unit_utilisation", "unit_results")


# Which probe answers for a domain when several could: measured before estimated, then the
# direct sources (RAPL, NVML, the wattmeter) before EnergiBridge; within the chosen probe,
# fine counters before power gauges before coarse counters (NETIO's Wh steps of 3600 J).
_ENERGY_SOURCES = f"""
WITH cand AS (
    SELECT c.*,
           CASE WHEN c.kind = 'counter' AND c.unit IN ('uJ', 'mJ', 'J') THEN 0
                WHEN c.kind = 'gauge' THEN 1 ELSE 2 END AS kind_rank,
           CASE c.probe WHEN 'rapl' THEN 0 WHEN 'nvml' THEN 0 WHEN 'netio' THEN 0
                        WHEN 'energibridge' THEN 1 ELSE 2 END AS probe_rank
    FROM channels c
    WHERE c.domain IN ('cpu', 'dram', 'gpu', 'wall') AND ({_ENERGY_CHANNEL})
),
best_probe AS (
    SELECT session_id, domain, arg_min(probe, estimated::INTEGER * 10 + probe_rank) AS probe
    FROM cand GROUP BY session_id, domain
),
best_kind AS (
    SELECT c.session_id, c.domain, c.probe, min(c.kind_rank) AS kind_rank
    FROM cand c JOIN best_probe b USING (session_id, domain, probe)
    GROUP BY c.session_id, c.domain, c.probe
)
SELECT c.session_id, c.domain, c.channel_id, c.probe, c.name, c.kind, c.unit, c.estimated,
       c.period_ns
FROM cand c JOIN best_kind b USING (session_id, domain, probe, kind_rank)
"""


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


_SOURCE_WINDOWS = f"""(
    SELECT p.phase_id AS window_id, es.channel_id, p.start_ns, p.end_ns
    FROM phases p JOIN energy_sources es ON es.session_id = p.session_id
    WHERE p.end_ns IS NOT NULL AND {_selected("p")}
)"""

_UNIT_PHASE_ENERGY = f"""
SELECT p.experiment_id, p.unit_id, p.attempt, p.phase, p.phase_id,
       (p.end_ns - p.start_ns) / 1e9 AS duration_s, es.domain,
       sum(e.energy_j) AS energy_j, min(e.coverage) AS coverage, sum(e.wraps) AS wraps,
       sum(e.resets) AS resets, bool_or(es.estimated) AS estimated,
       max(es.period_ns) AS period_ns
FROM ({window_energy_sql(_SOURCE_WINDOWS, _SAMPLE_RANGE)}) e
JOIN phases p ON p.phase_id = e.window_id
JOIN energy_sources es ON es.channel_id = e.channel_id
GROUP BY ALL
"""

# Idle baseline: per channel, the median power over the unit's cooldown before the measure
# (counters: wrap-free interval deltas over time; gauges: values), summed per domain.
_UTILISATION_CHANNELS = """
SELECT channel_id, session_id,
       CASE WHEN probe = 'host' AND name = 'cpu.percent' THEN 'cpu_percent'
            WHEN probe = 'host' AND name = 'ram.percent' THEN 'ram_percent'
            WHEN probe = 'nvml' AND name LIKE '%.util_gpu_percent' THEN 'gpu_percent'
            WHEN probe = 'nvml' AND name LIKE '%.util_memory_percent'
                THEN 'gpu_mem_util_percent'
            WHEN probe = 'nvml' AND name LIKE '%.memory_percent' THEN 'gpu_mem_used_percent'
       END AS quantity
FROM channels WHERE probe IN ('host', 'nvml')
"""

# Idle baseline: per channel, the median power over the cooldown before the measure
# (counters: wrap-free interval deltas over time; gauges: values), summed per domain.
# Samples are matched to their cooldown with an ASOF join keyed by channel (each phase is
# paired with each source channel of its session first), so DuckDB sorts per channel, in
# parallel, rather than one session-wide sort or a range join of samples x phases.
_UNIT_BASELINE = f"""
WITH pc AS (
    SELECT p.phase_id, p.experiment_id, p.unit_id, p.attempt, p.start_ns, p.end_ns,
           es.channel_id, es.domain, es.kind, es.unit
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
        WHERE {_SAMPLE_RANGE}
    ) s
    ASOF JOIN pc ON pc.channel_id = s.channel_id AND s.t_ns >= pc.start_ns
    WHERE s.t_ns <= pc.end_ns
),
pw AS (
    SELECT experiment_id, unit_id, attempt, domain, channel_id,
           CASE WHEN kind = 'counter'
                THEN (value - lag(value) OVER w) / ((t_ns - lag(t_ns) OVER w) / 1e9)
                ELSE value END
           * (CASE unit {SCALE_TO_SI_SQL.removeprefix("CASE unit")}) AS power_w
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
    FROM phases p JOIN ({_UTILISATION_CHANNELS}) uc ON uc.session_id = p.session_id
    WHERE p.phase = 'measure' AND p.end_ns IS NOT NULL AND uc.quantity IS NOT NULL
      AND {_selected("p")}
)"""

_UNIT_UTILISATION = f"""
SELECT p.experiment_id, p.unit_id, p.attempt,
       avg(e.energy_native / ((p.end_ns - p.start_ns) / 1e9))
           FILTER (WHERE uc.quantity = 'cpu_percent') AS cpu_percent,
       avg(e.energy_native / ((p.end_ns - p.start_ns) / 1e9))
           FILTER (WHERE uc.quantity = 'ram_percent') AS ram_percent,
       avg(e.energy_native / ((p.end_ns - p.start_ns) / 1e9))
           FILTER (WHERE uc.quantity = 'gpu_percent') AS gpu_percent,
       avg(e.energy_native / ((p.end_ns - p.start_ns) / 1e9))
           FILTER (WHERE uc.quantity = 'gpu_mem_util_percent') AS gpu_mem_util_percent,
       avg(e.energy_native / ((p.end_ns - p.start_ns) / 1e9))
           FILTER (WHERE uc.quantity = 'gpu_mem_used_percent') AS gpu_mem_used_percent
FROM ({window_energy_sql(_UTILISATION_WINDOWS, _SAMPLE_RANGE)}) e
JOIN phases p ON p.phase_id = e.window_id
JOIN ({_UTILISATION_CHANNELS}) uc ON uc.channel_id = e.channel_id
GROUP BY ALL
"""

# Thresholds behind the validity flags.
MIN_COVERAGE = 0.9
MIN_WINDOW_PERIODS = 5
WALL_TOLERANCE = 0.10


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
           min(coverage) FILTER (WHERE phase = 'measure') AS min_coverage,
           sum(wraps) FILTER (WHERE phase = 'measure') AS wraps,
           sum(resets) FILTER (WHERE phase = 'measure') AS resets,
           bool_or(estimated) AS estimated,
           max(period_ns) AS max_period_ns,
           list(DISTINCT domain) FILTER (WHERE estimated) AS estimated_domains
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
           sum(tokens_out) AS tokens_out
    FROM requests WHERE phase = 'measure' AND {_selected("requests")}
    GROUP BY ALL
),
base AS (
    SELECT u.experiment_id, u.unit_id, u.model, u.engine, u.provider,
           u.engine || '/' || u.provider AS configuration, u.repetition, u.factors, u.status,
           u.reason, u.params, u.size_category, u.attempt, m.duration_s, l.load_s,
           r.requests, r.tokens_out,
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
           b.cpu_percent, b.ram_percent, b.gpu_percent, b.gpu_mem_util_percent,
           b.gpu_mem_used_percent, u.fidelity_share, u.fidelity_first_divergence,
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
    WHERE {_selected("u")}
)
SELECT *,
       CASE WHEN energy_cpu_j IS NULL AND energy_gpu_j IS NULL THEN NULL
            ELSE coalesce(dynamic_cpu_j, 0) + coalesce(dynamic_gpu_j, 0) END AS dynamic_global_j,
       energy_global_j / nullif(requests, 0) AS j_per_request,
       energy_global_j / nullif(tokens_out, 0) AS j_per_token,
       list_filter([
           CASE WHEN duration_s IS NOT NULL AND max_period_ns IS NOT NULL
                 AND duration_s * 1e9 < {MIN_WINDOW_PERIODS} * max_period_ns
                THEN 'short_window' END,
           CASE WHEN min_coverage < {MIN_COVERAGE} THEN 'low_coverage' END,
           CASE WHEN wraps > 0 THEN 'counter_wrap' END,
           CASE WHEN resets > 0 THEN 'counter_reset' END,
           CASE WHEN estimated THEN 'estimated' END,
           CASE WHEN energy_wall_j IS NOT NULL
                 AND coalesce(energy_cpu_j, 0) + coalesce(energy_dram_j, 0)
                     + coalesce(energy_gpu_j, 0) > (1 + {WALL_TOLERANCE}) * energy_wall_j
                THEN 'wall_below_components' END,
           CASE WHEN fidelity_share < 1 THEN 'fidelity' END,
           CASE WHEN probe_errors THEN 'probe_errors' END,
           CASE WHEN status = 'done' AND energy_global_j IS NULL AND energy_wall_j IS NULL
                THEN 'no_energy_source' END
       ], lambda x: x IS NOT NULL) AS flags
FROM base
"""

VIEWS["energy_sources"] = _ENERGY_SOURCES

# The per-unit results as table macros: ``*_sel(exp, only_unit, skip_cached, lo_ns,
# hi_ns)`` compute from samples for the selected units (``_selected``) within a time range
# (``_SAMPLE_RANGE``); ``*_for(exp)`` are those over one experiment (NULL: every
# experiment), and the views of the same names without "_for" are these over everything.
MACROS: dict[str, str] = {
    "unit_phase_energy_sel": _UNIT_PHASE_ENERGY,
    "unit_baseline_sel": _UNIT_BASELINE,
    "unit_utilisation_sel": _UNIT_UTILISATION,
    "unit_results_sel": _UNIT_RESULTS,
}
_SEL_PARAMS = "exp, only_unit, skip_cached, lo_ns, hi_ns"

# Materialised results (DESIGN.md: "a unit's figures are also materialised once when it
# ends, same SQL").  ``unit_results_done`` holds rows of ``unit_results_sel``, each with the
# hash of the rules that computed it and the unit's ``ended_ns`` when it was computed.  A
# row is *valid* while the rules are this greenmon's and the unit has not changed since
# (same attempt, status and end): anything else is computed live from samples, so a newer
# greenmon's energy rules, a rerun unit or a cleared cache never show stale figures.
RULES_HASH = hashlib.sha256("\n".join([_ENERGY_SOURCES, *MACROS.values()]).encode()).hexdigest()[
    :16
]
CACHE_TABLE = "unit_results_done"
_CACHE_EXTRA = "rules_hash VARCHAR, unit_ended_ns BIGINT"
_VALID = f"""
SELECT c.experiment_id, c.unit_id
FROM {CACHE_TABLE} c JOIN units u USING (experiment_id, unit_id)
WHERE c.rules_hash = '{RULES_HASH}' AND c.attempt = u.attempt AND c.status = u.status
  AND c.unit_ended_ns IS NOT DISTINCT FROM u.ended_ns
"""
_UNIT_RESULTS_FOR = f"""
SELECT c.* EXCLUDE (rules_hash, unit_ended_ns)
FROM {CACHE_TABLE} c SEMI JOIN unit_results_valid v USING (experiment_id, unit_id)
WHERE exp IS NULL OR c.experiment_id = exp
UNION ALL BY NAME
SELECT * FROM unit_results_sel(exp, NULL, true, NULL, NULL)
"""
FOR_MACROS: dict[str, str] = {
    "unit_phase_energy_for": "SELECT * FROM unit_phase_energy_sel(exp, NULL, false, NULL, NULL)",
    "unit_baseline_for": "SELECT * FROM unit_baseline_sel(exp, NULL, false, NULL, NULL)",
    "unit_utilisation_for": "SELECT * FROM unit_utilisation_sel(exp, NULL, false, NULL, NULL)",
    # what every reader asks: materialised rows where valid, the rest from samples
    "unit_results_for": _UNIT_RESULTS_FOR,
    # the same from samples only (tests compare the two)
    "unit_results_live_for": "SELECT * FROM unit_results_sel(exp, NULL, false, NULL, NULL)",
}
for _macro in ("unit_phase_energy_for", "unit_baseline_for", "unit_utilisation_for",
               "unit_results_for"):  # fmt: skip
    VIEWS[_macro.removesuffix("_for")] = f"SELECT * FROM {_macro}(NULL)"


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


# (Re)materialising one experiment's finished units: stale rows go, then the units without
# a valid row are computed in one pass (only their samples are read) and stored.  A unit
# of the running session is stored only once it ended before $settled_ns, when the writer
# has flushed its last samples (README: the loss bound); $except_unit is left out.
# The time range the units still to materialise cover (their phases), before the edge
# margins are added (Store.materialise_unit_results).
MATERIALISE_SPAN_SQL = """
SELECT min(p.start_ns), max(p.end_ns), (SELECT max(period_ns) FROM channels)
FROM phases p JOIN units u USING (experiment_id, unit_id)
WHERE p.experiment_id = $exp AND u.status IN ('done', 'failed', 'cancelled')
  AND u.unit_id NOT IN (SELECT unit_id FROM unit_results_valid WHERE experiment_id = $exp)
"""
MATERIALISE_SQL = (
    f"""DELETE FROM {CACHE_TABLE}
        WHERE experiment_id = $exp AND unit_id NOT IN (
            SELECT unit_id FROM unit_results_valid WHERE experiment_id = $exp)""",
    f"""INSERT INTO {CACHE_TABLE}
        SELECT r.*, '{RULES_HASH}', u.ended_ns
        FROM unit_results_sel($exp, NULL, true, {{lo_ns}}, {{hi_ns}}) r
        JOIN units u USING (experiment_id, unit_id)
        WHERE u.status IN ('done', 'failed', 'cancelled')
          AND ($session IS NULL OR u.session_id IS DISTINCT FROM $session
               OR u.ended_ns <= $settled_ns)
          AND u.unit_id IS DISTINCT FROM $except_unit""",
)
