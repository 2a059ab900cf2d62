"""What a plan needs of this host, said before anything runs (``greenmon plan check``, and
``greenmon run`` before its first unit): configurations usable here, models resolvable, the
workload readable, hardware factors within this machine's ranges and privileges, and the
warnings of a plan that will run but weakly (too few repetitions, windows too short for
the slowest energy source).

This is the only part of a plan that reaches the host, the engines and the store, which is
why it is its own module: parsing a plan (greenmon/plan/schema.py) stays free of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from greenmon.hardware.checks import check_hardware, hardware_access
from greenmon.plan.schema import Plan
from greenmon.sources import EDGE_READ_PROBES, ENERGY_PROBES, window_resolution_sql
from greenmon.thresholds import MIN_REPETITIONS, MIN_WINDOW_PERIODS

# Per generated token, when no earlier run on this machine says better.
DEFAULT_TOKEN_S = 0.02
DEFAULT_LOAD_S = 5.0


@dataclass
class PlanCheck:
    plan: Plan
    units: int
    estimated_s: float
    problems: list[str]
    notes: list[str]
    # what will run but weakly (too few repetitions, windows too short).
    warnings: list[str] = dataclasses.field(default_factory=list)


def check_plan(
    plan: Plan,
    *,
    cache_dir: str | None = None,
    deep: bool = True,
    update_periods_s: Mapping[str, float] | None = None,
) -> PlanCheck:
    """Everything that can be known before anything runs: configurations usable here,
    models resolvable, the workload readable.  ``deep=False`` skips building models.
    ``update_periods_s`` (energy source -> seconds, e.g. from ``stored_update_periods``)
    lets the check warn about measure windows too short for the slowest source."""
    problems = _configuration_problems(plan)
    model_problems, prompts_count = _model_problems(plan, cache_dir, deep)
    problems += model_problems
    units = plan.units()
    cooldown_s = plan.spec.cooldown.before_s + plan.spec.cooldown.after_s
    tokens = plan.spec.max_new_tokens * ((prompts_count or 164) + plan.spec.warmup_requests)
    per_unit_s = cooldown_s + DEFAULT_LOAD_S + tokens * DEFAULT_TOKEN_S / plan.spec.batch_size
    # hardware factors (DVFS) are checked against this machine's ranges and the
    # privileges they need; a plan without them costs nothing here.
    problems += check_hardware(plan)
    notes: list[str] = []
    access = hardware_access(plan)
    if access is not None:
        notes.append(access)
    notes += _plan_notes(plan)
    if plan.auto_repetitions and plan.shard is not None:
        # the stop rule needs every configuration's values; a shard has a part
        problems.append(
            'repetitions = "auto" decides after each round on all of a configuration\'s '
            "units, and a shard runs only part of them: give a fixed number of repetitions "
            "to run the plan in shards"
        )
    warnings = repetition_warnings(plan)
    warnings += window_warnings(plan, prompts_count or 164, update_periods_s or {})
    return PlanCheck(plan, len(units), per_unit_s * len(units), problems, notes, warnings)


def _configuration_problems(plan: Plan) -> list[str]:
    """check_plan: each configuration (but custom engines) that cannot run here, and why."""
    from greenmon.engines import check_configuration

    problems: list[str] = []
    for engine, provider in plan.configurations:
        if engine in plan.spec.custom_engines:
            continue
        if engine in plan.spec.engines:
            python = Path(plan.spec.engines[engine].python).expanduser()
            if not (python.is_file() and os.access(python, os.X_OK)):
                problems.append(
                    f"configuration {engine}/{provider} cannot run here: [engines.{engine}] "
                    f"python = {str(python)!r} is not an executable file"
                )
            continue
        reason = check_configuration(engine, provider)
        if reason:
            problems.append(f"configuration {engine}/{provider} cannot run here: {reason}")
    return problems


def _model_problems(plan: Plan, cache_dir: str | None, deep: bool) -> tuple[list[str], int]:
    """check_plan: models that do not resolve or whose workload cannot be read (only when
    ``deep``), and the number of prompts per unit (the plan's own figure, else 0, unless
    a workload was read)."""
    from greenmon.models import resolve_model
    from greenmon.workload import load_workload

    problems: list[str] = []
    prompts_count = plan.spec.prompts or 0
    for model in plan.spec.models:
        if not deep:
            break
        try:
            info = resolve_model(model, cache_dir=cache_dir)
            prompts = load_workload(
                plan.spec.workload,
                model=info,
                seed=plan.spec.seed,
                limit=plan.spec.prompts,
                cache_dir=cache_dir,
            )
            prompts_count = len(prompts)
            problems += _architecture_problems(plan, model, info.path)
        except Exception as error:
            problems.append(f"model {model!r} / workload {plan.spec.workload!r}: {error}")
    return problems, prompts_count


def _architecture_problems(plan: Plan, model: str, path: Path) -> list[str]:
    """check_plan: configurations whose engine does not serve the model's architecture
    (e.g. mxnet and a decoder), with what is known of the limit."""
    from greenmon.engines import SPECS
    from greenmon.models import model_architecture

    architecture = model_architecture(path)
    problems = []
    for engine, provider in plan.configurations:
        spec = SPECS.get(engine)
        if engine in plan.spec.custom_engines or spec is None or spec.served:
            continue
        if architecture not in spec.architectures:
            limits = "; ".join(
                f"{a}: {note}" for (p, a), note in spec.notes.items() if p == provider and note
            )
            problems.append(
                f"configuration {engine}/{provider} cannot serve {model!r}, a {architecture} "
                f"model: {engine} serves {', '.join(spec.architectures)}"
                + (f" ({limits})" if limits else "")
            )
        elif engine == "mxnet" and architecture == "text-classifier":
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            if config.get("model_type") != "bert":
                problems.append(
                    f"configuration mxnet/{provider} cannot serve {model!r}: "
                    f"{spec.notes[(provider, architecture)]}"
                )
    return problems


def _plan_notes(plan: Plan) -> list[str]:
    """check_plan: what the plan's load factors and order mean, said before anything runs."""
    notes: list[str] = []
    # how the load factors reach in-process engines, said before anything runs.
    in_process = [f"{e}/{p}" for e, p in plan.configurations if e != "http"]
    if in_process and plan.spec.factors.request_rate_hz:
        notes.append(
            f"request_rate_hz applies to http/... configurations only: {', '.join(in_process)} "
            "run their requests back to back at every rate level."
        )
    if in_process and plan.spec.factors.concurrency and not plan.spec.factors.batch_size:
        notes.append(
            f"{', '.join(in_process)} run a concurrency level N as batches of N requests "
            "(the in-process counterpart of N requests in flight)."
        )
    if plan.spec.order == "blocked":
        notes.append(
            "order = 'blocked' runs each configuration's repetitions back to back, "
            "as the study did: drift and heat then confound configurations."
        )
    return notes


