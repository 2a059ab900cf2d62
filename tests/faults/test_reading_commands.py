"""The commands that read a database, given one that is not there, and given a reader that
stops early.

A mistyped ``--db`` must not create an empty database (or a report folder) and then report
an experiment with no data: each reading command says the file does not exist, in one
paragraph, and leaves the directory as it was.  ``greenmon sql ... | head -1`` ends
quietly, with 141 as for any tool SIGPIPE ends, and no traceback.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from greenmon.store import Store
from tests.faults.support import assert_one_paragraph_error, cli_env, greenmon_cmd

READING_COMMANDS = {
    "analyze": ["analyze"],
    "report": ["report"],
    "export": ["export", "--format", "csv", "--out", "exported"],
    "status": ["status"],
    "sql": ["sql", "SELECT count(*) FROM units"],
    "restore": ["restore"],
}


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(dir="/tmp") as socket_dir:
        return subprocess.run(
            greenmon_cmd(*args),
            cwd=cwd,
            env=cli_env(GREENMON_SOCKET=f"{socket_dir}/d.sock", **env),
            capture_output=True,
            text=True,
            timeout=120,
        )


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("command", READING_COMMANDS)
def test_a_missing_database_is_named_and_nothing_is_created(tmp_path: Path, command: str) -> None:
    done = cli(tmp_path, *READING_COMMANDS[command], "--db", "typo.duckdb")
    assert done.returncode == 2, done.stderr
    assert_one_paragraph_error(
        done.stderr, "No such database", "typo.duckdb does not exist", str(tmp_path), "--db"
    )
    assert tree(tmp_path) == []  # no database, no .wal, no report or export folder


def test_the_default_database_from_the_environment_is_checked_too(tmp_path: Path) -> None:
    done = cli(tmp_path, "report", GREENMON_DB="elsewhere/results.duckdb")
    assert done.returncode == 2, done.stderr
    assert_one_paragraph_error(done.stderr, "elsewhere/results.duckdb does not exist")
    assert tree(tmp_path) == []


def test_an_empty_file_is_refused_and_left_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.duckdb").touch()
    done = cli(tmp_path, "analyze", "--db", "empty.duckdb")
    assert done.returncode == 2, done.stderr
    assert_one_paragraph_error(done.stderr, "No such database", "is empty")
    assert tree(tmp_path) == ["empty.duckdb"]
    assert (tmp_path / "empty.duckdb").stat().st_size == 0


@pytest.mark.parametrize("output", ["--csv", "--json"])
def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path, output: str) -> None:
    db = tmp_path / "results.duckdb"
    Store.open(db).close()
    env = cli_env()
    # Unbuffered output writes each print straight to the pipe and, by a quirk of Python's
    # unbuffered text layer, drops what a partial write left over without an error: a
    # person's shell has it buffered, so the test does too.
    env.pop("PYTHONUNBUFFERED", None)
    with tempfile.TemporaryDirectory(dir="/tmp") as socket_dir:
        env["GREENMON_SOCKET"] = f"{socket_dir}/d.sock"
        # About 2 MB of rows: far more than a pipe holds, so the writer meets the closed end.
        process = subprocess.Popen(
            greenmon_cmd("sql", "--db", str(db), output, "SELECT * FROM range(300000)"),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None and process.stderr is not None
            first = process.stdout.readline()
            process.stdout.close()  # what `head -1` does after its line
            stderr = process.stderr.read()
            returncode = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert first.strip() in ("range", "[")
    assert stderr == ""  # no traceback, no "Exception ignored" at exit
    assert returncode == 141
    assert os.listdir(tmp_path) == ["results.duckdb"]
