"""Shards run by `greenmon run --shard`, merged by `greenmon merge`, analysed as one."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenmon.store import Store
from tests.campaign.support import cli_env, greenmon, write_plan
from tests.fakes.rapl import standard_tree

# exports, merges and analyses of several shards: 20-30 s each on a quiet 2-core VM
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# unit -> (energy, duration, requests, samples in its measure phase)
_FIGURES = """
SELECT r.unit_id, (r.energy_cpu_j, round(r.duration_s, 6), r.requests,
       (SELECT count(*) FROM phases p JOIN units u USING (experiment_id, unit_id)
        JOIN channels c ON c.session_id = p.session_id
        JOIN samples s ON s.channel_id = c.channel_id AND s.t_ns BETWEEN p.start_ns AND p.end_ns
        WHERE p.unit_id = r.unit_id AND p.phase = 'measure' AND p.attempt = u.attempt))
FROM unit_results r
"""


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="gm18-") as sock_dir:
        yield cli_env(Path(sock_dir))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Three shards of one plan (2 configurations x 3 repetitions), each in its own file."""
    tmp = tmp_path_factory.mktemp("shards")
    standard_tree(tmp / "powercap")
    plan = write_plan(tmp / "campaign.toml", tmp / "powercap")
    files = []
    with tempfile.TemporaryDirectory(prefix="gm18-") as sock_dir:
        for k in range(3):
            db = tmp / f"shard-{k}.duckdb"
            greenmon("run", str(plan), "--shard", f"{k}/3", "--db", str(db), "--quiet",
                     env=cli_env(Path(sock_dir)))  # fmt: skip
            files.append(db)
    return plan, files


def test_each_shard_records_its_part_and_host(shards: tuple[Path, list[Path]]) -> None:
    _, files = shards
    seen: list[int] = []
    for k, db in enumerate(files):
        with Store.open(db, read_only=True) as store:
            _, rows = store.query(
                "SELECT shard_index, shard_count, host, status FROM experiments"
            )
            assert len(rows) == 1
            assert rows[0][:2] == (k, 3) and rows[0][2] and rows[0][3] == "done"
            _, units = store.query("SELECT unit_id, status FROM units")
            assert {s for _, s in units} == {"done"}
            seen += [u for u, _ in units]
    assert sorted(seen) == list(range(6))


def test_merge_keeps_every_unit_session_and_sample_once(
    shards: tuple[Path, list[Path]], tmp_path: Path, env: dict[str, str]
) -> None:
    _, files = shards
    out = tmp_path / "campaign.duckdb"
    result = greenmon("merge", *map(str, files), "-o", str(out), env=env)
    assert "6 units (6 done)" in result.stdout
    samples_in = 0
    channels_in = 0
    for db in files:
        with Store.open(db, read_only=True) as store:
            samples_in += store.query("SELECT count(*) FROM samples")[1][0][0]
            channels_in += store.query("SELECT count(*) FROM channels")[1][0][0]
    with Store.open(out, read_only=True) as store:
        _, experiments = store.query("SELECT experiment_id, shard_count, merged_from FROM experiments")
        assert len(experiments) == 1 and experiments[0][1] == 3
        assert len(json.loads(experiments[0][2])) == 3
        _, units = store.query("SELECT unit_id FROM units ORDER BY 1")
        assert [u for (u,) in units] == list(range(6))
        assert store.query("SELECT count(*) FROM samples")[1][0][0] == samples_in
        # channel ids made unique, and every sample still reaches a channel of its session
        assert store.query("SELECT count(DISTINCT channel_id) FROM channels")[1][0][0] == channels_in
        assert store.query(
            "SELECT count(*) FROM samples s LEFT JOIN channels c USING (channel_id) "
            "WHERE c.channel_id IS NULL"
        )[1][0][0] == 0
        assert store.query("SELECT count(*) FROM sessions")[1][0][0] == 3
        # each unit's figures are the same merged as in its shard: phases, requests and
        # samples still line up per session after the channel ids changed
        merged = dict(store.query(_FIGURES)[1])
    per_shard: dict[int, tuple[object, ...]] = {}
    for db in files:
        with Store.open(db, read_only=True) as store:
            per_shard.update(dict(store.query(_FIGURES)[1]))
    assert merged == per_shard and len(merged) == 6
    assert all(figures[0] is not None and figures[2] > 0 for figures in merged.values())
    analysed = greenmon("analyze", "--db", str(out), env=env)
    assert "6 of 6 units analysed" in analysed.stdout


