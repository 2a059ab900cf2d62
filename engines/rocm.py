"""ROCm: the ``rocm`` provider of the torch and onnx engines, for AMD GPUs.

Terms:
- ``torch/rocm``: a ROCm build of PyTorch (version ``2.x+rocm6.y``, ``torch.version.hip``
  set).  It keeps CUDA's names: the device type is ``cuda`` and ``torch.cuda`` answers
  for the AMD GPUs (``HIP_VISIBLE_DEVICES`` or ``CUDA_VISIBLE_DEVICES`` choose them).
- ``onnx/rocm``: ONNX Runtime with ``MIGraphXExecutionProvider`` (AMD's onnxruntime
  builds for ROCm; ONNX Runtime 1.23 removed the older provider) or, in older builds,
  ``ROCMExecutionProvider``; the first of the two the installed onnxruntime has is used.
- *AMD GPU present*: ``/dev/kfd`` (the ROCm compute device) or a loaded ``amdgpu``
  module; read from the filesystem, so nothing heavy is imported to say no.

Written against PyTorch's and ONNX Runtime's documented ROCm APIs; never run on an AMD
GPU yet (the README says so).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

# ONNX Runtime's AMD providers, preferred first.
ORT_ROCM_PROVIDERS = ("MIGraphXExecutionProvider", "ROCMExecutionProvider")
TORCH_ROCM_INDEX = "https://download.pytorch.org/whl/rocm6.4"


def amd_gpu_present(root: Path = Path("/")) -> bool:
    """An AMD GPU with the amdgpu driver and ROCm's compute device (no library imported)."""
    return (root / "dev/kfd").exists() or (root / "sys/module/amdgpu").exists()


def ort_rocm_provider(available: Sequence[str]) -> str | None:
    """The AMD execution provider the installed onnxruntime has (None: neither)."""
    return next((p for p in ORT_ROCM_PROVIDERS if p in available), None)


def onnx_rocm_reason(available: Sequence[str]) -> str | None:
    if ort_rocm_provider(available) is not None:
        return None
    return (
        "ROCm requested but onnxruntime has neither MIGraphXExecutionProvider nor "
        f"ROCMExecutionProvider (available: {', '.join(available)}): install AMD's "
        "onnxruntime build for ROCm (onnxruntime-migraphx, from repo.radeon.com) in "
        "place of onnxruntime, on a machine with ROCm"
    )


def torch_rocm_build_reason(torch_version: str) -> str | None:
    """From the installed version alone: is torch a ROCm build?"""
    if "+rocm" in torch_version:
        return None
    return (
        f"ROCm requested but torch {torch_version or '(not installed)'} is not a ROCm build: "
        f"install one (`pip install torch --index-url {TORCH_ROCM_INDEX}`)"
    )


def torch_rocm_runtime_reason() -> str | None:
    """With torch imported: a HIP build that sees an AMD GPU (torch.cuda answers for it)."""
    import torch

    if getattr(torch.version, "hip", None) is None:
        return f"ROCm requested but torch {torch.__version__} was not built with HIP"
    if not torch.cuda.is_available():
        return (
            f"ROCm requested but torch {torch.__version__} sees no AMD GPU (check "
            "HIP_VISIBLE_DEVICES and that this user may open /dev/kfd: the `render` group)"
        )
    return None


def check_rocm(
    engine: str,
    torch_version: str,
    ort_providers: Callable[[], list[str]],
    gpu_root: Path = Path("/"),
) -> str | None:
    """Why ``engine``/rocm cannot run here (None: it can).  The library's answer first:
    it says what to install even on a machine without the GPU."""
    if engine == "onnx":
        reason = onnx_rocm_reason(ort_providers())
    else:
        reason = torch_rocm_build_reason(torch_version)
    if reason:
        return reason
    if not amd_gpu_present(gpu_root):
        return "ROCm requested but no AMD GPU or amdgpu driver is present here (no /dev/kfd)"
    return None if engine == "onnx" else torch_rocm_runtime_reason()


def torch_rocm_device() -> str:
    """The torch device for ``rocm``: ``cuda``, which a ROCm build maps to the AMD GPUs."""
    from greenmon.errors import EngineError

    reason = torch_rocm_runtime_reason()
    if reason:
        raise EngineError(reason, title="Provider not available")
    return "cuda"
