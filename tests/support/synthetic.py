"""Synthetic experiments with known truth, for tests and benchmarks of the analysis.

``synthetic_results`` draws per-unit results (the columns of ``unit_results``) from chosen
distributions; ``write_synthetic_experiment`` writes one into a greenmon database as the
runner would: session, experiment, units in a shuffled order, phases, requests, channels
and raw samples whose counters integrate to exactly the drawn energies over each measure
phase.  Where the database has no ``unit_results`` view yet, a table of that name holding
the drawn rows stands in for it.

Terms: *truth* is the drawn frame; *power* is constant within a phase, so a counter's value
is linear in time and any interpolation between samples is exact.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from greenmon.analysis.data import RESULT_COLUMNS

if TYPE_CHECKING:
    import duckdb

    from greenmon.store import Store

STUDY_CONFIGURATIONS = (
    "torch/cpu", "onnx/cpu", "openvino/cpu", "torchscript/cpu",
    "torch/cuda", "onnx/cuda", "torchscript/cuda",
)  # fmt: skip

# Seconds each non-measure phase lasts, in the order the runner walks them.
PHASE_S = {"load": 2.0, "warmup": 1.0, "cooldown_before": 3.0}
COOLDOWN_AFTER_S = 3.0
IDLE_W = {"cpu": 5.0, "dram": 1.0, "gpu": 10.0, "wall": 15.0}
IDLE_PERCENT = 2.0


def synthetic_results(
    *,
    models: int = 3,
    configurations: Sequence[str] = ("torch/cpu", "onnx/cpu", "openvino/cpu"),
    repetitions: int = 10,
    energy_j: Mapping[str, float] | None = None,
    noise: str = "normal",
    relative_sd: float = 0.05,
    gpu: bool = False,
    wall: bool = True,
    factors: Sequence[Mapping[str, Any]] = ({},),
    seed: int = 0,
    experiment_id: str = "synthetic",
) -> pd.DataFrame:
    """Per-unit results: global energy per configuration scaled by model (model i uses
    ``1 + i/2`` times the configuration's ``energy_j``), noise ``normal`` or ``lognormal``
    (skewed: routes to rank tests) or ``identical`` (every configuration the same
    distribution).  Units get a seeded shuffled order, as the runner runs them."""
    rng = np.random.default_rng(seed)
    base = dict(energy_j or {c: 100.0 * (1 + 0.5 * i) for i, c in enumerate(configurations)})
    rows: list[dict[str, Any]] = []
    for m in range(models):
        for level in factors:
            for config in configurations:
                engine, provider = config.split("/")
                on_gpu = provider != "cpu"
                for rep in range(repetitions):
                    mean = base[config] * (1 + m / 2)
                    if noise == "identical":
                        mean = 100.0 * (1 + m / 2)
                    if noise == "lognormal":
                        energy = mean * float(rng.lognormal(0.0, 1.0)) / np.exp(0.5)
                    else:
                        energy = float(rng.normal(mean, mean * relative_sd))
                    duration = energy / 40.0
                    share_gpu = 0.6 if (gpu and on_gpu) else 0.0
                    cpu_j = energy * (1 - share_gpu)
                    # A GPU that is present but unused still draws its idle power.
                    gpu_j = None
                    if gpu:
                        gpu_j = energy * share_gpu if on_gpu else IDLE_W["gpu"] * duration
                    dram_j = duration * 3.0
                    wall_j = (cpu_j + dram_j + (gpu_j or 0.0)) * 1.15 if wall else None
                    tokens = 10 * 16
                    rows.append(
                        {"experiment_id": experiment_id, "model": f"model-{m}",
                         "engine": engine, "provider": provider, "configuration": config,
                         "repetition": rep, "factors": json.dumps(dict(level)),
                         "status": "done", "reason": None, "params": 10**8 * (m + 1),
                         "size_category": 1 + m % 3, "duration_s": duration, "requests": 10,
                         "tokens_out": tokens, "energy_cpu_j": cpu_j, "energy_dram_j": dram_j,
                         "energy_gpu_j": gpu_j, "energy_wall_j": wall_j,
                         "energy_global_j": cpu_j + (gpu_j or 0.0),
                         "dynamic_cpu_j": cpu_j - IDLE_W["cpu"] * duration,
                         "dynamic_dram_j": dram_j - IDLE_W["dram"] * duration,
                         "dynamic_gpu_j": None if gpu_j is None
                         else gpu_j - IDLE_W["gpu"] * duration,
                         "dynamic_global_j": cpu_j + (gpu_j or 0.0)
                         - (IDLE_W["cpu"] + (IDLE_W["gpu"] if gpu else 0.0)) * duration,
                         "dynamic_wall_j": None if wall_j is None
                         else wall_j - IDLE_W["wall"] * duration,
                         "j_per_request": (cpu_j + (gpu_j or 0.0)) / 10,
                         "j_per_token": (cpu_j + (gpu_j or 0.0)) / tokens,
                         "cpu_percent": float(np.clip(rng.normal(60, 10), 1, 100)),
                         "ram_percent": float(np.clip(rng.normal(30, 3), 1, 100)),
                         "gpu_percent": float(rng.uniform(40, 90)) if gpu else None,
                         "gpu_mem_util_percent": float(rng.uniform(10, 50)) if gpu else None,
                         "gpu_mem_used_percent": float(rng.uniform(20, 60)) if gpu else None,
                         "estimated": False, "min_coverage": 1.0, "flags": [],
                         "fidelity_share": 1.0}
                    )  # fmt: skip
    frame = pd.DataFrame(rows)
    order = rng.permutation(len(frame))
    frame = frame.iloc[order].reset_index(drop=True)
    frame["unit_id"] = np.arange(1, len(frame) + 1)
    for column in RESULT_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    return frame[list(RESULT_COLUMNS)]


# Columns a host's speed scales: a host "20% faster" does the same work in 0.8 of the time
# at the same power, so time and every energy figure shrink alike.
SPEED_SCALED = (
    "duration_s", "energy_cpu_j", "energy_dram_j", "energy_gpu_j", "energy_wall_j",
    "energy_global_j", "dynamic_cpu_j", "dynamic_dram_j", "dynamic_gpu_j", "dynamic_wall_j",
    "dynamic_global_j", "j_per_request", "j_per_token",
)  # fmt: skip


def synthetic_campaign(hosts: Mapping[str, float], **kwargs: Any) -> pd.DataFrame:
    """``synthetic_results`` spread over hosts as shards spread a plan: each (model,
    configuration, factor levels) cell's repetitions dealt in turn to the hosts, and each
    host's time and energy multiplied by its factor (``{"a": 1.0, "b": 0.8}``: b is 20%
    faster for every configuration).  Adds a ``host`` column."""
    frame = synthetic_results(**kwargs)
    names = list(hosts)
    cell = frame.groupby(["model", "configuration", "factors"]).cumcount()
    frame["host"] = [names[i % len(names)] for i in cell]
    factor = frame["host"].map(dict(hosts)).astype(float)
    for column in SPEED_SCALED:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") * factor
    return frame


def write_synthetic_experiment(
    store: Store,
    truth: pd.DataFrame,
    *,
    samples_per_channel_unit: int = 40,
    plan_toml: str = "# synthetic plan\n",
    seed: int = 0,
    host: Mapping[str, Any] | None = None,
) -> str:
    """Write ``truth`` as a measured experiment; returns its id.  Each unit's timeline is
    load, warm-up, cooldown, measure (``duration_s``), cooldown, sampled evenly with
    ``samples_per_channel_unit`` samples per channel."""
    experiment_id = str(truth["experiment_id"].iloc[0])
    has_gpu = bool(truth["energy_gpu_j"].notna().any())
    has_wall = bool(truth["energy_wall_j"].notna().any())
    info = {
        "host": "synthetic-host", "os": "Linux", "kernel": "6.1.0-synthetic",
        "cpu_model": "Synthetic CPU @ 3.0GHz", "cores_logical": 16, "cores_physical": 8,
        "ram_bytes": 64 * 2**30, "python": "3.11",
        "versions": {"greenmon": "synthetic", "torch": "2.13.0"},
    }  # fmt: skip
    info.update(host or {})  # a campaign's hosts
    anchor_ns = 1_700_000_000_000_000_000  # a fixed wall clock, so reports are reproducible
    session_id = store.start_session(info, anchor_t_ns=1_000_000_000, anchor_ns=anchor_ns)
    from greenmon.probes.base import Channel

    units = truth.sort_values("unit_id").reset_index(drop=True)
    pre_s = sum(PHASE_S.values())
    span_s = pre_s + units["duration_s"].to_numpy(dtype=float) + COOLDOWN_AFTER_S
    period_ns = int(float(np.max(span_s + 1.0)) / samples_per_channel_unit * 1e9) + 1
    # (probe, channel, domain, truth column) as the real probes name them, so the view picks
    # them as it would real ones.
    sources = [("rapl", Channel("package-0.energy_uj", "uJ", "counter", domain="cpu"), "cpu"),
               ("rapl", Channel("dram.energy_uj", "uJ", "counter", domain="dram"), "dram")]
    if has_gpu:
        sources += [
            ("nvml", Channel("gpu0.energy_mj", "mJ", "counter", domain="gpu"), "gpu"),
            ("nvml", Channel("gpu0.util_gpu_percent", "%", "gauge"), "gpu_percent"),
            ("nvml", Channel("gpu0.util_memory_percent", "%", "gauge"),
             "gpu_mem_util_percent"),
            ("nvml", Channel("gpu0.memory_percent", "%", "gauge"), "gpu_mem_used_percent"),
        ]
    if has_wall:
        sources.append(("netio", Channel("outlet1.load_w", "W", "gauge", domain="wall"), "wall"))
    sources += [("host", Channel("cpu.percent", "%", "gauge"), "cpu_percent"),
                ("host", Channel("ram.percent", "%", "gauge"), "ram_percent")]  # fmt: skip
    ids: list[int] = []
    for probe, channel, _ in sources:
        ids += store.register_channels(session_id, probe, [channel], period_ns=period_ns)
    keys = [key for _, _, key in sources]
    store.execute(
        """INSERT INTO experiments (experiment_id, session_id, name, plan_path, plan_hash,
               plan_toml, plan, seed, order_kind, status, created_ns, finished_ns)
           VALUES (?, ?, 'synthetic', 'synthetic.toml', 'synthetic', ?, '{}', ?, 'shuffled',
                   'done', 1, 2)""",
        [experiment_id, session_id, plan_toml, seed],
    )
    start_s = 2.0 + np.concatenate([[0.0], np.cumsum(span_s + 1.0)[:-1]])
    unit_rows, phase_rows, timeline, request_rows = [], [], [], []
    for i, unit in enumerate(units.itertuples(index=False)):
        t = float(start_s[i])
        for phase, seconds in PHASE_S.items():
            phase_rows.append((experiment_id, unit.unit_id, phase, session_id, t, t + seconds))
            t += seconds
        measure_start, measure_end = t, t + float(unit.duration_s)
        phase_rows.append(
            (experiment_id, unit.unit_id, "measure", session_id, measure_start, measure_end)
        )
        phase_rows.append(
            (experiment_id, unit.unit_id, "cooldown_after", session_id, measure_end,
             measure_end + COOLDOWN_AFTER_S)
        )  # fmt: skip
        unit_rows.append(
            (experiment_id, int(unit.unit_id), unit.model, unit.engine, unit.provider,
             int(unit.repetition), unit.factors, unit.status, unit.reason, session_id,
             int(start_s[i] * 1e9), int((start_s[i] + span_s[i]) * 1e9), unit.params,
             unit.size_category, unit.fidelity_share)
        )  # fmt: skip
        timeline.append((int(unit.unit_id), start_s[i], span_s[i], measure_start, measure_end))
        per_request_s = float(unit.duration_s) / max(int(unit.requests or 1), 1)
        for r in range(int(unit.requests or 0)):
            request_rows.append(
                (experiment_id, int(unit.unit_id), 0, "measure", f"p{r}", 12,
                 int(unit.tokens_out or 0) // max(int(unit.requests), 1),
                 int((measure_start + r * per_request_s) * 1e9),
                 int((measure_start + (r + 1) * per_request_s) * 1e9))
            )  # fmt: skip
    # One transaction, as the runner's writes are one per step (Store.transaction).
    with store.transaction() as con:
        con.executemany(
            """INSERT INTO units (experiment_id, unit_id, model, engine, provider, repetition,
                   factors, status, reason, session_id, started_ns, ended_ns, params,
                   size_category, fidelity_share) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            unit_rows,
        )
        con.executemany(
            """INSERT INTO phases (experiment_id, unit_id, attempt, phase, session_id,
                   start_ns, end_ns) VALUES (?, ?, 0, ?, ?, CAST(? * 1e9 AS BIGINT),
                   CAST(? * 1e9 AS BIGINT))""",
            phase_rows,
        )
        if request_rows:
            con.executemany(
                """INSERT INTO requests (experiment_id, unit_id, attempt, phase, prompt_id,
                       tokens_in, tokens_out, start_ns, end_ns) VALUES (?,?,?,?,?,?,?,?,?)""",
                request_rows,
            )
        _write_samples(con, units, timeline, ids, keys, samples_per_channel_unit)
    return experiment_id


