"""Plan files -> validated plans -> expanded, seeded, ordered units.

Terms:
- *plan*: a TOML file naming models, serving configurations (``engine/provider``, or
  ``"all"`` usable here), a workload, the work per request (``max_new_tokens``,
  ``batch_size``), repetitions, seed, order, cooldowns, warm-up and probes.
- *factor*: a key under ``[factors]`` whose list of levels is crossed with the
  configurations (``batch_size = [1, 8]``); a plain key (``batch_size = 1``) is one level.
- *unit*: one (model, configuration, factor levels, repetition).  Units run in a seeded
  random order (``order = "random"``, the default) or the study's fixed ``"blocked"`` order
  (every repetition of a configuration back to back), kept for comparison.
- *plan hash*: sha256 of the plan's canonical JSON; a resumed run must match it.
- *shard* ``K/N``: the K-th (from 0) of N disjoint parts of a plan's units, for spreading a
  campaign over machines (issue 18).  Which unit goes to which shard depends only on the
  plan (its units and seed), so every machine computes the same split; the shard is not part
  of the plan hash, so all shards of one plan share it and can be merged.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from greenmon.config import convert_table, find_key_line
from greenmon.errors import PlanError

# Keys of [factors] and what each becomes in a unit.
FACTOR_KEYS = (
    "batch_size",
    "max_new_tokens",
    "input_tokens",
    "dtype",
    "engine_options",
    "gpu_power_limit_w",
    "gpu_locked_clocks_mhz",
    "cpu_governor",
    "cpu_max_freq_khz",
)


class Cooldown(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Idle time before the measured phase; its last baseline_s give the idle baseline.
    before_s: float = 10.0
    # Idle time after the measured phase (tail energy).
    after_s: float = 10.0
    # Adaptive: extend the cooldown before until power is within tolerance of the idle
    # baseline of the experiment's first cooldown, never beyond max_s.
    adaptive: bool = False
    tolerance: float = 0.05
    max_s: float = 120.0


class Factors(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    batch_size: list[int] | None = None
    max_new_tokens: list[int] | None = None
    input_tokens: list[int] | None = None
    dtype: list[str] | None = None
    gpu_power_limit_w: list[float] | None = None
    gpu_locked_clocks_mhz: list[list[int]] | None = None
    cpu_governor: list[str] | None = None
    cpu_max_freq_khz: list[int] | None = None


class Hardware(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where hardware factors are applied (greenmon/settings.py); tests point these at fakes."""

    # The cpufreq sysfs directory holding cpuN/cpufreq/.
    cpufreq_root: str = "/sys/devices/system/cpu"
    # "pynvml", or "package.module:factory" returning an object shaped like pynvml.
    nvml_module: str = "pynvml"
    # NVML indices or UUIDs of the GPUs the GPU factors apply to; None: every GPU.
    gpu_devices: list[int | str] | None = None
    # The greenmon helper's socket, used when greenmon is not root (greenmon/privhelper.py);
    # None: $GREENMON_HELPER_SOCKET, else /run/greenmon-helper.sock.
    helper_socket: str | None = None


class PlanSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    models: list[str]
    configurations: list[str] | str
    name: str | None = None
    workload: str = "gaissa-164"
    prompts: int | None = None  # use the first N prompts of the workload
    max_new_tokens: int = 32
    batch_size: int = 1
    repetitions: int = 10
    seed: int = 0
    order: str = "random"
    warmup_requests: int = 2
    unit_timeout_s: float = 3600.0
    cooldown: Cooldown = msgspec.field(default_factory=Cooldown)
    factors: Factors = msgspec.field(default_factory=Factors)
    hardware: Hardware = msgspec.field(default_factory=Hardware)
    engine_options: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    # Engines not built in, as "module:Class" (a user's own engine, or a test's fake).
    custom_engines: dict[str, str] = msgspec.field(default_factory=dict)
    # [probes.<name>] tables exactly as in a config file; the daemon of `greenmon run`.
    probes: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)


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

    def setting(self, key: str, default: Any) -> Any:
        return self.factors.get(key, default)


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


@dataclass(frozen=True)
class Plan:
    spec: PlanSpec
    text: str
    path: Path | None
    configurations: list[tuple[str, str]]
    # issue 18: run only this part of the units (``greenmon run --shard K/N``); None: all.
    shard: Shard | None = None

    @property
    def name(self) -> str:
        if self.spec.name:
            return self.spec.name
        return self.path.stem if self.path else "plan"

    def canonical(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self.spec)
        # issue 8: a plan without a [hardware] table keeps the hash it had before the table
        # existed, so experiments started earlier still resume.
        if self.spec.hardware == Hardware():
            del data["hardware"]
        data["configurations"] = [f"{e}/{p}" for e, p in self.configurations]
        return data

    @property
    def plan_hash(self) -> str:
        payload = json.dumps(self.canonical(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    def factor_levels(self) -> list[dict[str, Any]]:
        """Every combination of factor levels (one empty combination when none vary)."""
        factors: dict[str, Any] = {
            k: v for k, v in msgspec.to_builtins(self.spec.factors).items() if v is not None
        }
        if not factors:
            return [{}]
        keys = sorted(factors)
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(factors[k] for k in keys))
        ]

    def units(self) -> list[Unit]:
        """The units in run order (seeded shuffle, or the study's blocked order); with a
        shard, only that shard's units, in the same order and with the plan-wide ids."""
        every = self.all_units()
        if self.shard is None:
            return every
        assignment = shard_assignment(every, self.shard.count, self.spec.seed)
        return [u for u in every if assignment[u.unit_id] == self.shard.index]

    def all_units(self) -> list[Unit]:
        """Every unit of the plan in run order, whatever the shard."""
        combos = [
            (model, engine, provider, levels, repetition)
            for model in self.spec.models
            for engine, provider in self.configurations
            for levels in self.factor_levels()
            for repetition in range(1, self.spec.repetitions + 1)
        ]
        if self.spec.order == "random":
            random.Random(self.spec.seed).shuffle(combos)
        return [
            Unit(index, model, engine, provider, repetition, levels)
            for index, (model, engine, provider, levels, repetition) in enumerate(combos)
        ]


