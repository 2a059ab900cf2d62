"""Per-unit results as a pandas DataFrame: the columns, the dependent variables, the loader.

Everything in greenmon.analysis works on a DataFrame with the columns of the
``unit_results`` view (``RESULT_COLUMNS``), one row per unit, so the statistics can be
tested on synthetic frames; ``load_results`` is the thin layer that reads the view.

Terms:
- *configuration*: ``engine/provider`` (``onnx/cpu``), the thing being compared.
- *dependent variable*: one measured quantity per unit (``DEPENDENT_VARIABLES``).
- *factor levels*: a unit's extra plan factors (``{"batch_size": 8}``); ``factor_key`` is
  their canonical JSON (``""`` for none), so units with equal levels group together.
- *scope*: the units one test compares: one model at one set of factor levels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenmon.errors import GreenmonError

if TYPE_CHECKING:
    import pandas as pd

    from greenmon.store import Store


class AnalysisError(GreenmonError):
    """A problem with the data an analysis was given, fit to show a person."""

    title = "Analysis problem"


class ExperimentNotFoundError(AnalysisError):
    title = "No such experiment"


class NoResultsError(AnalysisError):
    title = "Nothing to analyse"


class TooFewRepetitionsError(AnalysisError):
    title = "Too few repetitions"


class ConstantVariableError(AnalysisError):
    title = "Constant variable"


class FailedUnitsExcludedError(AnalysisError):
    title = "Failed units left out"


class MissingVariableError(AnalysisError):
    title = "Variable not measured"


class BackgroundLoadError(AnalysisError):
    title = "Units ran beside other load"


class CpuStealError(AnalysisError):
    title = "Units ran while the hypervisor took their CPUs"


@dataclass(frozen=True)
class Variable:
    """One dependent variable: its column, a label for people, its unit, and the noun used in
    sentences ("used 27% less <noun>")."""

    column: str
    label: str
    unit: str
    noun: str
    # Quality is better higher; energy, time and utilisation are reported as "less".
    higher_is_better: bool = False


# In the order tables and reports show them.  "global" is CPU + GPU, as in the study.
DEPENDENT_VARIABLES: tuple[Variable, ...] = (
    Variable("energy_global_j", "Energy, global (CPU+GPU)", "J", "energy"),
    Variable("energy_cpu_j", "Energy, CPU", "J", "CPU energy"),
    Variable("energy_dram_j", "Energy, DRAM", "J", "DRAM energy"),
    Variable("energy_gpu_j", "Energy, GPU", "J", "GPU energy"),
    Variable("energy_wall_j", "Energy, wall", "J", "wall energy"),
    Variable("dynamic_global_j", "Dynamic energy, global", "J", "dynamic energy"),
    Variable("dynamic_cpu_j", "Dynamic energy, CPU", "J", "dynamic CPU energy"),
    Variable("dynamic_dram_j", "Dynamic energy, DRAM", "J", "dynamic DRAM energy"),
    Variable("dynamic_gpu_j", "Dynamic energy, GPU", "J", "dynamic GPU energy"),
    Variable("dynamic_wall_j", "Dynamic energy, wall", "J", "dynamic wall energy"),
    Variable("duration_s", "Execution time", "s", "time"),
    Variable("j_per_token", "Energy per token", "J/token", "energy per token"),
    # Classification (one label per request): per sample, and per forward pass of a batch.
    Variable("j_per_request", "Energy per sample", "J/sample", "energy per sample"),
    Variable("j_per_inference", "Energy per inference", "J/batch", "energy per inference"),
    # quality beside energy (greenmon/quality.py)
    Variable("quality", "Quality (task metric, 0-1)", "score", "quality", True),
    Variable("correct_share", "Correct answers", "share", "share of correct answers", True),
    Variable(
        "j_per_correct", "Energy per correct answer", "J/correct", "energy per correct answer"
    ),
    Variable("cpu_percent", "CPU utilisation", "%", "CPU"),
    Variable("ram_percent", "RAM utilisation", "%", "RAM"),
    Variable("gpu_percent", "GPU utilisation", "%", "GPU"),
    Variable("gpu_mem_util_percent", "GPU memory utilisation", "%", "GPU memory bandwidth"),
    Variable("gpu_mem_used_percent", "GPU memory used", "%", "GPU memory"),
)
VARIABLES_BY_COLUMN = {v.column: v for v in DEPENDENT_VARIABLES}
# Analysed instead of energy per token where every request gave one output (a label).
PER_SAMPLE_VARIABLES = ("j_per_request", "j_per_inference")

RESULT_COLUMNS: tuple[str, ...] = (
    "experiment_id", "unit_id", "model", "engine", "provider", "configuration",
    "repetition", "factors", "status", "reason", "params", "size_category", "duration_s",
    "requests", "tokens_out",
    "energy_cpu_j", "energy_dram_j", "energy_gpu_j", "energy_wall_j", "energy_global_j",
    "dynamic_cpu_j", "dynamic_dram_j", "dynamic_gpu_j", "dynamic_wall_j", "dynamic_global_j",
    "j_per_request", "j_per_inference", "inferences", "j_per_token", "cpu_percent",
    "ram_percent", "gpu_percent",
    "gpu_mem_util_percent", "gpu_mem_used_percent",
    "estimated", "min_coverage", "flags", "fidelity_share",
    # serving under load, shown per level by greenmon/analysis/serving.py
    "steady_j_per_token", "throughput_tok_s", "latency_p50_s", "latency_p90_s",
    "latency_p99_s", "ttft_p50_s", "tpot_p50_s", "steady_s",
    "quality_metric", "quality", "correct_share", "correct_answers", "j_per_correct",
    # interference (greenmon/interference.py)
    "background_cpu_percent", "baseline_background_cpu_percent", "background_gpu_processes",
    "background_cpu_percent_max", "quiet_wait_s", "steal_cpu_percent",
)  # fmt: skip


def factor_key(factors: Any) -> str:
    """Canonical JSON of a unit's factor levels; ``""`` when it has none."""
    if factors is None:
        return ""
    if isinstance(factors, str):
        factors = json.loads(factors) if factors.strip() else {}
    if not factors:
        return ""
    return json.dumps(dict(factors), sort_keys=True, separators=(",", ":"))


