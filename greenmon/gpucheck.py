"""The GPU check: on a machine with an NVIDIA or AMD GPU, every GPU path of greenmon in one
call, summarised as one JSON object (``scripts/gpu-check``).

Terms:
- *vendor*: ``nvidia`` (read through NVML) or ``amd`` (through amdsmi); a vendor is present
  when its probe opens.  With neither, the check says why for each and exits cleanly.
- *GPU configuration*: an engine x provider that runs on a GPU (torch/cuda, onnx/cuda,
  onnx/tensorrt, torchscript/cuda, tensorflow/cuda where that engine exists, torch/rocm,
  onnx/rocm).  Each runs the built-in models (``tiny``, ``tiny-t5``) on fixed prompts with
  an exact number of new tokens, or says why it cannot (``check_configuration``).
- *CPU reference*: the same prompts through torch on the CPU; a configuration's outputs
  are *equal* when every request's token ids are.
- *energy*: the GPU probe read at the start and the end of the generation (its counter at
  the edges: measured), or, for a GPU without a counter (or whose counter failed
  amdsmi's start-up check), its power sampled at ``POLL_HZ`` and integrated (trapezoid),
  with *coverage*: the share of the time whose samples are no further apart than
  ``MAX_GAP_PERIODS`` periods.
- *power-limit check*: one level (the middle of the GPU's range) applied through the
  restore journal (greenmon/hardware/journal.py), read back and restored.

The NVML and amdsmi modules are parameters (``--nvml-module``, ``--amdsmi-module``), so
the tests run every code path here against the fake modules.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greenmon.probes.base import Channel, Probe, ProbeUnavailable
from greenmon.sources import SCALE_TO_SI, counter_delta

VENDOR_CONFIGURATIONS: dict[str, tuple[str, ...]] = {
    "nvidia": ("torch/cuda", "onnx/cuda", "onnx/tensorrt", "torchscript/cuda", "tensorflow/cuda"),
    "amd": ("torch/rocm", "onnx/rocm"),
}
MODELS = ("tiny", "tiny-t5")
PROMPTS = ("def add(a, b):", "import math\n", "    return", "class Stack:\n    def push(self")
NEW_TOKENS = 16
POLL_HZ = 20.0
MAX_GAP_PERIODS = 4


def open_probe(vendor: str, module_spec: str) -> tuple[Probe | None, list[Channel], str | None]:
    """The vendor's GPU probe, opened (None and the reason when it cannot be)."""
    probe: Probe
    if vendor == "nvidia":
        from greenmon.hardware.nvml import load_nvml
        from greenmon.probes.nvml import NvmlProbe

        try:
            module = load_nvml(module_spec)
        except Exception as error:
            return None, [], f"nvidia-ml-py cannot be loaded: {error}"
        probe = NvmlProbe(nvml=module)
    else:
        from greenmon.probes.amdsmi import AmdsmiProbe, Options

        probe = AmdsmiProbe(Options(module=module_spec))
    try:
        channels = list(probe.open())
    except ProbeUnavailable as error:
        return None, [], str(error)
    return probe, channels, None


