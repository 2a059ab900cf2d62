"""The rocm provider of torch and onnx: checked here with reasons; run only on an AMD GPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from engine_cases import NEW_TOKENS, PROMPTS

from greenmon.engines import check_configuration, describe_engines, get_engine
from greenmon.engines.onnx_engine import ort_provider
from greenmon.engines.rocm import amd_gpu_present, check_rocm, ort_rocm_provider

REPO = Path(__file__).resolve().parents[2]
CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]


def amd_root(tmp_path: Path) -> Path:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/kfd").write_text("")
    return tmp_path


def test_onnx_rocm_prefers_migraphx_and_says_what_to_install(tmp_path: Path) -> None:
    both = ["MIGraphXExecutionProvider", "ROCMExecutionProvider", "CPUExecutionProvider"]
    assert ort_rocm_provider(both) == "MIGraphXExecutionProvider"
    assert ort_provider("rocm", ["ROCMExecutionProvider"]) == "ROCMExecutionProvider"
    reason = check_rocm("onnx", "", lambda: CPU_ONLY, amd_root(tmp_path))
    assert reason is not None and "onnxruntime-migraphx" in reason
    # the provider is there but the machine has no AMD GPU
    no_gpu = tmp_path / "empty"
    no_gpu.mkdir()
    reason = check_rocm("onnx", "", lambda: ["ROCMExecutionProvider"], no_gpu)
    assert reason is not None and "no AMD GPU" in reason
    assert check_rocm("onnx", "", lambda: ["ROCMExecutionProvider"], tmp_path) is None


def test_torch_rocm_needs_a_rocm_build_and_an_amd_gpu(tmp_path: Path) -> None:
    root = amd_root(tmp_path)
    assert amd_gpu_present(root) and not amd_gpu_present(root / "dev")
    reason = check_rocm("torch", "2.13.0+cpu", list, root)
    assert reason is not None and "not a ROCm build" in reason and "rocm6" in reason
    reason = check_rocm("torch", "2.13.0+rocm6.4", list, root / "dev")
    assert reason is not None and "no AMD GPU" in reason


def test_rocm_rows_here_say_why_not(tmp_path: Path) -> None:
    rows = {(s.engine, s.provider): s for s in describe_engines(gpu_root=tmp_path)}
    for engine in ("torch", "onnx"):
        row = rows[(engine, "rocm")]
        assert not row.usable and row.reason
        assert "never run on an AMD GPU" in row.architectures["decoder"]
    assert "no ROCm backend" in (rows[("openvino", "rocm")].reason or "")
    assert "does not support provider rocm" in (rows[("torchscript", "rocm")].reason or "")


def test_greenmon_engines_and_plan_check_give_the_reasons(tmp_path: Path) -> None:
    from tests.measure.support import greenmon_command

    engines = subprocess.run(
        greenmon_command("engines", "--json"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    rows = {(r["engine"], r["provider"]): r for r in json.loads(engines.stdout)}
    assert not rows[("torch", "rocm")]["usable"]
    assert "ROCm" in rows[("torch", "rocm")]["reason"]
    assert "MIGraphXExecutionProvider" in rows[("onnx", "rocm")]["reason"]
    plan = tmp_path / "rocm.toml"
    plan.write_text(
        'name = "rocm"\nmodels = ["tiny"]\nconfigurations = ["torch/rocm", "onnx/rocm"]\n'
        "prompts = 2\nmax_new_tokens = 4\nrepetitions = 1\n"
    )
    checked = subprocess.run(
        greenmon_command("plan", "check", str(plan)),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    output = checked.stdout + checked.stderr
    assert "torch/rocm cannot run here" in output and "ROCm" in output
    assert "onnx/rocm cannot run here" in output


@pytest.mark.amd_gpu
@pytest.mark.parametrize("name", ["torch", "onnx"])
def test_rocm_engine_matches_cpu_reference(name: str, request: pytest.FixtureRequest) -> None:
    reason = check_configuration(name, "rocm")
    if reason:
        pytest.skip(reason)
    # only now: the CPU reference loads every CPU engine
    cache_dir: str = request.getfixturevalue("cache_dir")
    tiny: Any = request.getfixturevalue("tiny")
    outputs: dict[str, Any] = request.getfixturevalue("outputs")
    engine = get_engine(name, cache_dir=cache_dir)
    engine.load(tiny, "rocm", {})
    try:
        records = engine.generate(list(PROMPTS), NEW_TOKENS)
    finally:
        engine.close()
    assert all(r.tokens_out == NEW_TOKENS for r in records)
    assert [r.output_ids for r in records] == [r.output_ids for r in outputs["torch"]]
