"""`greenmon slurm` without a cluster: the array script it writes, as a person calls it.

The real journey (submitted, run, merged) is tests/campaign/test_slurm.py; this checks the
options README names (--partition, --gpus-per-task, --time), the captured environment and
the refusal when sbatch is absent, on any machine.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests.campaign.support import cli_env, greenmon, write_plan


def test_the_script_carries_the_options_and_the_environment_but_not_the_socket(
    tmp_path: Path,
) -> None:
    write_plan(tmp_path / "campaign.toml", tmp_path / "powercap", repetitions=3)
    with tempfile.TemporaryDirectory(prefix="gm18s-") as sock_dir:
        env = {**cli_env(Path(sock_dir)), "HF_HOME": "/data/hf", "GREENMON_DB": "/x.duckdb",
               "UNRELATED_SECRET": "no"}  # fmt: skip
        out = greenmon("slurm", "campaign.toml", "--shards", "4", "--out", "results",
                       "--partition", "gpu", "--gpus-per-task", "2", "--time", "12:00:00",
                       env=env, cwd=tmp_path)  # fmt: skip
    assert "submit it: sbatch" in out.stdout
    script = (tmp_path / "results" / "job.sbatch").read_text()
    for line in ("#SBATCH --array=0-3", "#SBATCH --exclusive", "#SBATCH --partition=gpu",
                 "#SBATCH --gpus-per-task=2", "#SBATCH --time=12:00:00",
                 "export HF_HOME=/data/hf", "export HF_HUB_OFFLINE=1"):  # fmt: skip
        assert line in script.splitlines(), (line, script)
    # one daemon per shard file: the submitter's socket and database are not carried
    assert "GREENMON_SOCKET" not in script and "GREENMON_DB" not in script
    assert "UNRELATED_SECRET" not in script
    assert '--shard auto --db "$db"' in script and 'shard-"$SLURM_ARRAY_TASK_ID"-of-4' in script
    manifest = json.loads((tmp_path / "results" / "campaign.json").read_text())
    assert manifest["shards"] == 4 and sum(manifest["units_per_shard"]) == manifest["units"]
    assert (tmp_path / "results" / "campaign.toml").read_text() == (
        tmp_path / "campaign.toml"
    ).read_text()


def test_submit_without_sbatch_says_the_job_was_written(tmp_path: Path) -> None:
    write_plan(tmp_path / "campaign.toml", tmp_path / "powercap", repetitions=3)
    with tempfile.TemporaryDirectory(prefix="gm18s-") as sock_dir:
        env = {**cli_env(Path(sock_dir)), "PATH": "/nonexistent"}
        result = greenmon("slurm", "campaign.toml", "--shards", "3", "--out", "results",
                          "--submit", env=env, cwd=tmp_path, check=False)  # fmt: skip
    assert result.returncode != 0
    assert "sbatch is not on PATH" in result.stdout + result.stderr
    assert (tmp_path / "results" / "job.sbatch").is_file()