@dataclass
class Readings:
    """(t_ns, values) of every probe read, in order."""

    rows: list[tuple[int, list[float | None]]] = field(default_factory=list)

    def take(self, probe: Probe) -> None:
        t_before = time.monotonic_ns()
        values = list(probe.read())  # type: ignore[arg-type]
        self.rows.append(((t_before + time.monotonic_ns()) // 2, values))


def gpu_energy(channels: Sequence[Channel], readings: Readings) -> dict[str, Any]:
    """Energy over the readings' span from the channels that answer for the gpu domain:
    counters from their first and last reading (wrap-corrected), power gauges integrated."""
    if len(readings.rows) < 2:
        return {"energy_j": None, "coverage": 0.0, "energy_source": None}
    (start_ns, _), (end_ns, _) = readings.rows[0], readings.rows[-1]
    span_ns = max(end_ns - start_ns, 1)
    total_j = 0.0
    coverage = 1.0
    sources = []
    for index, channel in enumerate(channels):
        if channel.domain != "gpu":
            continue
        series = [(t, v[index]) for t, v in readings.rows if v[index] is not None]
        scale = SCALE_TO_SI[channel.unit]
        if channel.kind == "counter":
            sources.append(f"{channel.name} (counter at the edges, measured)")
            range_ = channel.metadata.get("counter_range")
            for (_, before), (_, after) in itertools.pairwise(series):
                assert before is not None and after is not None
                delta = counter_delta(before, after, float(range_) if range_ else None)
                total_j += (delta or 0.0) * scale
            continue
        sources.append(f"{channel.name} (power integrated, coverage reported)")
        covered_ns = 0
        max_gap_ns = MAX_GAP_PERIODS * 1e9 / POLL_HZ
        for (t0, p0), (t1, p1) in itertools.pairwise(series):
            assert p0 is not None and p1 is not None
            total_j += (p0 + p1) / 2 * scale * (t1 - t0) / 1e9
            covered_ns += (t1 - t0) if t1 - t0 <= max_gap_ns else 0
        coverage = min(coverage, covered_ns / span_ns)
    return {
        "energy_j": total_j if sources else None,
        "coverage": coverage if sources else 0.0,
        "energy_source": "; ".join(sources) or None,
    }


class Poller:
    """Reads a probe at POLL_HZ in a thread between ``start`` and ``stop`` (both edges read)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.readings = Readings()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def _read(self) -> None:
        with self._lock:
            self.readings.take(self.probe)

    def _run(self) -> None:
        while not self._stop.wait(1 / POLL_HZ):
            self._read()

    def __enter__(self) -> Poller:
        self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()


def run_configuration(
    configuration: str,
    reference: dict[str, list[tuple[int, ...]]],
    probe: Probe | None,
    channels: Sequence[Channel],
    cache_dir: str | None,
    models: Sequence[str] = MODELS,
) -> dict[str, Any]:
    """One GPU configuration over every built-in model: ran or why not, and its figures."""
    from greenmon.engines import ENGINES, check_configuration, get_engine
    from greenmon.engines.base import Prompt

    engine_name, _, provider = configuration.partition("/")
    if engine_name not in ENGINES:
        return {
            "configuration": configuration,
            "ran": False,
            "why_not": f"greenmon has no {engine_name} engine in this version",
        }
    reason = check_configuration(engine_name, provider)
    if reason:
        return {"configuration": configuration, "ran": False, "why_not": reason}
    prompts = [Prompt(f"p{i}", text) for i, text in enumerate(PROMPTS)]
    result: dict[str, Any] = {
        "configuration": configuration,
        "ran": True,
        "why_not": None,
        "models": {},
    }
    for model in models:
        engine = get_engine(engine_name, cache_dir=cache_dir)
        try:
            engine.load(model, provider, {})
            started = time.perf_counter()
            if probe is not None:
                with Poller(probe) as poller:
                    records = engine.generate(prompts, NEW_TOKENS)
                energy = gpu_energy(channels, poller.readings)
            else:
                records = engine.generate(prompts, NEW_TOKENS)
                energy = {"energy_j": None, "coverage": 0.0, "energy_source": None}
            duration_s = time.perf_counter() - started
        except Exception as error:
            result["models"][model] = {"ran": False, "why_not": f"{type(error).__name__}: {error}"}
            result["ran"] = False
            continue
        finally:
            engine.close()
        result["models"][model] = {
            "ran": True,
            "tokens_exact": all(r.tokens_out == NEW_TOKENS for r in records),
            "outputs_equal_cpu": [r.output_ids for r in records] == reference.get(model),
            "duration_s": round(duration_s, 3),
            **energy,
        }
    return result


def cpu_reference(
    cache_dir: str | None, models: Sequence[str] = MODELS
) -> dict[str, list[tuple[int, ...]]]:
    """Every built-in model's token ids through torch on the CPU."""
    from greenmon.engines import get_engine
    from greenmon.engines.base import Prompt

    prompts = [Prompt(f"p{i}", text) for i, text in enumerate(PROMPTS)]
    out: dict[str, list[tuple[int, ...]]] = {}
    for model in models:
        engine = get_engine("torch", cache_dir=cache_dir)
        try:
            engine.load(model, "cpu", {})
            out[model] = [r.output_ids for r in engine.generate(prompts, NEW_TOKENS)]
        finally:
            engine.close()
    return out


def probe_check(vendor: str, probe: Probe, channels: Sequence[Channel]) -> dict[str, Any]:
    """Two reads half a second apart: counter advancing, power, utilisation."""
    readings = Readings()
    readings.take(probe)
    time.sleep(0.5)
    readings.take(probe)
    last = dict(zip((c.name for c in channels), readings.rows[-1][1], strict=True))
    return {
        "channels": [c.name for c in channels],
        "counter_channels": [c.name for c in channels if c.kind == "counter"],
        "power_w": {n: v / 1000 for n, v in last.items() if n.endswith("power_mw") and v},
        "utilisation_percent": {n: v for n, v in last.items() if ".util_" in n},
        "findings": list(getattr(probe, "findings", [])),
        **gpu_energy(channels, readings),
    }


def power_limit_check(vendor: str, module_spec: str) -> dict[str, Any]:
    """One power-limit level (the middle of the first GPU's range), applied through the
    journal, read back and restored."""
    from greenmon.hardware.journal import UnitSettings
    from greenmon.hardware.spec import Hardware
    from greenmon.store import Store

    if vendor == "nvidia":
        hardware = Hardware(nvml_module=module_spec, gpu_devices=[0])
    else:
        hardware = Hardware(gpu_vendor="amd", amdsmi_module=module_spec, gpu_devices=[0])
    with (
        tempfile.TemporaryDirectory() as directory,
        Store.open(Path(directory) / "gpu-check.duckdb") as store,
    ):
        settings = UnitSettings(store, hardware, "gpu-check", "gpu-check", 0)
        try:
            low_w, high_w = _power_range_w(vendor, hardware)
            level_w = round((low_w + high_w) / 2)
            record = settings.apply({"gpu_power_limit_w": level_w})
        except Exception as error:
            problems = settings.restore()
            return {
                "ran": False,
                "why_not": f"{type(error).__name__}: {error}",
                "restore_problems": problems,
            }
        problems = settings.restore()
        _, rows = store.query("SELECT status, previous_value FROM restore_journal")
    in_force = record["gpu_power_limit_mw"]["in_force"]
    return {
        "ran": True,
        "range_w": [low_w, high_w],
        "requested_w": level_w,
        "in_force_w": int(in_force) / 1000 if isinstance(in_force, str) else in_force,
        "previous_w": [int(previous) / 1000 for _, previous in rows],
        "restored": not problems and all(status == "restored" for status, _ in rows),
        "restore_problems": problems,
    }


def _power_range_w(vendor: str, hardware: Any) -> tuple[float, float]:
    """The first chosen GPU's power-limit range in watts, read through its own session."""
    from greenmon.hardware.nvml import NvmlSession, gpu_handles, power_limit_range_mw

    session = NvmlSession()
    try:
        if vendor == "nvidia":
            module = session.module(hardware.nvml_module)
            handle = gpu_handles(module, hardware.gpu_devices)[0][1]
            low, high = power_limit_range_mw(module, handle)
        else:
            from greenmon.hardware.amd import gpu_handles as amd_handles
            from greenmon.hardware.amd import power_cap_range_mw

            module = session.amdsmi.module(hardware.amdsmi_module)
            handle = amd_handles(module, hardware.gpu_devices)[0][1]
            low, high = power_cap_range_mw(module, handle)
    finally:
        session.close()
    return low / 1000, high / 1000


def check(
    *,
    nvml_module: str = "pynvml",
    amdsmi_module: str = "amdsmi",
    configurations: Sequence[str] | None = None,
    cache_dir: str | None = None,
    power_limit: bool = True,
    models: Sequence[str] = MODELS,
) -> dict[str, Any]:
    """Every GPU path on this machine, as one summary."""
    started = time.perf_counter()
    specs = {"nvidia": nvml_module, "amd": amdsmi_module}
    vendors: dict[str, Any] = {}
    probes: dict[str, tuple[Probe, list[Channel]]] = {}
    for vendor, spec in specs.items():
        probe, channels, reason = open_probe(vendor, spec)
        vendors[vendor] = {"present": probe is not None, "why_not": reason}
        if probe is not None:
            probes[vendor] = (probe, channels)
    summary: dict[str, Any] = {"gpu_present": bool(probes), "vendors": vendors}
    if not probes:
        summary["message"] = (
            "no GPU is present here: nothing to check (greenmon's GPU paths need an NVIDIA "
            "GPU with its driver, or an AMD GPU with ROCm)"
        )
        return summary
    try:
        summary["probes"] = {v: probe_check(v, p, c) for v, (p, c) in probes.items()}
        wanted = (
            list(configurations)
            if configurations is not None
            else [c for vendor in probes for c in VENDOR_CONFIGURATIONS[vendor]]
        )
        reference = cpu_reference(cache_dir, models) if wanted else {}
        results = []
        for configuration in wanted:
            provider = configuration.partition("/")[2]
            vendor = "amd" if provider == "rocm" else "nvidia"
            probe, channels = probes.get(vendor, (None, []))
            results.append(
                run_configuration(configuration, reference, probe, channels, cache_dir, models)
            )
        summary["configurations"] = results
        if power_limit:
            summary["power_limit"] = {v: power_limit_check(v, specs[v]) for v in probes}
    finally:
        for probe, _ in probes.values():
            probe.close()
    summary["duration_s"] = round(time.perf_counter() - started, 1)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gpu-check",
        description="Run every GPU path of greenmon on this machine; print one JSON summary.",
    )
    parser.add_argument("--nvml-module", default="pynvml", help="NVML module (tests: a fake)")
    parser.add_argument("--amdsmi-module", default="amdsmi", help="amdsmi module (tests: a fake)")
    parser.add_argument(
        "--configurations",
        default=None,
        help="comma-separated engine/provider list (default: every GPU configuration of the "
        "vendors present)",
    )
    parser.add_argument("--cache-dir", default=None, help="greenmon's model and export cache")
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated built-in models to run"
    )
    parser.add_argument(
        "--no-power-limit", action="store_true", help="skip the power-limit level and restore"
    )
    args = parser.parse_args(argv)
    configurations = args.configurations.split(",") if args.configurations else None
    summary = check(
        nvml_module=args.nvml_module,
        amdsmi_module=args.amdsmi_module,
        configurations=configurations,
        cache_dir=args.cache_dir,
        power_limit=not args.no_power_limit,
        models=args.models.split(","),
    )
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
