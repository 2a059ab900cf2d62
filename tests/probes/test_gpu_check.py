"""scripts/gpu-check: here it says no GPU is present and exits cleanly; against the fake
NVML and fake amdsmi modules every code path runs (probes, a configuration through the
CPU-reference comparison and the energy at the edges, a power-limit level and its restore).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu-check"


def gpu_check(*args: str, cwd: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def test_without_a_gpu_it_says_so_and_exits_cleanly(tmp_path: Path) -> None:
    summary = gpu_check(
        "--nvml-module",
        "greenmon_no_such_nvml",
        "--amdsmi-module",
        "greenmon_no_such_amdsmi",
        cwd=tmp_path,
    )
    assert summary["gpu_present"] is False
    assert "no GPU is present" in summary["message"]
    assert "nvidia-ml-py" in summary["vendors"]["nvidia"]["why_not"]
    assert "greenmon[amd]" in summary["vendors"]["amd"]["why_not"]
    # and with this machine's own libraries, whatever is installed
    assert gpu_check(cwd=tmp_path)["gpu_present"] is False


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_path_runs_against_the_fake_modules(tmp_path: Path) -> None:
    summary = gpu_check(
        "--nvml-module",
        "tests.fakes.nvml:two_gpus",
        "--amdsmi-module",
        "tests.fakes.amdsmi:one_gpu",
        # torch/cpu stands in for a GPU configuration that runs here
        "--configurations",
        "torch/cpu,onnx/cuda,torch/rocm,tensorflow/cuda",
        "--cache-dir",
        str(tmp_path / "cache"),
        # one model keeps the test short; tiny-t5 takes the same path
        "--models",
        "tiny",
        cwd=tmp_path,
    )
    assert summary["gpu_present"] is True
    assert summary["vendors"]["nvidia"]["present"] and summary["vendors"]["amd"]["present"]
    nvidia, amd = summary["probes"]["nvidia"], summary["probes"]["amd"]
    assert nvidia["counter_channels"] == ["gpu0.energy_mj", "gpu1.energy_mj"]
    assert amd["counter_channels"] == ["gpu0.energy_uj"] and amd["findings"] == []
    # the fake AMD GPU draws 300 W in real time: about 150 J over the half second
    assert 100 < amd["energy_j"] < 400 and amd["coverage"] == 1.0
    assert amd["power_w"] == {"gpu0.power_mw": 300.0}
    assert amd["utilisation_percent"]["gpu0.util_gfx_percent"] == 40.0
    results = {r["configuration"]: r for r in summary["configurations"]}
    ran = results["torch/cpu"]
    assert ran["ran"] is True
    for model in ("tiny",):
        figures = ran["models"][model]
        assert figures["tokens_exact"] and figures["outputs_equal_cpu"]
        # the fake NVML counter: 1.5 J per read of each of two GPUs, read at both edges
        assert figures["energy_j"] > 0 and figures["coverage"] == 1.0
        assert "counter at the edges" in figures["energy_source"]
    assert results["onnx/cuda"]["ran"] is False and "CUDA" in results["onnx/cuda"]["why_not"]
    assert "ROCm" in results["torch/rocm"]["why_not"]
    assert results["tensorflow/cuda"]["ran"] is False and results["tensorflow/cuda"]["why_not"]
    limits = summary["power_limit"]
    assert limits["nvidia"]["ran"] and limits["nvidia"]["restored"]
    assert limits["nvidia"]["requested_w"] == 225 and limits["nvidia"]["in_force_w"] == 225
    assert limits["amd"]["ran"] and limits["amd"]["restored"]
    assert limits["amd"]["requested_w"] == 475 and limits["amd"]["previous_w"] == [750.0]
