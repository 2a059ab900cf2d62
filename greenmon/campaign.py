"""Campaigns across machines: one plan's shards, run on many hosts, merged into one file.

Terms:
- *campaign*: one plan whose units ran as shards (``greenmon run --shard K/N``), each
  shard on one host into its own database file; merged, it is one experiment whose units
  keep the session, and so the host, they ran in.
- *source*: what a merge reads: a greenmon database file (one shard, or any file holding
  experiments of the plan), or a directory of Parquet exports (``greenmon export``'s
  layout, ``<table>/session_id=<id>/*.parquet``; exports of many hosts copied into one
  directory read as one source).
- *campaign directory*: what ``greenmon slurm`` writes: ``campaign.json`` (plan, shards,
  job id), ``plan.toml``, ``job.sbatch``, ``shard-K-of-N.duckdb`` and ``logs/``.

Channel ids are per file (each file's sequence starts at 1), so a merge gives every
(session, channel) a new id and rewrites its samples; phase and journal ids are drawn
anew.  Every source experiment of the plan becomes one merged experiment (a new id) whose
``merged_from`` lists where each part came from.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from greenmon.errors import GreenmonError
from greenmon.plan import diff_plans
from greenmon.store import Store

CAMPAIGN_FILE = "campaign.json"


class MergeError(GreenmonError):
    title = "Cannot merge"


class CampaignError(GreenmonError):
    title = "Not a campaign"


# Tables copied by a merge: every row of a source's sessions, or of its experiments.
_SESSION_TABLES = ("sessions", "clock_anchors", "events")
_EXPERIMENT_TABLES = ("units", "phases", "requests", "restore_journal")
# Ids drawn anew from the output's own sequences.
_FRESH_IDS = {"phases": "phase_id", "restore_journal": "journal_id"}


@dataclass
class Source:
    """One input of a merge, as SQL relations in the output's connection."""

    path: Path
    alias: str
    parquet: bool
    relations: dict[str, str] = field(default_factory=dict)

    def relation(self, table: str) -> str | None:
        return self.relations.get(table)


@dataclass
class MergeSummary:
    experiment_id: str
    plan_name: str
    plan_hash: str
    units: int
    units_by_status: dict[str, int]
    missing_units: int
    hosts: list[str]
    sessions: int
    samples: int
    parts: list[dict[str, Any]]


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _attach(con: duckdb.DuckDBPyConnection, path: Path, index: int) -> Source:
    """A source's relations: an attached database file, or globs over Parquet exports."""
    alias = f"greenmon_src{index}"
    if path.is_dir():
        source = Source(path, alias, parquet=True)
        for table_dir in sorted(p for p in path.iterdir() if p.is_dir()):
            if not any(table_dir.glob("session_id=*/*.parquet")):
                continue  # an empty relation is exported as one unpartitioned file
            glob = _quote(table_dir / "session_id=*" / "*.parquet")
            source.relations[table_dir.name] = (
                f"read_parquet('{glob}', hive_partitioning = true, union_by_name = true, "
                "hive_types_autocast = false)"
            )
        if "experiments" not in source.relations:
            raise MergeError(
                f"{path} is a directory without Parquet exports of experiments "
                "(experiments/session_id=*/*.parquet). Give greenmon database files or "
                "directories written by `greenmon export --format parquet`."
            )
        return source
    if not path.exists():
        raise MergeError(f"{path} does not exist. Give the shards' database files.")
    Store.open(path, read_only=True).close()  # refuses a foreign or newer file, untouched
    try:
        con.execute(f"ATTACH '{_quote(path)}' AS {alias} (READ_ONLY)")
    except duckdb.Error as error:
        raise MergeError(
            f"Could not read {path}: {str(error).splitlines()[0]}. If a shard is still "
            "running, wait for it (`greenmon status CAMPAIGN_DIR`) and merge again."
        ) from None
    source = Source(path, alias, parquet=False)
    tables = {
        str(r[0])
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [alias]
        ).fetchall()
    }
    for table in tables:
        source.relations[table] = f"{alias}.main.{table}"
    return source


