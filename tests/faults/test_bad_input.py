"""Bad input to the commands: each exits 2 with one paragraph saying what to fix, prints
no traceback, and loses nothing already stored.

Read-only directory: a read-only bind mount (root ignores permission bits, not a
read-only mount).  Full disk: a 3 MiB tmpfs.  Both need ``mount`` (root in a container
that allows it); the cases skip, saying so, where it is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from greenmon.store import SampleBatch, Store
from tests.fakes.rapl import standard_tree
from tests.faults.support import REPO, assert_one_paragraph_error, cli_env, greenmon_cmd


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    socket_dir = tempfile.mkdtemp(dir="/tmp")
    try:
        return subprocess.run(
            greenmon_cmd(*args),
            cwd=cwd or REPO,
            env=cli_env(GREENMON_SOCKET=f"{socket_dir}/d.sock"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        subprocess.run(["rm", "-rf", socket_dir], check=False)


GOOD_PLAN = """
name = "bad-input"
models = ["tiny"]
configurations = ["fake/cpu"]
prompts = 2
max_new_tokens = 4
repetitions = 1
custom_engines = { fake = "tests.fakes.engine:FakeEngine" }
"""

PLANS = {
    "malformed TOML": ('models = ["tiny"\n', "not valid TOML"),
    "unknown key": (GOOD_PLAN + "colldown = 3\n", "Unknown key 'colldown'"),
    "wrong type": (GOOD_PLAN.replace("repetitions = 1", 'repetitions = "three"'), "repetitions"),
    "unknown engine": (
        GOOD_PLAN.replace('["fake/cpu"]', '["caffe/cpu"]'),
        "unknown engine 'caffe'",
    ),
    "unknown model": (
        GOOD_PLAN.replace('["tiny"]', '["no-such-model"]'),
        "model 'no-such-model'",
    ),
    "broken JSONL": (GOOD_PLAN + 'workload = "{jsonl}"\n', "line 2: not valid JSON"),
}


@pytest.mark.parametrize("case", list(PLANS))
def test_a_bad_plan_is_refused_before_anything_runs(tmp_path: Path, case: str) -> None:
    text, needle = PLANS[case]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"id": 1, "prompt": "def f():"}\n{"id": 2, "prompt": \n')
    plan = tmp_path / "plan.toml"
    plan.write_text(text.replace("{jsonl}", str(jsonl)))
    db = tmp_path / "run.duckdb"
    result = cli("run", str(plan), "--db", str(db), "--quiet")
    assert result.returncode == 2, result.stderr
    assert_one_paragraph_error(result.stderr, needle)
    assert not db.exists()  # refused before a database was even created


# errors in a plan's [probes.*] tables named the line of a TOML
# rewritten from them ("line 2"), not the plan's own line.
PROBE_TABLE_PLAN = GOOD_PLAN + """
[factors]
batch_size = [1]

[probes.host]
enabled = false

[probes.rapl]
rate_hz = 10
rate = 10
"""


def test_a_bad_key_in_a_plans_probe_table_names_the_plans_line(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(PROBE_TABLE_PLAN)
    line = PROBE_TABLE_PLAN.splitlines().index("rate = 10") + 1
    db = tmp_path / "run.duckdb"
    result = cli("run", str(plan), "--db", str(db), "--quiet")
    assert result.returncode == 2, result.stderr
    assert_one_paragraph_error(
        result.stderr, f"Unknown key 'probes.rapl.rate' in {plan}, line {line}."
    )
    assert not db.exists()


CONFIGS = {
    "malformed TOML": ("[probes.rapl\n", "not valid TOML"),
    "unknown key": ("[probes.rapl]\nrate = 10\n", "Unknown key 'probes.rapl.rate'"),
    "wrong type": ('[probes.rapl]\nrate_hz = "fast"\n', "Wrong value for 'probes.rapl.rate_hz'"),
    "unknown probe": ("[probes.wattsup]\n", "Unknown probe 'wattsup'"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_bad_config_is_refused(tmp_path: Path, case: str) -> None:
    text, needle = CONFIGS[case]
    config = tmp_path / "greenmon.toml"
    config.write_text(text)
    db = tmp_path / "daemon.duckdb"
    result = cli("daemon", "--db", str(db), "--config", str(config), "--duration", "0.2")
    assert result.returncode == 2, result.stderr
    assert_one_paragraph_error(result.stderr, needle)
    assert not db.exists()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored_db(path: Path, samples: int = 500) -> None:
    """A greenmon database holding one session's samples."""
    with Store.open(path) as store:
        session = store.start_session({"host": "test"}, 0, 0)
        batch = SampleBatch()
        for i in range(samples):
            batch.append_row(i, [10**6], [float(i)])  # no channel: told apart below
        store.write(batch, [], session)


