"""``greenmon run`` following a daemon that stops as the plan ends (a run that hosted the
daemon and whose queue emptied) reads the plan's outcome and summary from the file once it
is released (a queued run printed no results, then, by hand, a finished plan was
reported interrupted with exit status 130)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenmon.commands.run import result_from_file
from greenmon.runner import summary_rows
from greenmon.store import Store
from tests.support.synthetic import synthetic_results, write_synthetic_experiment

HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])  # read-write: the lock a running daemon holds
print("held", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    truth = synthetic_results(
        models=1, configurations=("torch/cpu", "onnx/cpu"), repetitions=2, seed=5,
        experiment_id="q",
    )  # fmt: skip
    path = tmp_path / "q.duckdb"
    with Store.open(path) as store:
        write_synthetic_experiment(store, truth, samples_per_channel_unit=20)
    return path


def _hold(path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_the_outcome_and_summary_are_read_once_the_stopping_daemon_lets_go(db: Path) -> None:
    with Store.open(db, read_only=True) as store:
        expected = summary_rows(store, "q")
    assert [row.configuration for row in expected] == ["onnx/cpu", "torch/cpu"]
    holder = _hold(db, 1.5)
    started = time.monotonic()
    try:
        status, rows = result_from_file(db, "q", wait_s=60)
    finally:
        holder.wait(30)
    assert time.monotonic() - started >= 0.5  # it waited for the holder, not failed at once
    assert rows == expected
    assert status == "done"  # the synthetic experiment ended; `run` exits 0 on it


def test_a_file_still_held_gives_no_rows_and_says_where_to_look(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = _hold(db, 30)
    try:
        assert result_from_file(db, "q", wait_s=0.5) == (None, [])
    finally:
        holder.kill()
        holder.wait(30)
    assert f"greenmon status --db {db}" in capsys.readouterr().err