def diff_plans(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two canonical plans."""
    changes: list[str] = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        if key not in new:
            changes.append(f"{dotted}: removed (was {old[key]!r})")
        elif key not in old:
            changes.append(f"{dotted}: added ({new[key]!r})")
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            changes += diff_plans(old[key], new[key], dotted + ".")
        elif old[key] != new[key]:
            changes.append(f"{dotted}: {old[key]!r} -> {new[key]!r}")
    return changes


def _error(message: str, path: Path | None, text: str, key: str) -> PlanError:
    line = find_key_line(text, key)
    where = f"{path or 'the plan'}" + (f", line {line}" if line else "")
    return PlanError(f"{message} ({where}, key '{key}').")


def parse_plan(text: str, path: Path | None = None) -> Plan:
    """Parse and check the plan's shape (not yet whether it can run here: see check)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PlanError(
            f"{path or 'The plan'} is not valid TOML: {error}. Fix the syntax there."
        ) from None
    for required in ("models", "configurations"):
        if required not in data:
            raise PlanError(
                f"{path or 'The plan'} has no '{required}' key. A plan needs at least "
                'models = ["tiny"] and configurations = ["torch/cpu", "onnx/cpu"] (or "all").'
            )
    try:
        spec = convert_table(data, PlanSpec, "", path, text)
    except Exception as error:  # ConfigError -> PlanError with the same text
        raise PlanError(str(error)) from None
    if spec.order not in ("random", "blocked"):
        raise _error(
            f"order must be 'random' or 'blocked', not {spec.order!r}", path, text, "order"
        )
    for key in ("repetitions", "max_new_tokens", "batch_size"):
        if getattr(spec, key) < 1:
            raise _error(f"{key} must be at least 1", path, text, key)
    if not spec.models:
        raise _error("models is empty: name at least one model", path, text, "models")
    from greenmon.engines import ENGINES, IMPOSSIBLE, PROVIDERS, describe_engines

    known_engines = set(ENGINES) | set(spec.custom_engines)
    if spec.configurations == "all":
        configurations = [(s.engine, s.provider) for s in describe_engines() if s.usable]
    elif isinstance(spec.configurations, str):
        raise _error('configurations must be a list or "all"', path, text, "configurations")
    else:
        configurations = []
        for item in spec.configurations:
            engine, _, provider = item.partition("/")
            if engine not in known_engines:
                raise _error(
                    f"unknown engine {engine!r} in {item!r}; known engines: "
                    f"{', '.join(sorted(known_engines))}",
                    path,
                    text,
                    "configurations",
                )
            if not provider:
                raise _error(
                    f"{item!r} names no provider: write engine/provider, e.g. {engine}/cpu",
                    path,
                    text,
                    "configurations",
                )
            if (engine, provider) in IMPOSSIBLE:
                raise _error(
                    f"{item!r} cannot run: {IMPOSSIBLE[(engine, provider)]}",
                    path,
                    text,
                    "configurations",
                )
            if engine in PROVIDERS and provider not in PROVIDERS[engine]:
                raise _error(
                    f"{item!r}: engine {engine} has no provider {provider!r} "
                    f"(it has {', '.join(PROVIDERS[engine])})",
                    path,
                    text,
                    "configurations",
                )
            configurations.append((engine, provider))
    return Plan(spec=spec, text=text, path=path, configurations=configurations)


def load_plan(path: str | Path) -> Plan:
    plan_path = Path(path)
    try:
        text = plan_path.read_text()
    except OSError as error:
        raise PlanError(f"Cannot read the plan {plan_path}: {error.strerror}.") from None
    return parse_plan(text, plan_path)


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


def check_plan(plan: Plan, *, cache_dir: str | None = None, deep: bool = True) -> PlanCheck:
    """Everything that can be known before anything runs: configurations usable here,
    models resolvable, the workload readable.  ``deep=False`` skips building models."""
    from greenmon.engines import check_configuration
    from greenmon.models import resolve_model
    from greenmon.workload import load_workload

    problems: list[str] = []
    notes: list[str] = []
    for engine, provider in plan.configurations:
        if engine in plan.spec.custom_engines:
            continue
        reason = check_configuration(engine, provider)
        if reason:
            problems.append(f"configuration {engine}/{provider} cannot run here: {reason}")
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
        except Exception as error:
            problems.append(f"model {model!r} / workload {plan.spec.workload!r}: {error}")
    units = plan.units()
    cooldown_s = plan.spec.cooldown.before_s + plan.spec.cooldown.after_s
    tokens = plan.spec.max_new_tokens * ((prompts_count or 164) + plan.spec.warmup_requests)
    per_unit_s = cooldown_s + DEFAULT_LOAD_S + tokens * DEFAULT_TOKEN_S / plan.spec.batch_size
    # issue 8: hardware factors (DVFS) are checked against this machine's ranges and the
    # privileges they need; a plan without them costs nothing here.
    from greenmon.settings import check_hardware

    problems += check_hardware(plan)
    from greenmon.settings import hardware_access

    access = hardware_access(plan)
    if access is not None:
        notes.append(access)
    if plan.spec.order == "blocked":
        notes.append(
            "order = 'blocked' runs each configuration's repetitions back to back, "
            "as the study did: drift and heat then confound configurations."
        )
    return PlanCheck(plan, len(units), per_unit_s * len(units), problems, notes)