def samples_by_session(path: Path) -> dict[bool, int]:
    """How many samples a file holds, by whether their channel is unregistered (the
    earlier session's, from ``stored_db``: True) or the daemon's (False)."""
    with Store.open(path, read_only=True) as store:
        _, rows = store.query(
            "SELECT c.session_id IS NULL, count(*) FROM samples s "
            "LEFT JOIN channels c USING (channel_id) GROUP BY 1"
        )
    return {bool(unregistered): int(n) for unregistered, n in rows}


def sample_count(path: Path) -> int:
    result = cli("sql", "--db", str(path), "--json", "SELECT count(*) AS n FROM samples")
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)[0]["n"])


def test_a_database_from_a_newer_greenmon_is_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "newer.duckdb"
    stored_db(db)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE greenmon_meta SET value = '99' WHERE key = 'schema_version'")
    before = sha256(db)
    for args in (
        ("daemon", "--db", str(db), "--duration", "0.2"),
        ("sql", "--db", str(db), "SELECT count(*) FROM samples"),
        ("status", "--db", str(db)),
    ):
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert_one_paragraph_error(result.stderr, "schema version 99", "left untouched")
    assert sha256(db) == before


@contextlib.contextmanager
def mounted(*commands: list[str], target: Path) -> Iterator[None]:
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", str(target)], capture_output=True, check=False)
            pytest.skip(f"cannot mount here ({' '.join(command)}: {done.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, check=False)


def test_a_read_only_directory_is_a_clear_error_and_keeps_what_is_stored(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    existing = directory / "kept.duckdb"
    stored_db(existing)
    target = str(directory)
    with mounted(
        ["mount", "--bind", target, target],
        ["mount", "-o", "remount,bind,ro", target],
        target=directory,
    ):
        for db in (directory / "new.duckdb", existing):
            result = cli("daemon", "--db", str(db), "--duration", "0.5")
            assert result.returncode == 2, result.stderr
            assert_one_paragraph_error(result.stderr, str(db))
        assert sample_count(existing) == 500  # still readable, nothing lost
    assert not (directory / "new.duckdb").exists()


@pytest.mark.slow
def test_a_full_disk_stops_the_daemon_with_a_clear_error_and_keeps_what_was_flushed(
    tmp_path: Path,
) -> None:
    disk = Path(tempfile.mkdtemp(dir="/tmp"))
    standard_tree(tmp_path / "powercap")
    config = tmp_path / "greenmon.toml"
    config.write_text(
        f'[probes.rapl]\nrate_hz = 1000\nsysfs_root = "{tmp_path / "powercap"}"\n'
        "[probes.host]\nrate_hz = 100\n"
        "[probes.nvml]\nenabled = false\n[probes.estimate]\nenabled = false\n"
    )
    db = disk / "full.duckdb"
    try:
        with mounted(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], target=disk):
            stored_db(db, samples=1000)
            result = cli("daemon", "--db", str(db), "--config", str(config), "--duration", "60")
            assert result.returncode == 2, result.stderr[-3000:]
            assert_one_paragraph_error(
                result.stderr.split("\n", 1)[1],  # after the "daemon started" line
                "No space left on device",
                "everything flushed before is kept",
            )
            # On the full disk: the earlier session's samples are all there (the daemon's
            # only as far as a journal load put them there before the disk filled).
            assert samples_by_session(db).get(True) == 1000
            roomy = tmp_path / "roomy"
            roomy.mkdir()
            for path in disk.iterdir():
                if path.is_file():
                    shutil.copy2(path, roomy / path.name)
        # Every sample the daemon journaled before the disk filled is kept: where there is
        # room again, the next open loads them (however far its loads had come, which
        # depends on how fast it sampled).
        counts = samples_by_session(roomy / db.name)
        assert counts.get(True) == 1000, counts
        assert counts.get(False, 0) > 1000, counts
    finally:
        subprocess.run(["rm", "-rf", str(disk)], check=False)
