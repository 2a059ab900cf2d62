"""CUDA and TensorRT paths: run only where an NVIDIA GPU and the GPU libraries are present."""

from __future__ import annotations

from typing import Any

import pytest
from engine_cases import NEW_TOKENS, PROMPTS

from greenmon.engines import check_configuration, get_engine

GPU_CONFIGURATIONS = [
    ("torch", "cuda"),
    ("onnx", "cuda"),
    ("onnx", "tensorrt"),
    ("torchscript", "cuda"),
]


@pytest.mark.gpu
@pytest.mark.parametrize(("name", "provider"), GPU_CONFIGURATIONS)
def test_gpu_engine_matches_cpu_reference(
    name: str, provider: str, cache_dir: str, tiny: Any, outputs: dict[str, Any]
) -> None:
    reason = check_configuration(name, provider)
    if reason:
        pytest.skip(reason)
    engine = get_engine(name, cache_dir=cache_dir)
    info = engine.load(tiny, provider, {})
    try:
        records = engine.generate(list(PROMPTS), NEW_TOKENS)
    finally:
        engine.close()
    assert all(r.tokens_out == NEW_TOKENS for r in records)
    if name == "onnx":
        assert info.details["io_binding"] is True
    # Different kernels may round differently; on the tiny model's wide logits they agree.
    assert [r.output_ids for r in records] == [r.output_ids for r in outputs["torch"]]