def _write_samples(
    con: duckdb.DuckDBPyConnection,
    units: pd.DataFrame,
    timeline: list[tuple[int, float, float, float, float]],
    channel_ids: list[int],
    keys: Sequence[str],
    samples_per_channel_unit: int,
) -> None:
    """Samples generated inside DuckDB (100 million rows would not fit through Python).
    Power is the idle power outside measure and ``energy / duration`` inside, so each
    counter's measure-phase delta is the drawn energy."""
    duration = units["duration_s"].to_numpy(dtype=float)
    rows: list[dict[str, Any]] = []
    cumulative = dict.fromkeys(("cpu", "dram", "gpu"), 0.0)
    scale = {"cpu": 1e6, "dram": 1e6, "gpu": 1e3}
    for i, (unit_id, start, span, m0, m1) in enumerate(timeline):
        unit = units.iloc[i]
        measure_w = {
            key: float(unit[f"energy_{key}_j"]) / duration[i]
            if key in IDLE_W else float(unit[key])
            for key in keys
        }  # fmt: skip
        for channel_id, domain in zip(channel_ids, keys, strict=True):
            idle = IDLE_W.get(domain, IDLE_PERCENT)
            energy0 = cumulative.get(domain, 0.0)
            rows.append(
                {"unit_id": unit_id, "channel_id": channel_id,
                 "counter": domain in cumulative, "scale": scale.get(domain, 1.0),
                 "start_s": start, "span_s": span, "m0": m0, "m1": m1, "idle_w": idle,
                 "measure_w": measure_w[domain], "energy0_j": energy0,
                 "n": samples_per_channel_unit}
            )  # fmt: skip
            if domain in cumulative:
                cumulative[domain] = (
                    energy0 + idle * (span + 1.0) + (measure_w[domain] - idle) * (m1 - m0)
                )
    plan = pd.DataFrame(rows)
    con.register("greenmon_sample_plan", plan)
    try:
        # t runs over [start, start + span + 1): the gap before the next unit is idle too.
        con.execute(
            """INSERT INTO samples
               WITH grid AS (
                   SELECT channel_id, counter, scale, idle_w, measure_w, energy0_j, m0, m1,
                          start_s,
                          start_s + unnest(range(n)) * (span_s + 1.0) / n AS t_s
                   FROM greenmon_sample_plan
                   UNION ALL
                   -- Samples on the measure phase's edges, where power steps, make every
                   -- interpolation inside the phase exact.
                   SELECT channel_id, counter, scale, idle_w, measure_w, energy0_j, m0, m1,
                          start_s, unnest([m0, m1]) AS t_s
                   FROM greenmon_sample_plan)
               SELECT CAST(channel_id AS INTEGER), CAST(round(t_s * 1e9) AS BIGINT),
                      CASE WHEN counter THEN scale * (energy0_j + idle_w * (t_s - start_s)
                               + (measure_w - idle_w)
                                 * greatest(0.0, least(t_s, m1) - m0))
                           WHEN t_s >= m0 AND t_s <= m1 THEN measure_w
                           ELSE idle_w END
               FROM grid"""
        )
    finally:
        con.unregister("greenmon_sample_plan")
