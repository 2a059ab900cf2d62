"""Plans: a TOML file -> a validated plan (``schema``) -> its units in run order and its
shards (``units``) -> what it needs of this host (``check``, the preflight).

Every name is importable from ``greenmon.plan`` as before the split.  The schema and the
units load with the package; ``check``, which reaches the engines, the hardware and the
store, loads only when one of its names is first used (PEP 562), so parsing a plan never
imports the store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from greenmon.plan.schema import (
    FACTOR_KEYS,
    LOAD_FACTORS,
    SERVER_APIS,
    Cooldown,
    Factors,
    Plan,
    PlanSpec,
    Precision,
    ServerSpec,
    diff_plans,
    load_plan,
    parse_plan,
)
from greenmon.plan.units import Shard, Unit, parse_shard, round_order, shard_assignment
from greenmon.sources import ENERGY_PROBES
from greenmon.thresholds import DEFAULT_BACKGROUND_CPU_PERCENT_MAX

if TYPE_CHECKING:
    from greenmon.plan.check import (
        DEFAULT_LOAD_S,
        DEFAULT_TOKEN_S,
        PlanCheck,
        check_plan,
        repetition_warnings,
        stored_update_periods,
        window_warnings,
    )

_CHECK_NAMES = frozenset(
    {
        "DEFAULT_LOAD_S",
        "DEFAULT_TOKEN_S",
        "PlanCheck",
        "check_plan",
        "repetition_warnings",
        "stored_update_periods",
        "window_warnings",
    }
)

__all__ = [
    "DEFAULT_BACKGROUND_CPU_PERCENT_MAX",
    "DEFAULT_LOAD_S",
    "DEFAULT_TOKEN_S",
    "ENERGY_PROBES",
    "FACTOR_KEYS",
    "LOAD_FACTORS",
    "SERVER_APIS",
    "Cooldown",
    "Factors",
    "Plan",
    "PlanCheck",
    "PlanSpec",
    "Precision",
    "ServerSpec",
    "Shard",
    "Unit",
    "check_plan",
    "diff_plans",
    "load_plan",
    "parse_plan",
    "parse_shard",
    "repetition_warnings",
    "round_order",
    "shard_assignment",
    "stored_update_periods",
    "window_warnings",
]


def __getattr__(name: str) -> Any:
    if name in _CHECK_NAMES:
        return getattr(importlib.import_module("greenmon.plan.check"), name)
    raise AttributeError(f"module 'greenmon.plan' has no attribute {name!r}")