def factor_label(key: str) -> str:
    """``batch_size=8, seq=128`` for a factor key; ``""`` for none."""
    if not key:
        return ""
    return ", ".join(f"{k}={v}" for k, v in json.loads(key).items())


def configuration_label(configuration: str) -> str:
    """``onnx/cpu`` -> ``<ONNX, CPU>``, the study's notation."""
    engine, _, provider = configuration.partition("/")
    return f"<{engine.upper()}, {provider.upper()}>"


def normalise_results(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with every expected column present, numeric columns as floats and the
    derived ``factor_key`` column; missing columns become NULL (e.g. a test frame)."""
    import numpy as np
    import pandas as pd

    out = frame.copy()
    for column in RESULT_COLUMNS:
        if column not in out.columns:
            out[column] = None
    if out["configuration"].isna().any():
        filled = out["engine"].astype(str) + "/" + out["provider"].astype(str)
        out["configuration"] = out["configuration"].fillna(filled)
    for variable in DEPENDENT_VARIABLES:
        out[variable.column] = pd.to_numeric(out[variable.column], errors="coerce").astype(
            float
        )
    out["status"] = out["status"].fillna("done")
    out["factor_key"] = [factor_key(f) for f in out["factors"]]
    out["flags"] = [
        list(f) if isinstance(f, list | tuple | np.ndarray) else [] for f in out["flags"]
    ]
    return out


def latest_experiment(store: Store) -> str:
    """The most recently created experiment's id."""
    _, rows = store.query(
        "SELECT experiment_id FROM experiments ORDER BY created_ns DESC NULLS LAST LIMIT 1"
    )
    if not rows:
        _, rows = store.query(
            "SELECT experiment_id FROM units GROUP BY 1 ORDER BY max(started_ns) DESC LIMIT 1"
        )
    if not rows:
        raise ExperimentNotFoundError(
            f"{store.path} holds no experiment yet. Run one with `greenmon run PLAN` or "
            "`greenmon demo`, then analyse it."
        )
    return str(rows[0][0])


def resolve_experiment(store: Store, experiment_id: str | None) -> str:
    """``experiment_id`` checked against the database, or the latest one when None."""
    if experiment_id is None:
        return latest_experiment(store)
    _, rows = store.query(
        "SELECT count(*) FROM units WHERE experiment_id = ?", [experiment_id]
    )
    if not rows or not rows[0][0]:
        _, known = store.query("SELECT DISTINCT experiment_id FROM units ORDER BY 1")
        names = ", ".join(str(r[0]) for r in known[:10]) or "none"
        raise ExperimentNotFoundError(
            f"{store.path} has no units for experiment {experiment_id!r} (experiments with "
            f"units: {names}). Leave --experiment out to analyse the latest one."
        )
    return experiment_id


def load_results(store: Store, experiment_id: str) -> pd.DataFrame:
    """The ``unit_results`` rows of one experiment as a normalised DataFrame."""
    import pandas as pd

    frame = store.query_frame(
        # unit_results_for reads only this experiment's samples
        # each unit's host and its hardware, for the host as a block
        """SELECT r.*, s.host, s.cpu_model AS host_cpu_model,
                  s.gpu_model AS host_gpu_model, s.gpu_driver AS host_gpu_driver
           FROM unit_results_for(?) r
           LEFT JOIN units u USING (experiment_id, unit_id)
           LEFT JOIN sessions s ON s.session_id = u.session_id
           ORDER BY r.unit_id""",
        [experiment_id],
    )
    if frame.empty:
        raise NoResultsError(
            f"Experiment {experiment_id} has no units in unit_results; it may not have "
            "started. Run it with `greenmon run`, then analyse it."
        )
    return normalise_results(pd.DataFrame(frame))
