"""Plan files -> validated plans: the schema of a plan file and its parsing.

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
  campaign over machines.  Which unit goes to which shard depends only on the
  plan (its units and seed), so every machine computes the same split; the shard is not part
  of the plan hash, so all shards of one plan share it and can be merged.
- *server*: a ``[servers.<name>]`` table naming an OpenAI-compatible server
  that the configuration ``http/<name>`` sends its requests to; *load factors*
  (``concurrency``, ``request_rate_hz``) say how many requests are in flight.
Units and shards are greenmon/plan/units.py; what a plan needs of this host (the
preflight ``greenmon plan check`` and ``greenmon run`` call) is greenmon/plan/check.py.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from greenmon.config import convert_table, find_key_line
from greenmon.errors import PlanError
from greenmon.hardware.spec import Hardware, HardwareFactors, HardwareSpec
from greenmon.plan.units import Shard, Unit, expand_units, shard_assignment
from greenmon.thresholds import DEFAULT_BACKGROUND_CPU_PERCENT_MAX

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
    "concurrency",
    "request_rate_hz",
)
# factors that say how requests arrive; an engine that handles load (http) runs
# the closed or open loop itself (engines/http_engine.py).
LOAD_FACTORS = ("concurrency", "request_rate_hz")
SERVER_APIS = ("completions", "chat")


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
    # the threshold of the background_load flag (above), and how long a unit may
    # wait, before its cooldown_before, for the background to fall under it (0: never).
    background_cpu_percent_max: float = DEFAULT_BACKGROUND_CPU_PERCENT_MAX
    wait_for_quiet_s: float = 0.0


_COOLDOWN_DEFAULTS_OUT_OF_HASH = {
    "background_cpu_percent_max": DEFAULT_BACKGROUND_CPU_PERCENT_MAX,
    "wait_for_quiet_s": 0.0,
}


class Precision(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``repetitions = "auto"``: run rounds until every configuration's median energy is
    known to within ``ci_half_width`` (relative) at ``confidence``, between
    ``min_repetitions`` and ``max_repetitions`` rounds (greenmon/rounds.py)."""

    # The order-statistic interval of a median needs 6 values for 95% (5 give 94%): fewer
    # rounds could never meet the default target, so 6 is the default minimum.
    min_repetitions: int = 6
    max_repetitions: int = 30
    confidence: float = 0.95
    # The interval must lie within median * (1 +- ci_half_width).
    ci_half_width: float = 0.05


class Factors(HardwareFactors, kw_only=True, forbid_unknown_fields=True):
    # The hardware factors (gpu_power_limit_w, gpu_locked_clocks_mhz, cpu_governor,
    # cpu_max_freq_khz) are greenmon/hardware/spec.py's.
    batch_size: list[int] | None = None
    max_new_tokens: list[int] | None = None
    input_tokens: list[int] | None = None
    dtype: list[str] | None = None
    # a closed loop with N requests in flight; an open loop of seeded Poisson
    # arrivals at this many requests per second.  One of the two per plan.
    concurrency: list[int] | None = None
    request_rate_hz: list[float] | None = None


class ServerSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An OpenAI-compatible server that ``http/<name>`` measures (engines/http_engine.py)."""

    # Where its OpenAI routes live, e.g. "http://127.0.0.1:8000/v1".
    base_url: str
    # The model name the server answers to (the request's "model").
    model: str
    # "completions" (/completions, prompt) or "chat" (/chat/completions, messages).
    api: str = "completions"
    # Starts the server (argv); started in the unit's load phase and stopped when the unit
    # ends, so load, idle with the model loaded and teardown are phases like in-process.
    command: list[str] | None = None
    # Polled until it answers 200 after the command starts; default base_url + "/models".
    ready_url: str | None = None
    ready_timeout_s: float = 120.0
    # Send min_tokens = max_tokens and ignore_eos = true (vLLM, llama.cpp, greenmon serve);
    # false for a server that refuses them: its counts are then checked and flagged only.
    exact_tokens: bool = True
    # Extra JSON fields for every request body (e.g. {return_token_ids = true}).
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    request_timeout_s: float = 600.0
    # The server's process, for its attributed energy (greenmon/attribution.py) when
    # greenmon does not start it: default the process listening on base_url's port.
    pid: int | None = None


class EngineEnvironment(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[engines.<name>]``: run engine ``<name>`` (or ``engine``) in a worker process
    started from another environment's interpreter (greenmon/engines/worker_engine.py)."""

    python: str
    # The greenmon engine the worker drives; default: the table's name.
    engine: str | None = None


class PlanSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    models: list[str]
    configurations: list[str] | str
    name: str | None = None
    workload: str = "gaissa-164"
    prompts: int | None = None  # use the first N prompts of the workload
    max_new_tokens: int = 32
    batch_size: int = 1
    # A number, or "auto": rounds until the answer is stable ([precision]).
    repetitions: int | str = 10
    seed: int = 0
    order: str = "random"
    warmup_requests: int = 2
    unit_timeout_s: float = 3600.0
    cooldown: Cooldown = msgspec.field(default_factory=Cooldown)
    precision: Precision = msgspec.field(default_factory=Precision)
    factors: Factors = msgspec.field(default_factory=Factors)
    hardware: Hardware = msgspec.field(default_factory=Hardware)
    engine_options: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    # Engines not built in, as "module:Class" (a user's own engine, or a test's fake).
    custom_engines: dict[str, str] = msgspec.field(default_factory=dict)
    # [probes.<name>] tables exactly as in a config file; the daemon of `greenmon run`.
    probes: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    # OpenAI-compatible servers measured as http/<name>.
    servers: dict[str, ServerSpec] = msgspec.field(default_factory=dict)
    # Engines run by another environment's interpreter.
    engines: dict[str, EngineEnvironment] = msgspec.field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    spec: PlanSpec
    text: str
    path: Path | None
    configurations: list[tuple[str, str]]
    # run only this part of the units (``greenmon run --shard K/N``); None: all.
    shard: Shard | None = None

    @property
    def name(self) -> str:
        if self.spec.name:
            return self.spec.name
        return self.path.stem if self.path else "plan"

    def canonical(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self.spec)
        # a plan without a [hardware] table keeps the hash it had before the table
        # existed, so experiments started earlier still resume.
        if self.spec.hardware == Hardware():
            del data["hardware"]
        # likewise for [precision] unless repetitions = "auto" uses it.
        if self.spec.precision == Precision() and not self.auto_repetitions:
            del data["precision"]
        # likewise for servers and the load factors when a plan has none.
        if not self.spec.servers:
            del data["servers"]
        if not self.spec.engines:
            del data["engines"]
        for key in LOAD_FACTORS:
            if data["factors"].get(key) is None:
                data["factors"].pop(key, None)
        # likewise for the interference keys left at their defaults.
        for key, default in _COOLDOWN_DEFAULTS_OUT_OF_HASH.items():
            if data["cooldown"].get(key) == default:
                data["cooldown"].pop(key, None)
        data["configurations"] = [f"{e}/{p}" for e, p in self.configurations]
        return data

    @property
    def hardware_spec(self) -> HardwareSpec:
        """The plan's hardware factors and where they apply (greenmon/hardware/)."""
        return HardwareSpec(self.spec.factors.hardware_levels(), self.spec.hardware)

    @property
    def plan_hash(self) -> str:
        payload = json.dumps(self.canonical(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    @property
    def auto_repetitions(self) -> bool:
        """``repetitions = "auto"``: rounds until every configuration is precise enough."""
        return self.spec.repetitions == "auto"

    @property
    def repetitions(self) -> int:
        """Repetitions per cell: the fixed number, or at most this many with "auto"."""
        if isinstance(self.spec.repetitions, str):
            return self.spec.precision.max_repetitions
        return self.spec.repetitions

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

    def engine_options_for(self, unit: Unit) -> dict[str, Any]:
        """What ``engine.load`` gets for a unit: the plan's ``[engine_options.<engine>]``,
        the unit's dtype level and, for ``http``, its server table, load level
        and the seed of its arrivals."""
        options = dict(self.spec.engine_options.get(unit.engine, {}))
        if "dtype" in unit.factors:
            options["dtype"] = unit.factors["dtype"]
        if unit.engine == "http" and unit.provider in self.spec.servers:
            options["server"] = msgspec.to_builtins(self.spec.servers[unit.provider])
            options["seed"] = self.spec.seed
            for key in LOAD_FACTORS:
                if key in unit.factors:
                    options[key] = unit.factors[key]
        return options

    def batch_size_for(self, unit: Unit) -> int:
        """Requests per ``generate`` call.  An in-process engine at a
        ``concurrency`` level N runs N requests at a time (one batch of N): the in-process
        counterpart of N requests in flight at a server, unless batch_size is a factor."""
        default = unit.factors.get("concurrency", self.spec.batch_size)
        return int(unit.level("batch_size", default))

    def units(self) -> list[Unit]:
        """The units in run order (seeded shuffle, or the study's blocked order); with a
        shard, only that shard's units, in the same order and with the plan-wide ids."""
        every = self.all_units()
        if self.shard is None:
            return every
        assignment = shard_assignment(every, self.shard.count, self.spec.seed)
        return [u for u in every if assignment[u.unit_id] == self.shard.index]

    def all_units(self) -> list[Unit]:
        """Every unit of the plan in run order, whatever the shard (greenmon/plan/units.py)."""
        return expand_units(self)


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
    spec = _load_spec(text, path)
    if spec.order not in ("random", "blocked"):
        raise _error(
            f"order must be 'random' or 'blocked', not {spec.order!r}", path, text, "order"
        )
    for key in ("max_new_tokens", "batch_size"):
        if getattr(spec, key) < 1:
            raise _error(f"{key} must be at least 1", path, text, key)
    _check_repetitions(spec, path, text)
    _check_engine_environments(spec, path, text)
    if not spec.models:
        raise _error("models is empty: name at least one model", path, text, "models")
    for key in ("background_cpu_percent_max", "wait_for_quiet_s"):
        if getattr(spec.cooldown, key) < 0:
            raise _error(f"cooldown.{key} must not be negative", path, text, key)
    _check_load(spec, path, text)
    configurations = _plan_configurations(spec, path, text)
    return Plan(spec=spec, text=text, path=path, configurations=configurations)


def _load_spec(text: str, path: Path | None) -> PlanSpec:
    """The plan's TOML as a PlanSpec, its types checked; PlanError for bad TOML or types."""
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
        spec: PlanSpec = convert_table(data, PlanSpec, "", path, text)
    except Exception as error:  # ConfigError -> PlanError with the same text
        raise PlanError(str(error)) from None
    return spec


def _plan_configurations(spec: PlanSpec, path: Path | None, text: str) -> list[tuple[str, str]]:
    """(engine, provider) of every configuration the plan names, or every usable one
    for "all"; each named one checked against the engines greenmon knows."""
    from greenmon.engines import ENGINES, describe_engines

    known_engines = set(ENGINES) | set(spec.custom_engines) | set(spec.engines)
    if spec.configurations == "all":
        return [
            (s.engine, s.provider)
            for s in describe_engines()
            if s.usable and s.engine != "http"  # a server is named, never implied
        ]
    if isinstance(spec.configurations, str):
        raise _error('configurations must be a list or "all"', path, text, "configurations")
    return [
        _check_configuration(item, spec, known_engines, path, text)
        for item in spec.configurations
    ]


def _check_configuration(
    item: str, spec: PlanSpec, known_engines: set[str], path: Path | None, text: str
) -> tuple[str, str]:
    """One "engine/provider" item of the plan, checked, as (engine, provider)."""
    from greenmon.engines import IMPOSSIBLE, PROVIDERS

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
    if engine == "http" and engine not in spec.custom_engines:
        _check_server(spec, provider, item, path, text)
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
    return engine, provider


def _check_engine_environments(spec: PlanSpec, path: Path | None, text: str) -> None:
    """Each [engines.<name>] drives an engine greenmon has."""
    from greenmon.engines import ENGINES, SERVED_ENGINES

    for name, environment in spec.engines.items():
        engine = environment.engine or name
        if engine not in ENGINES or engine in SERVED_ENGINES:
            raise _error(
                f"[engines.{name}] runs engine {engine!r}, which greenmon does not have; "
                f"give engine = one of {', '.join(e for e in ENGINES if e not in SERVED_ENGINES)}",
                path,
                text,
                "engines",
            )


def _check_repetitions(spec: PlanSpec, path: Path | None, text: str) -> None:
    """A number of at least 1, or "auto" with a sensible [precision]."""
    if isinstance(spec.repetitions, str):
        if spec.repetitions != "auto":
            raise _error(
                f'repetitions must be a number or "auto", not {spec.repetitions!r}',
                path,
                text,
                "repetitions",
            )
        if spec.order != "random":
            raise _error(
                'repetitions = "auto" runs in rounds of a fresh random order; it cannot be '
                "combined with order = 'blocked'",
                path,
                text,
                "order",
            )
    elif spec.repetitions < 1:
        raise _error("repetitions must be at least 1", path, text, "repetitions")
    precision = spec.precision
    if not 1 <= precision.min_repetitions <= precision.max_repetitions:
        raise _error(
            "precision.min_repetitions must be at least 1 and at most max_repetitions",
            path,
            text,
            "precision.min_repetitions",
        )
    if not 0 < precision.confidence < 1:
        raise _error(
            "precision.confidence must lie between 0 and 1 (0.95 for a 95% interval)",
            path,
            text,
            "precision.confidence",
        )
    if precision.ci_half_width <= 0:
        raise _error(
            "precision.ci_half_width must be positive (0.05: the interval within +-5% of "
            "the median)",
            path,
            text,
            "precision.ci_half_width",
        )


def _check_load(spec: PlanSpec, path: Path | None, text: str) -> None:
    """Load levels are positive, and a plan is a closed or an open loop."""
    factors = spec.factors
    if factors.concurrency is not None and factors.request_rate_hz is not None:
        raise _error(
            "concurrency (a closed loop) and request_rate_hz (an open loop) cannot be "
            "crossed: give one of them",
            path,
            text,
            "request_rate_hz",
        )
    for key in LOAD_FACTORS:
        levels = getattr(factors, key)
        if levels is not None and (not levels or any(level <= 0 for level in levels)):
            raise _error(f"{key} levels must be positive numbers", path, text, key)
    for name, server in spec.servers.items():
        if server.api not in SERVER_APIS:
            raise _error(
                f"servers.{name}.api must be one of {', '.join(SERVER_APIS)}, not "
                f"{server.api!r}",
                path,
                text,
                "api",
            )
        if not server.base_url.startswith(("http://", "https://")):
            raise _error(
                f"servers.{name}.base_url must be an http:// or https:// URL such as "
                f"http://127.0.0.1:8000/v1, not {server.base_url!r}",
                path,
                text,
                "base_url",
            )
        if server.command is not None and not server.command:
            raise _error(
                f"servers.{name}.command is empty: give the argv that starts the server, "
                "or leave it out when the server is already running",
                path,
                text,
                "command",
            )


def _check_server(
    spec: PlanSpec, provider: str, item: str, path: Path | None, text: str
) -> None:
    if not provider or provider not in spec.servers:
        known = ", ".join(sorted(spec.servers)) or "none"
        raise _error(
            f"{item!r} names server {provider!r}, which has no [servers.{provider}] table "
            f"(servers in this plan: {known}); add one with base_url and model",
            path,
            text,
            "configurations",
        )


def load_plan(path: str | Path) -> Plan:
    plan_path = Path(path)
    try:
        text = plan_path.read_text()
    except OSError as error:
        raise PlanError(f"Cannot read the plan {plan_path}: {error.strerror}.") from None
    return parse_plan(text, plan_path)
