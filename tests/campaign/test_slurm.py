"""The campaign journey on a real one-node SLURM: README's "Running a campaign on a
cluster" commands, run as a person runs them.

`.ci/start-slurm` installs (root, Debian, package registry reachable) and starts munge,
slurmctld and slurmd when no cluster answers; the test stops what it started, by pid.
Where SLURM cannot start, the test skips with the script's reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenmon.store import Store
from tests.campaign.support import REPO, cli_env, greenmon, write_plan
from tests.fakes.rapl import standard_tree

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

START = REPO / ".ci" / "start-slurm"


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    state = Path(tempfile.mkdtemp(prefix="gm-slurm-"))
    try:
        started = subprocess.run([str(START), str(state)], capture_output=True, text=True,
                                 timeout=1500)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip("SLURM did not start within 25 minutes (package installation?)")
    if started.returncode != 0:
        reason = (started.stdout + started.stderr).strip().splitlines()
        pytest.skip(f"no SLURM here: {reason[-1] if reason else 'start-slurm failed'}")
    try:
        yield
    finally:
        subprocess.run([str(START), "--stop", str(state)], timeout=60)
        shutil.rmtree(state, ignore_errors=True)


def _wait_for_job(job_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        time.sleep(1.0)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"SLURM job {job_id} did not finish in {timeout_s} s")


def test_a_plan_sharded_over_a_slurm_array_runs_every_unit_once(
    slurm: None, tmp_path: Path
) -> None:
    standard_tree(tmp_path / "powercap")
    write_plan(tmp_path / "campaign.toml", tmp_path / "powercap", repetitions=3)
    with tempfile.TemporaryDirectory(prefix="gm18-") as sock_dir:
        env = cli_env(Path(sock_dir))
        # README: greenmon slurm campaign.toml --shards 3 --out results --submit
        submitted = greenmon("slurm", "campaign.toml", "--shards", "3", "--out", "results",
                             "--submit", env=env, cwd=tmp_path)  # fmt: skip
        match = re.search(r"submitted job (\d+)", submitted.stdout)
        assert match, submitted.stdout
        script = (tmp_path / "results" / "job.sbatch").read_text()
        assert "#SBATCH --array=0-2" in script and "#SBATCH --exclusive" in script
        _wait_for_job(match.group(1), timeout_s=600)
        # README: greenmon status results
        status = greenmon("status", "results", env=env, cwd=tmp_path)
        assert "6/6 units done" in status.stdout, status.stdout
        shards = sorted((tmp_path / "results").glob("shard-*.duckdb"))
        assert len(shards) == 3, [p.name for p in (tmp_path / "results").iterdir()]
        for path in shards:
            index = int(path.name.split("-")[1])
            with Store.open(path, read_only=True) as store:
                _, rows = store.query("SELECT shard_index, shard_count, host FROM experiments")
            assert rows == [(index, 3, rows[0][2])] and rows[0][2]
        # README: greenmon merge results/shard-*.duckdb -o campaign.duckdb
        greenmon("merge", *[str(p.relative_to(tmp_path)) for p in shards], "-o",
                 "campaign.duckdb", env=env, cwd=tmp_path)  # fmt: skip
        # README: greenmon analyze --db campaign.duckdb
        analysed = greenmon("analyze", "--db", "campaign.duckdb", "--json", env=env,
                            cwd=tmp_path)  # fmt: skip
        # README: greenmon report --db campaign.duckdb --out campaign-report
        greenmon("report", "--db", "campaign.duckdb", "--out", "campaign-report", env=env,
                 cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "campaign-report" / "report.html").exists()
    result = json.loads(analysed.stdout)
    assert result["units_total"] == 6 and result["units_analysed"] == 6
    with Store.open(tmp_path / "campaign.duckdb", read_only=True) as store:
        _, units = store.query(
            """SELECT u.unit_id, u.status, u.attempt,
                      (SELECT count(*) FROM phases p WHERE p.experiment_id = u.experiment_id
                         AND p.unit_id = u.unit_id AND p.phase = 'measure') AS measured
               FROM units u ORDER BY u.unit_id"""
        )
        _, sessions = store.query("SELECT count(*) FROM sessions")
    # every unit of the plan, once: done on its first attempt, one measured phase
    assert units == [(unit_id, "done", 1, 1) for unit_id in range(6)]
    assert sessions[0][0] == 3  # one per array task
