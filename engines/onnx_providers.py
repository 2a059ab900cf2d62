"""ONNX Runtime's execution providers by greenmon's provider names, and why one is missing.

A leaf module: the engine registry (engines/__init__.py) asks it whether a configuration
can run here without importing the ONNX engine, whose helpers import the registry back.
"""

from __future__ import annotations

from collections.abc import Sequence

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def missing_provider_reason(provider: str, available: Sequence[str]) -> str | None:
    """Why ``provider`` cannot run given onnxruntime's available providers, or None."""
    if provider == "rocm":
        from greenmon.engines.rocm import onnx_rocm_reason

        return onnx_rocm_reason(available)
    wanted = ORT_PROVIDERS[provider]
    if wanted in available:
        return None
    return (
        f"{'CUDA' if provider == 'cuda' else 'TensorRT'} requested but onnxruntime "
        f"has no {wanted} (available: {', '.join(available)}): install greenmon[gpu] "
        "(onnxruntime-gpu) on a machine with an NVIDIA GPU"
    )