def test_merge_refuses_duplicates_and_other_plans(
    shards: tuple[Path, list[Path]], tmp_path: Path, env: dict[str, str]
) -> None:
    plan, files = shards
    twice = greenmon("merge", str(files[0]), str(files[0]), "-o", str(tmp_path / "a.duckdb"),
                     env=env, check=False)  # fmt: skip
    assert twice.returncode == 2 and "more than one input" in twice.stderr
    assert not (tmp_path / "a.duckdb").exists()
    other_plan = write_plan(tmp_path / "campaign.toml", plan.parent / "powercap", seed=12)
    other = tmp_path / "other.duckdb"
    greenmon("run", str(other_plan), "--shard", "0/3", "--db", str(other), "--quiet", env=env)
    refused = greenmon("merge", str(files[1]), str(other), "-o", str(tmp_path / "b.duckdb"),
                       env=env, check=False)  # fmt: skip
    assert refused.returncode == 2
    assert "different plan" in refused.stderr and "seed: 11 -> 12" in refused.stderr


def test_a_directory_of_parquet_exports_analyses_as_one_campaign(
    shards: tuple[Path, list[Path]], tmp_path: Path, env: dict[str, str]
) -> None:
    _, files = shards
    exports = tmp_path / "exports"
    for db in files:  # every host exports into the same directory, as copied together
        greenmon("export", "--db", str(db), "--out", str(exports), env=env)
    analysed = greenmon("analyze", "--db", str(exports), env=env)
    assert "6 of 6 units analysed" in analysed.stdout
    report = greenmon("report", "--db", str(exports), "--out", str(tmp_path / "r"), env=env)
    assert (tmp_path / "r" / "report.html").exists(), report.stdout


def test_a_shard_resumes_its_own_experiment(tmp_path: Path, env: dict[str, str]) -> None:
    """Two shards in one file: each finds its own unfinished experiment (plan hash + shard)."""
    standard_tree(tmp_path / "powercap")
    plan = write_plan(tmp_path / "campaign.toml", tmp_path / "powercap", repetitions=2)
    db = tmp_path / "both.duckdb"
    greenmon("run", str(plan), "--shard", "1/2", "--db", str(db), "--quiet", env=env)
    # leave shard 1 as a crash would: its experiment unfinished, one unit not yet run
    with Store.open(db) as store:
        store.execute("UPDATE experiments SET status = 'interrupted'")
        _, rows = store.query("SELECT min(unit_id) FROM units")
        redo = rows[0][0]
        store.execute("UPDATE units SET status = 'pending' WHERE unit_id = ?", [redo])
    greenmon("run", str(plan), "--shard", "0/2", "--db", str(db), "--quiet", env=env)
    greenmon("run", str(plan), "--shard", "1/2", "--db", str(db), "--quiet", env=env)
    with Store.open(db, read_only=True) as store:
        _, experiments = store.query(
            "SELECT shard_index, status, (SELECT count(*) FROM units u WHERE "
            "u.experiment_id = e.experiment_id) FROM experiments e ORDER BY shard_index"
        )
        _, attempts = store.query("SELECT unit_id, attempt FROM units ORDER BY unit_id")
    assert experiments == [(0, "done", 2), (1, "done", 2)]
    # only the unit left pending ran again, in shard 1's own experiment
    assert [a for u, a in attempts if u == redo] == [2]
    assert all(a == 1 for u, a in attempts if u != redo)
