"""``greenmon plan check PLAN``: validate a plan before anything runs."""

from __future__ import annotations

import argparse

from greenmon.commands.common import add_db_argument, resolve_db
from greenmon.errors import PlanError
from greenmon.interference import busy_note
from greenmon.plan import Plan, load_plan
from greenmon.plan.check import check_plan, stored_update_periods


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["check"], help="what to do with the plan")
    parser.add_argument("plan", help="plan file (TOML)")
    # the sensors' update periods detected in earlier sessions of this file
    add_db_argument(parser)


def run(args: argparse.Namespace) -> int:
    plan = load_plan(args.plan)
    result = check_plan(plan, update_periods_s=stored_update_periods(resolve_db(args.db)))
    configurations = ", ".join(f"{e}/{p}" for e, p in plan.configurations)
    print(
        f"plan '{plan.name}' ({plan.plan_hash[:12]}): {len(plan.spec.models)} model(s) x "
        f"{len(plan.configurations)} configuration(s) [{configurations}] x "
        f"{len(plan.factor_levels())} factor level combination(s) x "
        f"{_repetitions(plan)} = {result.units} units, order {plan.spec.order}"
    )
    print(
        f"estimated duration: {result.estimated_s / 60:.1f} min "
        "(cooldowns plus an assumed 20 ms per generated token)"
    )
    for note in result.notes:
        print(f"note: {note}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    busy = busy_note(
        plan.spec.cooldown.background_cpu_percent_max,
        plan.spec.cooldown.wait_for_quiet_s,
        host_options=plan.spec.probes.get("host"),
    )
    if busy:
        print(f"warning: {busy}")
    if result.problems:
        raise PlanError(
            "The plan cannot run here: "
            + " ".join(f"({i}) {p}." for i, p in enumerate(result.problems, start=1))
        )
    print("ok")
    return 0


def _repetitions(plan: Plan) -> str:
    if not plan.auto_repetitions:
        return f"{plan.repetitions} repetition(s)"
    precision = plan.spec.precision
    return (
        f"{precision.min_repetitions} to {precision.max_repetitions} repetitions (auto: until "
        f"each configuration's {precision.confidence:.0%} interval of its median energy is "
        f"within +-{precision.ci_half_width:.0%})"
    )