def _rows(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    cursor = con.execute(sql, list(params))
    names = [d[0] for d in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _source_experiments(con: duckdb.DuckDBPyConnection, source: Source) -> list[dict[str, Any]]:
    relation = source.relation("experiments")
    rows = _rows(con, f"SELECT * FROM {relation}") if relation else []
    if not rows:
        raise MergeError(
            f"{source.path} holds no experiment: it is not a shard that ran. Leave it out, "
            "or run its shard first."
        )
    return rows


def _check_one_plan(parts: list[tuple[Source, dict[str, Any]]]) -> None:
    first_source, first = parts[0]
    for source, experiment in parts[1:]:
        if experiment["plan_hash"] == first["plan_hash"]:
            continue
        changes = diff_plans(json.loads(first["plan"]), json.loads(experiment["plan"]))
        raise MergeError(
            f"{source.path} (experiment {experiment['experiment_id']}, plan "
            f"'{experiment['name']}') ran a different plan from {first_source.path} "
            f"(experiment {first['experiment_id']}, plan '{first['name']}'): "
            f"{'; '.join(changes[:8]) or 'the plans differ'}. Merge only the shards of "
            "one plan."
        )


def _check_no_duplicates(
    con: duckdb.DuckDBPyConnection, parts: list[tuple[Source, dict[str, Any]]]
) -> None:
    seen: dict[int, str] = {}
    duplicates: list[str] = []
    for source, experiment in parts:
        where = f"{source.path} (experiment {experiment['experiment_id']})"
        units = _rows(
            con,
            f"SELECT unit_id, model, engine, provider, repetition FROM "
            f"{source.relation('units')} WHERE experiment_id = ?",
            [experiment["experiment_id"]],
        )
        for unit in units:
            if unit["unit_id"] in seen:
                duplicates.append(
                    f"unit {unit['unit_id']} ({unit['model']} {unit['engine']}/"
                    f"{unit['provider']} repetition {unit['repetition']}) is in "
                    f"{seen[unit['unit_id']]} and in {where}"
                )
            seen[unit["unit_id"]] = where
    if duplicates:
        raise MergeError(
            f"{len(duplicates)} units are in more than one input, so a merge would count "
            f"them twice: {'; '.join(duplicates[:5])}. Give each shard once (the same file "
            "twice, or a shard run again with --force, does this)."
        )


def merge(inputs: Sequence[str | Path], out: str | Path) -> MergeSummary:
    """Merge the shards of one plan from ``inputs`` into a new database ``out``."""
    out_path = Path(out)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise MergeError("Nothing to merge: give the shards' files, e.g. results/*.duckdb.")
    if out_path.exists() and out_path.stat().st_size > 0:
        raise MergeError(
            f"{out_path} exists already. A merge writes a new file: choose another -o, or "
            "remove it first."
        )
    if any(p.resolve() == out_path.resolve() for p in paths):
        raise MergeError(f"{out_path} is both an input and the output; choose another -o.")
    store = Store.open(out_path)
    try:
        return _merge_into(store, paths)
    except BaseException:
        store.close()
        out_path.unlink(missing_ok=True)
        Path(str(out_path) + ".wal").unlink(missing_ok=True)
        raise
    finally:
        store.close()


def _merge_into(store: Store, paths: list[Path]) -> MergeSummary:
    # One transaction from the first ATTACH to the merged experiment: a merge refused
    # half-way (another plan, a unit twice) leaves nothing behind.
    with store.transaction() as con:
        sources = [_attach(con, path, index) for index, path in enumerate(paths)]
        parts = [(s, e) for s in sources for e in _source_experiments(con, s)]
        _check_one_plan(parts)
        _check_no_duplicates(con, parts)
        first = parts[0][1]
        experiment_id = uuid.uuid4().hex[:12]
        for source in sources:
            _copy_sessions(store, source)
            channels = source.relation("channels")
            if channels is not None:
                store.copy_channels_and_samples(channels, source.relation("samples"))
            ids = [e["experiment_id"] for s, e in parts if s is source]
            marks = ", ".join("?" for _ in ids)
            for table in _EXPERIMENT_TABLES:
                relation = source.relation(table)
                if relation is not None:
                    store.copy_rows(table, relation, where=f"src.experiment_id IN ({marks})",
                                    params=ids, replace={"experiment_id": f"'{experiment_id}'"},
                                    fresh_id=_FRESH_IDS.get(table))  # fmt: skip
        merged_from = [
            {
                "source": str(s.path),
                "experiment_id": e["experiment_id"],
                "shard_index": e.get("shard_index"),
                "shard_count": e.get("shard_count"),
                "host": e.get("host"),
                "status": e.get("status"),
            }
            for s, e in parts
        ]
        counts = {e.get("shard_count") for _, e in parts}
        shard_count = counts.pop() if len(counts) == 1 else None
        status = "done" if all(e.get("status") == "done" for _, e in parts) else "incomplete"
        store.insert_experiment(
            {
                "experiment_id": experiment_id, "session_id": first.get("session_id"),
                "name": first["name"], "plan_path": first.get("plan_path"),
                "plan_hash": first["plan_hash"], "plan_toml": first.get("plan_toml"),
                "plan": first["plan"], "seed": first.get("seed"),
                "order_kind": first.get("order_kind"), "status": status,
                "created_ns": min(
                    (e["created_ns"] for _, e in parts if e.get("created_ns")), default=None
                ),
                "finished_ns": max(
                    (e["finished_ns"] for _, e in parts if e.get("finished_ns")), default=None
                ),
                "shard_count": shard_count, "merged_from": json.dumps(merged_from, default=str),
            }
        )  # fmt: skip
        store.advance_channel_sequence()
    with store.transaction() as con:
        for source in sources:
            if not source.parquet:
                con.execute(f"DETACH {source.alias}")
    return _summary(store, experiment_id, first, merged_from)


def _copy_sessions(store: Store, source: Source) -> None:
    sessions = source.relation("sessions")
    if sessions is None:
        return
    new = "src.session_id NOT IN (SELECT session_id FROM main.sessions)"
    store.copy_rows("sessions", sessions, where=new)
    for table in ("clock_anchors", "events"):
        relation = source.relation(table)
        if relation is not None:
            ours = f"src.session_id IN (SELECT session_id FROM {sessions})"
            store.copy_rows(table, relation, where=ours)


def _summary(
    store: Store,
    experiment_id: str,
    first: dict[str, Any],
    parts: list[dict[str, Any]],
) -> MergeSummary:
    _, status_rows = store.query(
        "SELECT status, count(*) FROM units WHERE experiment_id = ? GROUP BY 1 ORDER BY 1",
        [experiment_id],
    )
    by_status = dict(status_rows)
    _, host_rows = store.query(
        """SELECT DISTINCT s.host FROM units u JOIN sessions s USING (session_id)
           WHERE u.experiment_id = ? ORDER BY 1""",
        [experiment_id],
    )
    hosts = [str(r[0]) for r in host_rows]
    from greenmon.plan import parse_plan

    expected = None
    if first.get("plan_toml"):
        try:
            expected = len(parse_plan(str(first["plan_toml"])).all_units())
        except GreenmonError:
            expected = None  # an engine this greenmon does not know: count what is there
    units = sum(by_status.values())
    _, sessions_rows = store.query("SELECT count(*) FROM sessions")
    _, samples_rows = store.query("SELECT count(*) FROM samples")
    sessions_row = sessions_rows[0] if sessions_rows else None
    samples_row = samples_rows[0] if samples_rows else None
    return MergeSummary(
        experiment_id=experiment_id,
        plan_name=str(first["name"]),
        plan_hash=str(first["plan_hash"]),
        units=units,
        units_by_status={str(k): int(v) for k, v in by_status.items()},
        missing_units=max(0, expected - units) if expected is not None else 0,
        hosts=hosts,
        sessions=int(sessions_row[0]) if sessions_row else 0,
        samples=int(samples_row[0]) if samples_row else 0,
        parts=parts,
    )


# -- reading a campaign for analysis ------------------------------------------------------


def campaign_inputs(directory: Path) -> list[Path] | None:
    """What in ``directory`` makes one campaign: itself (Parquet exports), its shard files
    (a ``greenmon slurm`` directory), or None when it is neither."""
    if (directory / "experiments").is_dir():
        return [directory]
    shards = sorted(directory.glob("*.duckdb"))
    return shards or None


@contextmanager
def open_for_analysis(path: Path) -> Iterator[Store]:
    """A read-write Store for ``analyze`` / ``report``: the file itself, or, for a
    directory (Parquet exports, or a campaign directory's shards), a temporary merge."""
    if not path.is_dir():
        with Store.open(path) as store:
            yield store
        return
    inputs = campaign_inputs(path)
    if inputs is None:
        raise CampaignError(
            f"{path} is a directory holding neither Parquet exports (experiments/, samples/, "
            "... as `greenmon export` writes them) nor shard files (*.duckdb). Point --db at "
            "a database file, an export directory or a campaign directory."
        )
    with tempfile.TemporaryDirectory(prefix="greenmon-campaign-") as tmp:
        merged = Path(tmp) / "campaign.duckdb"
        merge(inputs, merged)
        with Store.open(merged) as store:
            yield store


# -- campaign directories (greenmon slurm) -------------------------------------------------


def shard_file(directory: Path, index: int, count: int) -> Path:
    return directory / f"shard-{index}-of-{count}.duckdb"


def read_campaign(directory: Path) -> dict[str, Any]:
    manifest = directory / CAMPAIGN_FILE
    try:
        data: dict[str, Any] = json.loads(manifest.read_text())
    except (OSError, ValueError) as error:
        raise CampaignError(
            f"{directory} has no readable {CAMPAIGN_FILE} ({error}); it was not written by "
            "`greenmon slurm`. Give the campaign directory that command wrote."
        ) from None
    return data


def shard_progress(directory: Path) -> list[dict[str, Any]]:
    """Every shard of a campaign directory: its file's state and unit counts, read-only;
    a shard whose file a running task holds shows the last progress line of its log."""
    campaign = read_campaign(directory)
    count = int(campaign["shards"])
    rows: list[dict[str, Any]] = []
    for index in range(count):
        path = shard_file(directory, index, count)
        row: dict[str, Any] = {"shard": f"{index}/{count}", "file": path.name, "host": None,
                               "state": "not started", "done": 0, "failed": 0, "total": None,
                               "detail": ""}  # fmt: skip
        if path.exists():
            try:
                with Store.open(path, read_only=True) as store:
                    _, experiments = store.query(
                        """SELECT e.experiment_id, e.status, e.host FROM experiments e
                           ORDER BY created_ns DESC LIMIT 1"""
                    )
                    if experiments:
                        experiment_id, row["state"], row["host"] = experiments[0]
                        _, units = store.query(
                            "SELECT status, count(*) FROM units WHERE experiment_id = ? "
                            "GROUP BY 1",
                            [experiment_id],
                        )
                        counts = dict(units)
                        row["done"], row["failed"] = counts.get("done", 0), counts.get("failed", 0)
                        row["total"] = sum(counts.values())
                    else:
                        row["state"] = "starting"
            except GreenmonError as error:
                # A running task holds its file; its log says where it is.
                row["state"] = "running" if "held" in error.message else "unreadable"
                row["detail"] = _last_log_line(directory, index) or error.message[:80]
        rows.append(row)
    return rows


def _last_log_line(directory: Path, index: int) -> str:
    for log in sorted((directory / "logs").glob(f"shard-*-{index}.out")):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].split("\r")[-1][-120:]
    return ""
