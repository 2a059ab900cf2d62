"""``greenmon run PLAN``: run an experiment headless with a live progress line."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from greenmon.commands.common import (
    add_db_argument,
    format_table,
    greenmon_error_in,
    resolve_db,
)
from greenmon.config import parse_config
from greenmon.daemon import Daemon
from greenmon.errors import GreenmonError
from greenmon.plan import Plan, check_plan, load_plan, parse_shard
from greenmon.runner import runner_service
from greenmon.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    parser.add_argument("plan", help="plan file (TOML)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume the unfinished experiment of this plan (found by hash)",
    )
    parser.add_argument(
        "--force", action="store_true", help="start a new experiment even though the plan changed"
    )
    parser.add_argument("--quiet", action="store_true", help="no live progress line")
    # issue 18: one deterministic part of the plan's units, for campaigns across machines.
    parser.add_argument(
        "--shard", default=None, metavar="K/N",
        help="run only the K-th (from 0) of N parts of the units; 'auto' inside a SLURM array",
    )  # fmt: skip


def probes_config(plan: Plan) -> Any:
    """The daemon config for a plan: its [probes.*] tables, as in a config file."""
    lines: list[str] = []
    for name, table in plan.spec.probes.items():
        lines.append(f"[probes.{name}]")
        for key, value in table.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return parse_config("\n".join(lines), plan.path)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def progress_line(progress: dict[str, Any], watts: float | None) -> str:
    unit = progress.get("unit") or {}
    parts = [f"unit {progress['unit_index']}/{progress['units_total']}"]
    if unit:
        parts.append(f"{unit['model']} {unit['configuration']} rep {unit['repetition']}")
    if progress.get("phase"):
        phase = progress["phase"]
        if progress.get("phase_remaining_s") is not None:
            phase += f" {progress['phase_remaining_s']:.0f}s"
        parts.append(phase)
    if progress.get("phase") == "measure":
        parts.append(f"request {progress['request_index']}/{progress['requests_total']}")
    if watts is not None:
        parts.append(f"{watts:.1f} W")
    if progress.get("eta_s") is not None:
        parts.append(f"ETA {progress['eta_s'] / 60:.1f} min")
    return " | ".join(parts)


def current_watts(daemon: Daemon) -> float | None:
    total = None
    for health in daemon.health():
        for name, value in health.get("last_values", {}).items():
            if value is not None and name.endswith((".power_w", ".load_w")):
                total = (total or 0.0) + value
    return total


async def run_experiment(
    plan: Plan, db: Path, *, resume: bool, force: bool, quiet: bool, **runner_kwargs: Any
) -> tuple[str, list[dict[str, Any]]]:
    store = Store.open(db)
    try:
        daemon = Daemon(
            store,
            probes_config(plan),
            services=[runner_service(plan, resume=resume, force=force, **runner_kwargs)],
        )
        async with anyio.create_task_group() as group:
            group.start_soon(daemon.run)
            await daemon.started.wait()
            interactive = sys.stderr.isatty()
            while not daemon.stopping:
                if not quiet and daemon.runner is not None:
                    line = progress_line(daemon.runner.progress(), current_watts(daemon))
                    if interactive:
                        print("\r\033[K" + line, end="", file=sys.stderr, flush=True)
                with anyio.move_on_after(1.0 if interactive else 10.0):
                    while not daemon.stopping:
                        await anyio.sleep(0.1)
                if not quiet and not interactive and daemon.runner:
                    print(
                        progress_line(daemon.runner.progress(), current_watts(daemon)),
                        file=sys.stderr,
                        flush=True,
                    )
            if not quiet and interactive:
                print(file=sys.stderr)
        experiment_id = daemon.experiment_id
        if experiment_id is None or daemon.runner is None:
            raise GreenmonError("the daemon stopped before the experiment started")
        summary: list[dict[str, Any]] = daemon.runner.summary_rows(experiment_id)
        # the runner's final state: done, cancelled, interrupted (a signal) or failed
        summary_status = str(daemon.runner.state.status)
        if summary_status != "done":
            raise RunInterrupted(experiment_id, summary_status, summary)
        return experiment_id, summary
    finally:
        store.close()


class RunInterrupted(Exception):
    """The experiment stopped before every unit ran; what finished is kept."""

    def __init__(self, experiment_id: str, status: str, summary: list[dict[str, Any]]) -> None:
        super().__init__(status)
        self.experiment_id = experiment_id
        self.status = status
        self.summary = summary


def unwrap(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def print_summary(db: Path, experiment_id: str, summary: list[dict[str, Any]]) -> None:
    columns = [
        "configuration",
        "units",
        "median_energy_j",
        "median_duration_s",
        "median_j_per_token",
        "flags",
    ]
    rows = [
        [row.get(c) if c != "flags" else ",".join(row.get("flags") or []) for c in columns]
        for row in summary
    ]
    print(f"experiment {experiment_id}: medians per configuration over finished units")
    print(format_table(columns, rows))
    print(f'database: {db}  (greenmon sql --db {db} "SELECT * FROM unit_results")')


def run(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    if args.shard is not None:  # issue 18
        plan = dataclasses.replace(plan, shard=parse_shard(args.shard))
    # deep: an unknown model or a broken workload file stops here, with the reason, rather
    # than failing every unit of an experiment that then reports nothing.
    check = check_plan(plan, deep=True)
    if check.problems:
        raise GreenmonError(" ".join(check.problems), title="Plan cannot run here")
    from greenmon.api import submit_plan

    # issue 18: a shard runs in its own process and file; a daemon would run every unit.
    experiment = submit_plan(Path(args.plan), args.force) if plan.shard is None else None
    if experiment is not None:
        print(f"submitted to the running daemon as experiment {experiment}; "
              "watch it with `greenmon tui` or `greenmon status`")
        return 0
    db = resolve_db(args.db)
    started = time.monotonic()
    try:
        experiment_id, summary = anyio.run(
            lambda: run_experiment(plan, db, resume=args.resume, force=args.force, quiet=args.quiet)
        )
    except RunInterrupted as stopped:
        print_summary(db, stopped.experiment_id, stopped.summary)
        print(
            f"greenmon: experiment {stopped.experiment_id} {stopped.status} before every unit "
            "ran; finished units are kept. Run the same command again to resume it.",
            file=sys.stderr,
        )
        return 130 if stopped.status == "interrupted" else 1
    except BaseExceptionGroup as group:
        inner = greenmon_error_in(group)
        if inner is not None:
            raise inner from None
        raise
    print_summary(db, experiment_id, summary)
    print(f"took {time.monotonic() - started:.0f} s")
    return 0
