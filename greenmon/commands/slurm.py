"""``greenmon slurm PLAN --shards N``: a SLURM array job running one shard per task.

Writes a campaign directory (greenmon/campaign.py): the plan as it was at submission
(later edits to the original cannot change a running campaign), ``job.sbatch``,
``campaign.json`` and, as the tasks run, one database file per shard and ``logs/``.
The directory must be on storage every node sees.  Each task runs
``greenmon run PLAN --shard auto`` with ``--exclusive``, so nothing else shares the node
while it measures; a requeued task resumes its own shard (found by plan hash + shard).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from greenmon.campaign import CAMPAIGN_FILE
from greenmon.errors import GreenmonError
from greenmon.plan import Shard, load_plan

# The environment a task needs to behave as this shell does (offline hubs, caches,
# greenmon's own settings); SLURM's and the GPU's own variables are left to SLURM.
CAPTURED_PREFIXES = ("HF_", "TRANSFORMERS_", "GREENMON_", "TORCH_", "OMP_", "MKL_")
CAPTURED_NAMES = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "XDG_CACHE_HOME", "LD_LIBRARY_PATH")
# One daemon per file, found from the file: a task must not reach the submitter's daemon.
NOT_CAPTURED = ("GREENMON_SOCKET", "GREENMON_DB")


class SlurmError(GreenmonError):
    title = "SLURM job not written"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", help="plan file (TOML)")
    parser.add_argument("--shards", type=int, required=True, help="array tasks (shards), N")
    parser.add_argument("--partition", default=None, help="SLURM partition (default: its own)")
    parser.add_argument("--gpus-per-task", type=int, default=None, help="GPUs for each task")
    parser.add_argument("--time", default=None, help="time limit per task, e.g. 12:00:00")
    parser.add_argument(
        "--out", default=None,
        help="campaign directory on shared storage (default: ./campaign-<plan name>)",
    )  # fmt: skip
    parser.add_argument("--submit", action="store_true", help="submit with sbatch; print job id")


def captured_environment(environ: dict[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in sorted(environ.items())
        if (name in CAPTURED_NAMES or name.startswith(CAPTURED_PREFIXES))
        and name not in NOT_CAPTURED
    }


def sbatch_script(
    *,
    plan_file: Path,
    directory: Path,
    shards: int,
    job_name: str,
    python: str,
    workdir: Path,
    environ: dict[str, str],
    partition: str | None = None,
    gpus_per_task: int | None = None,
    time_limit: str | None = None,
) -> str:
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        "# Written by `greenmon slurm`: one shard of the plan per array task.",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --array=0-{shards - 1}",
        "#SBATCH --exclusive",
        "#SBATCH --ntasks=1",
        f"#SBATCH --output={directory / 'logs'}/shard-%A-%a.out",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if gpus_per_task:
        lines.append(f"#SBATCH --gpus-per-task={gpus_per_task}")
    if time_limit:
        lines.append(f"#SBATCH --time={time_limit}")
    lines += ["set -euo pipefail", "# the environment of the shell that wrote this job"]
    lines += [f"export {name}={q(value)}" for name, value in environ.items()]
    lines += [
        f"cd {q(str(workdir))}",
        f'db={q(str(directory))}/shard-"$SLURM_ARRAY_TASK_ID"-of-{shards}.duckdb',
        'echo "greenmon shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT on $(hostname)"',
        f'exec {q(python)} -m greenmon.cli run {q(str(plan_file))} --shard auto --db "$db"',
        "",
    ]
    return "\n".join(lines)


def submit(script: Path) -> str:
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError(
            f"sbatch is not on PATH, so the job was written ({script}) but not submitted. "
            "Run this on a SLURM login node, or submit it there with `sbatch` yourself."
        )
    result = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SlurmError(
            f"sbatch refused {script}: {result.stderr.strip() or result.stdout.strip()}. "
            "Check the partition, time and GPU options against `sinfo`."
        )
    return result.stdout.strip().split(";")[0]


def run(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    if args.shards < 1:
        raise SlurmError(f"--shards {args.shards}: give at least 1.")
    units = len(plan.all_units())
    if args.shards > units:
        raise SlurmError(
            f"--shards {args.shards} is more than the plan's {units} units; some tasks would "
            "have nothing to run. Give at most that many shards."
        )
    directory = Path(args.out or f"campaign-{plan.name}").absolute()
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    plan_file = directory / Path(args.plan).name  # same stem: same plan name
    plan_file.write_text(plan.text)
    script = directory / "job.sbatch"
    job_name = "greenmon-" + re.sub(r"[^A-Za-z0-9_.-]", "-", plan.name)
    script.write_text(
        sbatch_script(
            plan_file=plan_file,
            directory=directory,
            shards=args.shards,
            job_name=job_name,
            python=sys.executable,
            workdir=Path.cwd(),
            environ=captured_environment(dict(os.environ)),
            partition=args.partition,
            gpus_per_task=args.gpus_per_task,
            time_limit=args.time,
        )
    )
    script.chmod(0o755)
    sizes = [len(replace(plan, shard=Shard(k, args.shards)).units()) for k in range(args.shards)]
    manifest = {
        "plan": plan.name,
        "plan_file": str(plan_file),
        "plan_hash": plan.plan_hash,
        "shards": args.shards,
        "units": units,
        "units_per_shard": sizes,
        "script": str(script),
        "job_id": None,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (directory / CAMPAIGN_FILE).write_text(json.dumps(manifest, indent=2))
    print(f"wrote {script}: {args.shards} shards of plan '{plan.name}' ({units} units, "
          f"{min(sizes)}-{max(sizes)} per shard), databases in {directory}")  # fmt: skip
    if args.submit:
        job_id = submit(script)
        manifest["job_id"] = job_id
        (directory / CAMPAIGN_FILE).write_text(json.dumps(manifest, indent=2))
        print(f"submitted job {job_id}")
        print(f"watch it: greenmon status {directory}")
        print(f"then: greenmon merge {directory}/shard-*.duckdb -o campaign.duckdb")
    else:
        print(f"submit it: sbatch {script}   (or run this again with --submit)")
    return 0
