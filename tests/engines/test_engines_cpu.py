"""All four engines on the CPU with the tiny model: same tokens, exact length, cached exports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from engine_cases import CPU_ENGINES, NEW_TOKENS, PROMPTS

from greenmon.engines import check_configuration, describe_engines, get_engine
from greenmon.engines.base import Engine, LoadInfo, Prompt
from greenmon.errors import EngineError

# The first test of each engine builds and exports the model (about 30 s on a quiet 2-core
# VM): the suite-wide 120 s is too close on a VM whose host takes its CPUs.
pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize("name", CPU_ENGINES)
def test_engine_generates_exactly_max_new_tokens(name: str, outputs: dict[str, Any]) -> None:
    records = outputs[name]
    assert [r.prompt_id for r in records] == [p.prompt_id for p in PROMPTS]
    for record in records:
        assert record.tokens_out == NEW_TOKENS == len(record.output_ids)
        assert record.tokens_in > 0
        assert record.end_ns > record.start_ns
        assert record.ttft_ns is not None and 0 < record.ttft_ns <= record.latency_ns
        assert isinstance(record.text, str)


@pytest.mark.parametrize("name", CPU_ENGINES)
def test_engines_agree_with_torch(name: str, outputs: dict[str, Any]) -> None:
    expected = [r.output_ids for r in outputs["torch"]]
    assert [r.output_ids for r in outputs[name]] == expected
    assert [r.output_hash for r in outputs[name]] == [r.output_hash for r in outputs["torch"]]


@pytest.mark.parametrize("name", CPU_ENGINES)
def test_batch_of_one_matches_padded_batch(
    name: str, loaded_engines: dict[str, Any], outputs: dict[str, Any]
) -> None:
    # Left padding must not change a prompt's tokens.
    engine, _ = loaded_engines[name]
    (single,) = engine.generate([PROMPTS[1]], NEW_TOKENS)
    assert single.output_ids == outputs[name][1].output_ids


def test_engines_satisfy_the_protocol(loaded_engines: dict[str, Any]) -> None:
    for name, (engine, info) in loaded_engines.items():
        assert isinstance(engine, Engine)
        assert engine.name == name
        assert isinstance(info, LoadInfo)
        assert info.load_s > 0


def test_openvino_records_the_precision_in_force(loaded_engines: dict[str, Any]) -> None:
    _, info = loaded_engines["openvino"]
    assert info.details["inference_precision"] == "f32"
    # an f32 run also keeps the KV cache in f32 and quantises nothing on the fly
    assert info.details["kv_cache_precision"] == "f32"
    assert info.details["dynamic_quantization_group_size"] == "0"


def test_openvino_matches_torch_on_the_demo_prompts(loaded_engines: dict[str, Any]) -> None:
    # With OpenVINO's default f16 KV cache, 3 of these 32 prompts diverged from torch.
    from greenmon.workload import load_workload

    prompts = load_workload("gaissa-164", limit=32)
    torch_engine, _ = loaded_engines["torch"]
    openvino_engine, _ = loaded_engines["openvino"]
    for prompt in prompts:
        (expected,) = torch_engine.generate([prompt], 16)
        (got,) = openvino_engine.generate([prompt], 16)
        assert got.output_ids == expected.output_ids, prompt.prompt_id


class CountingExporter:
    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        self.real(*args, **kwargs)


@pytest.mark.parametrize("name", ["onnx", "openvino", "torchscript"])
def test_second_load_reuses_the_export(
    name: str, cache_dir: str, tiny: Any, loaded_engines: dict[str, Any]
) -> None:
    first_info = loaded_engines[name][1]
    probe = get_engine(name, cache_dir=cache_dir)
    exporter = CountingExporter(probe.exporter)  # type: ignore[attr-defined]
    engine = get_engine(name, cache_dir=cache_dir, exporter=exporter)
    info = engine.load(tiny, "cpu", {})
    try:
        assert info.export_cache_hit
        assert info.export_s == 0.0
        assert exporter.calls == 0
        assert info.details["export_dir"] == first_info.details["export_dir"]
        (record,) = engine.generate([PROMPTS[0]], 4)
        assert record.tokens_out == 4
    finally:
        engine.close()


def test_failed_export_is_an_engine_error_and_leaves_no_cache(tmp_path: Path, tiny: Any) -> None:
    def broken(model: Any, dest: Path) -> None:
        (dest / "partial.onnx").write_text("half")
        raise RuntimeError("exporter exploded")

    engine = get_engine("onnx", cache_dir=str(tmp_path), exporter=broken)
    with pytest.raises(EngineError, match="exporter exploded"):
        engine.load(tiny, "cpu", {})
    assert not list((tmp_path / "exports" / "onnx").iterdir())


def test_openvino_cuda_is_refused_with_the_reason(cache_dir: str, tiny: Any) -> None:
    reason = check_configuration("openvino", "cuda")
    assert reason is not None and "CUDA" in reason
    with pytest.raises(EngineError, match="no CUDA backend"):
        get_engine("openvino", cache_dir=cache_dir).load(tiny, "cuda", {})


def test_missing_provider_says_what_to_install(cache_dir: str, tiny: Any) -> None:
    reason = check_configuration("onnx", "cuda")
    if reason is None:
        pytest.skip("this machine can run onnx + cuda")
    with pytest.raises(EngineError, match="CUDAExecutionProvider"):
        get_engine("onnx", cache_dir=cache_dir).load(tiny, "cuda", {})


def test_unknown_engine_option_and_name_are_errors(cache_dir: str, tiny: Any) -> None:
    with pytest.raises(EngineError, match="no option 'beams'"):
        get_engine("torch", cache_dir=cache_dir).load(tiny, "cpu", {"beams": 4})
    with pytest.raises(EngineError, match="unknown engine"):
        get_engine("vllm")
    assert check_configuration("torch", "tpu") is not None


def test_missing_model_is_an_engine_error(cache_dir: str, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"not found|could not be found|no config\.json"):
        get_engine("torch", cache_dir=cache_dir).load(str(tmp_path), "cpu", {})
    with pytest.raises(EngineError):
        get_engine("torch", cache_dir=cache_dir).load("nobody/no-such-model-xyz", "cpu", {})


def test_empty_prompt_is_an_engine_error(loaded_engines: dict[str, Any]) -> None:
    engine, _ = loaded_engines["torch"]
    with pytest.raises(EngineError, match="empty"):
        engine.generate([Prompt("blank", "")], 2)


def test_describe_engines_covers_every_configuration() -> None:
    statuses = describe_engines()
    assert {(s.engine, s.provider) for s in statuses} == {
        (e, p)
        for e in (*CPU_ENGINES, "tensorflow", "mxnet")
        for p in ("cpu", "cuda", "tensorrt", "rocm")
    } | {("http", "<server>")}
    by_pair = {(s.engine, s.provider): s for s in statuses}
    assert all(by_pair[(e, "cpu")].usable for e in CPU_ENGINES)
    assert not by_pair[("openvino", "cuda")].usable
    assert by_pair[("torch", "cpu")].versions["torch"]


def test_describe_engines_without_a_gpu(tmp_path: Path) -> None:
    # An empty root has no NVIDIA driver: every GPU configuration says why it cannot run.
    for status in describe_engines(gpu_root=tmp_path):
        if status.provider not in ("cpu", "<server>"):
            assert not status.usable and status.reason


def test_engines_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from greenmon.cli import main

    assert main(["engines", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"engine", "provider", "usable", "reason", "versions"} <= set(rows[0])


def test_engine_modules_do_not_import_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "import greenmon.engines, greenmon.engines.torch_engine, greenmon.engines.onnx_engine\n"
        "import greenmon.engines.openvino_engine, greenmon.engines.torchscript_engine\n"
        "import greenmon.engines.tensorflow_engine, greenmon.engines.worker_engine\n"
        "import greenmon.engines.environments, greenmon.engines._classify\n"
        "import greenmon.models, greenmon.workload, greenmon.fidelity\n"
        "import greenmon.commands.engines\n"
        "heavy = {'torch', 'transformers', 'onnxruntime', 'openvino', 'optimum',\n"
        "         'tensorflow', 'mxnet', 'numpy'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
