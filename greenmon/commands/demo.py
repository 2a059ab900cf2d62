"""``greenmon demo``: README's main command, a complete small experiment on ``tiny``.

The embedded ``tiny`` model (built locally, deterministically) served by torch, onnx,
openvino and torchscript on the CPU, a subset of the study's 164 prompts, 3 repetitions in
seeded random order with short cooldowns, every probe that works here (the labelled CPU
estimate where nothing can be measured), then the results table and a report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anyio

from greenmon.commands.common import add_db_argument
from greenmon.commands.run import (
    RunInterrupted,
    print_summary,
    run_experiment,
    say_if_busy,
    unwrap,
)
from greenmon.errors import GreenmonError
from greenmon.plan import parse_plan

DEMO_DB = "greenmon-demo.duckdb"

DEMO_PLAN = """
name = "demo"
models = ["tiny"]
configurations = ["torch/cpu", "onnx/cpu", "openvino/cpu", "torchscript/cpu"]
workload = "gaissa-164"
prompts = {prompts}
max_new_tokens = 16
batch_size = 1
repetitions = {repetitions}
seed = 2024
order = "random"
warmup_requests = 2

[cooldown]
before_s = {cooldown_s}
after_s = {cooldown_s}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per unit (of 164)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument(
        "--cooldown",
        type=float,
        default=2.0,
        metavar="S",
        help="cooldown before and after each measured phase",
    )
    parser.add_argument("--out", default="greenmon-report", help="report directory")
    parser.add_argument("--quiet", action="store_true", help="no live progress line")


def run(args: argparse.Namespace) -> int:
    db = Path(args.db or DEMO_DB)
    text = DEMO_PLAN.format(
        prompts=args.prompts, repetitions=args.repetitions, cooldown_s=args.cooldown
    )
    plan = parse_plan(text, Path("demo.toml"))
    units = len(plan.units())
    print(
        f"greenmon demo: {units} units (tiny x 4 CPU configurations x {args.repetitions} "
        f"repetitions, {args.prompts} prompts x 16 new tokens each) into {db}"
    )
    say_if_busy(plan)
    started = time.monotonic()
    try:
        # --force: a demo always starts a fresh experiment, even after an interrupted one.
        experiment_id, summary = anyio.run(
            lambda: run_experiment(
                plan, db, resume=False, force=True, quiet=args.quiet, library_log=True
            )
        )
    except RunInterrupted as stopped:
        print_summary(db, stopped.experiment_id, stopped.summary)
        print(
            f"greenmon demo: {stopped.status} before every unit ran; no report written.",
            file=sys.stderr,
        )
        return 130 if stopped.status == "interrupted" else 1
    except BaseExceptionGroup as group:
        inner = unwrap(group)
        if isinstance(inner, GreenmonError):
            raise inner from None
        raise
    print_summary(db, experiment_id, summary)
    print(f"took {time.monotonic() - started:.0f} s")
    try:
        from greenmon.analysis.report import write_report
    except ImportError:
        print("report: the analysis package is not installed (pip install 'greenmon[analysis]')")
        return 0
    report = write_report(db, experiment_id, Path(args.out))
    print(f"report: {report}")
    return 0
