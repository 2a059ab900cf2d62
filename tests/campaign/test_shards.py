"""Shards of a plan (greenmon/plan/units.py): disjoint, complete, balanced, deterministic."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from greenmon.errors import PlanError
from greenmon.plan import Shard, parse_plan, parse_shard

PLAN = """
name = "shards"
models = ["tiny", "tiny2"]
configurations = ["fake/cpu", "fake2/cpu", "fake3/cpu"]
repetitions = {repetitions}
seed = {seed}
order = "{order}"
custom_engines = {{ fake = "a:B", fake2 = "a:B", fake3 = "a:B" }}
"""


def _plan(repetitions: int = 5, seed: int = 3, order: str = "random"):  # type: ignore[no-untyped-def]
    text = PLAN.format(repetitions=repetitions, seed=seed, order=order)
    return parse_plan(text, Path("shards.toml"))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_shards_are_disjoint_complete_and_balanced(count: int) -> None:
    plan = _plan()
    every = plan.units()
    parts = [dataclasses.replace(plan, shard=Shard(k, count)).units() for k in range(count)]
    ids = [u.unit_id for part in parts for u in part]
    assert sorted(ids) == sorted(u.unit_id for u in every)  # complete, and disjoint
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    # every configuration reaches every shard when it has enough units
    for part in parts:
        configurations = Counter(u.configuration for u in part)
        assert set(configurations) == {"fake/cpu", "fake2/cpu", "fake3/cpu"}
        # and each shard keeps the plan's seeded run order
        positions = [u.unit_id for u in part]
        assert positions == sorted(positions)
    # the plan hash does not depend on the shard: shards of one plan merge
    assert dataclasses.replace(plan, shard=Shard(0, count)).plan_hash == plan.plan_hash


def test_split_depends_on_seed_only_not_on_order() -> None:
    def split(plan):  # type: ignore[no-untyped-def]
        return [
            sorted((u.model, u.configuration, u.repetition)
                   for u in dataclasses.replace(plan, shard=Shard(k, 3)).units())
            for k in range(3)
        ]  # fmt: skip

    assert split(_plan(seed=3)) == split(_plan(seed=3))
    assert split(_plan(seed=3)) == split(_plan(seed=3, order="blocked"))
    assert split(_plan(seed=3)) != split(_plan(seed=4))


def test_parse_shard_forms_and_errors() -> None:
    assert parse_shard("1/3") == Shard(1, 3)
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert parse_shard("auto", env) == Shard(2, 3)
    env_offset = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3",
                  "SLURM_ARRAY_TASK_MIN": "1"}  # fmt: skip
    assert parse_shard("auto", env_offset) == Shard(2, 3)
    for bad in ("3/3", "x/2", "1", "-1/2", "0/0"):
        with pytest.raises(PlanError, match="K/N"):
            parse_shard(bad)
    with pytest.raises(PlanError, match="SLURM_ARRAY_TASK_ID"):
        parse_shard("auto", {})