def repetition_warnings(plan: Plan) -> list[str]:
    """Fixed repetitions too few for the tests the analysis runs, or an "auto"
    minimum below what the confidence needs."""
    from greenmon.rounds import values_for_interval

    precision = plan.spec.precision
    needed = values_for_interval(precision.confidence)
    if plan.auto_repetitions:
        if precision.max_repetitions < needed:
            return [
                f"precision.max_repetitions = {precision.max_repetitions} can never meet the "
                f"target: a {precision.confidence:.0%} interval of a median needs {needed} "
                f"values; raise max_repetitions to at least {needed}"
            ]
        return []
    repetitions = plan.repetitions
    if repetitions < MIN_REPETITIONS:
        return [
            f"repetitions = {repetitions}: with fewer than {MIN_REPETITIONS} values per "
            "configuration the analysis runs no statistical test at all (medians only); use "
            f'at least {MIN_REPETITIONS}, or repetitions = "auto"'
        ]
    if repetitions < needed:
        return [
            f"repetitions = {repetitions}: the tests run, but a {precision.confidence:.0%} "
            f"interval of each configuration's median needs {needed} values, so how precise "
            'the medians are stays unknown; use at least that many, or repetitions = "auto"'
        ]
    return []


def window_warnings(
    plan: Plan, prompts_count: int, update_periods_s: Mapping[str, float]
) -> list[str]:
    """The shortest planned measure against the slowest energy source's update
    period (or sampling period): a shorter window is flagged short_window afterwards."""
    from greenmon.update_periods import min_window_s

    periods = dict(update_periods_s)
    for name, table in plan.spec.probes.items():
        rate_hz = table.get("rate_hz")
        # Sources read at the measure's edges and exact between reads (RAPL, NVML,
        # amdsmi, the estimate): how often they are polled does not limit how short it
        # may be (their update period does).
        if (
            name in ENERGY_PROBES
            and name not in EDGE_READ_PROBES
            and isinstance(rate_hz, int | float)
            and rate_hz > 0
        ):
            periods.setdefault(f"{name} (sampled at {rate_hz:g} Hz)", 1 / rate_hz)
    if not periods:
        return []
    source, period_s = max(periods.items(), key=lambda item: item[1])
    tokens = min(plan.spec.factors.max_new_tokens or [plan.spec.max_new_tokens])
    batch = max(plan.spec.factors.batch_size or [plan.spec.batch_size])
    measure_s = prompts_count * tokens * DEFAULT_TOKEN_S / batch
    if measure_s >= min_window_s(period_s):
        return []
    return [
        f"the shortest planned measure (about {measure_s:.2f} s: {prompts_count} prompts x "
        f"{tokens} tokens at an assumed {DEFAULT_TOKEN_S * 1000:.0f} ms per token, batch "
        f"{batch}) is shorter than {MIN_WINDOW_PERIODS} update periods of the slowest energy "
        f"source ({source}: {period_s:.3f} s, so at least {min_window_s(period_s):.2f} s); "
        "its units will be flagged short_window. Use more prompts or more max_new_tokens"
    ]



def stored_update_periods(db_path: Path) -> dict[str, float]:
    """The update periods of the energy sources of the latest session in ``db_path`` that
    detected any, as 'probe channel' -> seconds; empty when there are none or
    the file cannot be read (another process holds it)."""
    from greenmon.store import Store

    if not db_path.exists():
        return {}
    try:
        with Store.open(db_path, read_only=True) as store:
            _, rows = store.query(
                # a measure's edges are read: sources.py's rule with no edge gap
                f"""SELECT es.probe, es.name, {window_resolution_sql("es", "0")}
                   FROM energy_sources es JOIN channels c USING (channel_id)
                   WHERE es.session_id = (
                       SELECT c2.session_id FROM channels c2 JOIN sessions s USING (session_id)
                       WHERE json_extract(c2.metadata, '$.update_period_ns') IS NOT NULL
                       ORDER BY s.started_ns DESC LIMIT 1)"""
            )
    except Exception:  # a locked or foreign file: the check goes on without it
        return {}
    return {f"{probe} {name} in {db_path}": period_ns / 1e9 for probe, name, period_ns in rows}
