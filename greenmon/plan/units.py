"""A plan's units: expansion in run order (seeded shuffle, rounds, or blocked) and shards.

Terms (greenmon/plan/schema.py has the plan's): a *unit* is one (model, configuration,
factor levels, repetition); a *round* r is repetition r of every cell in a fresh order
seeded by (plan seed, r); a *shard* ``K/N`` is the K-th (from 0) of N disjoint parts of a
plan's units, which depends only on the plan (its units and seed), so every machine
computes the same split.  This module knows a plan only by its fields (no import of the
schema at run time), so the schema, the rounds and the runner can all use it.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from greenmon.errors import PlanError

if TYPE_CHECKING:
    from greenmon.plan.schema import Plan

T = TypeVar("T")


@dataclass(frozen=True)
class Unit:
    unit_id: int  # position in the run order, from 0
    model: str
    engine: str
    provider: str
    repetition: int  # from 1
    factors: dict[str, Any]

    @property
    def configuration(self) -> str:
        return f"{self.engine}/{self.provider}"

    def level(self, factor: str, default: Any) -> Any:
        """The unit's level of ``factor``, or ``default`` when the plan does not vary it."""
        return self.factors.get(factor, default)


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (from 0) of ``count`` disjoint parts of a plan's units."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> Shard:
    """``"K/N"`` (K from 0), or ``"auto"``: SLURM's array task id and count from ``environ``."""
    env = os.environ if environ is None else environ
    if text == "auto":
        task, count = env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            raise PlanError(
                "--shard auto reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, and this "
                "process has no such variables (it is not a task of a SLURM array job). Pass "
                "--shard K/N instead, e.g. --shard 0/3, or submit with `greenmon slurm`."
            )
        # An array may start at an offset (--array=1-3); the task's place is id - min.
        text = f"{int(task) - int(env.get('SLURM_ARRAY_TASK_MIN', '0'))}/{count}"
    index_text, _, count_text = text.partition("/")
    try:
        shard = Shard(int(index_text), int(count_text))
    except ValueError:
        shard = Shard(-1, 0)
    if shard.count < 1 or not 0 <= shard.index < shard.count:
        raise PlanError(
            f"--shard {text!r} is not a shard: write K/N with 0 <= K < N (0/3, 1/3 and 2/3 "
            "split a plan in three), or 'auto' inside a SLURM array job."
        )
    return shard


def shard_assignment(units: list[Unit], count: int, seed: int) -> dict[int, int]:
    """unit_id -> shard, balanced by configuration.

    Configurations are taken in a seeded random order, and within each its cells (model,
    factor levels) and their repetitions, also shuffled; the units are dealt round-robin to
    the shards in that sequence, continuing where the previous configuration stopped.  So
    a configuration (and a cell) with at least N units reaches every shard, and shard sizes
    differ by at most one unit.  Depends on the units and the seed only, not on the run
    order, so ``order = "blocked"`` splits the same way.
    """
    by_configuration: dict[str, dict[str, list[Unit]]] = {}
    for unit in units:
        cell = json.dumps([unit.model, unit.factors], sort_keys=True, default=str)
        by_configuration.setdefault(unit.configuration, {}).setdefault(cell, []).append(unit)
    rng = random.Random(f"greenmon-shards:{seed}:{count}")
    configurations = sorted(by_configuration)
    rng.shuffle(configurations)
    assignment: dict[int, int] = {}
    dealt = 0
    for configuration in configurations:
        cells = by_configuration[configuration]
        cell_keys = sorted(cells)
        rng.shuffle(cell_keys)
        for key in cell_keys:
            members = sorted(cells[key], key=lambda u: u.repetition)
            rng.shuffle(members)  # which repetition lands on which shard is random too
            for unit in members:
                assignment[unit.unit_id] = dealt % count
                dealt += 1
    return assignment


def round_order(cells: Sequence[T], seed: int, round_: int) -> list[T]:
    """One round's cells in a fresh order, the same for the same plan seed and round."""
    ordered = list(cells)
    random.Random(f"greenmon-round:{seed}:{round_}").shuffle(ordered)
    return ordered


def expand_units(plan: Plan) -> list[Unit]:
    """Every unit of ``plan`` in run order, whatever the shard."""
    if plan.auto_repetitions:
        # rounds, each one repetition of every cell in a fresh seeded order,
        # so the runner can stop after any round (greenmon/rounds.py).
        combos: list[tuple[str, str, str, dict[str, Any], int]] = []
        for repetition in range(1, plan.repetitions + 1):
            cells = [
                (model, engine, provider, levels, repetition)
                for model in plan.spec.models
                for engine, provider in plan.configurations
                for levels in plan.factor_levels()
            ]
            combos += round_order(cells, plan.spec.seed, repetition)
    else:
        combos = [
            (model, engine, provider, levels, repetition)
            for model in plan.spec.models
            for engine, provider in plan.configurations
            for levels in plan.factor_levels()
            for repetition in range(1, plan.repetitions + 1)
        ]
        if plan.spec.order == "random":
            random.Random(plan.spec.seed).shuffle(combos)
    return [
        Unit(index, model, engine, provider, repetition, levels)
        for index, (model, engine, provider, levels, repetition) in enumerate(combos)
    ]

