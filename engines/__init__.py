"""Runtime engines by name, loaded lazily, and what can run on this machine.

Terms:
- *engine*: ``torch``, ``onnx``, ``openvino``, ``torchscript``; each lives in its own module
  that is imported only when the engine is chosen, so a missing library costs nothing until
  then.
- *provider*: ``cpu``, ``cuda``, ``tensorrt`` (onnx only), ``rocm`` (torch and onnx on
  AMD GPUs: engines/rocm.py).
- *architecture*: ``decoder`` (causal LM) or ``encoder-decoder`` (seq2seq LM, e.g. T5);
  ``ARCHITECTURES`` says which each engine x provider serves, and ``ARCHITECTURE_NOTES``
  what is known of each (the GPU paths are written against the libraries' documented
  classes but cannot be run on a machine without a GPU).
- *configuration check*: ``check_configuration(engine, provider)`` returns the reason a
  configuration cannot run here, or None.  It reads installed versions from package
  metadata and looks for an NVIDIA device in /proc and /dev before importing anything
  heavy; torch is imported only to confirm CUDA once a GPU and a CUDA build are present.
- *served engine* (issue 16): ``http``, whose "provider" is the name of a plan's
  ``[servers.<name>]`` table (``http/greenmon-serve``); it needs only aiohttp here, the
  server brings its own runtime.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from greenmon.engines.base import Engine
from greenmon.engines.rocm import check_rocm
from greenmon.errors import EngineError

# engine name -> (module, class name)
ENGINES: dict[str, tuple[str, str]] = {
    "torch": ("greenmon.engines.torch_engine", "TorchEngine"),
    "onnx": ("greenmon.engines.onnx_engine", "OnnxEngine"),
    "openvino": ("greenmon.engines.openvino_engine", "OpenvinoEngine"),
    "torchscript": ("greenmon.engines.torchscript_engine", "TorchscriptEngine"),
    "http": ("greenmon.engines.http_engine", "HttpEngine"),
}
# Engines whose provider is a server name from the plan, not one of ALL_PROVIDERS.
SERVED_ENGINES = ("http",)
# Kept here rather than read from the classes so that checking a plan imports nothing.
PROVIDERS: dict[str, tuple[str, ...]] = {
    "torch": ("cpu", "cuda", "rocm"),
    "onnx": ("cpu", "cuda", "tensorrt", "rocm"),
    "openvino": ("cpu",),
    "torchscript": ("cpu", "cuda"),
}
ALL_PROVIDERS = ("cpu", "cuda", "tensorrt", "rocm")
# Distributions each engine needs, and the extra that installs them.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "torch": ("torch", "transformers"),
    "onnx": ("torch", "transformers", "optimum-onnx", "onnxruntime"),
    "openvino": ("torch", "transformers", "optimum-intel", "openvino"),
    "torchscript": ("torch", "transformers"),
    "http": ("aiohttp",),
}
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "torch": ("decoder", "encoder-decoder"),  # AutoModelForCausalLM / AutoModelForSeq2SeqLM
    "onnx": ("decoder", "encoder-decoder"),  # ORTModelForCausalLM / ORTModelForSeq2SeqLM
    "openvino": ("decoder", "encoder-decoder"),  # OVModelForCausalLM / OVModelForSeq2SeqLM
    "torchscript": ("decoder", "encoder-decoder"),  # traced step / traced encoder + decoder
}
_UNTESTED_GPU = (
    "written against the library's documented seq2seq class; never run on a GPU yet"
)
_UNTESTED_ROCM = "written against the library's documented ROCm API; never run on an AMD GPU yet"
ARCHITECTURE_NOTES: dict[tuple[str, str, str], str] = {
    ("openvino", "cpu", "encoder-decoder"): (
        "stateless decoder (past key values as inputs): optimum-intel 1.27's stateful "
        "seq2seq export fails on T5"
    ),
    ("torchscript", "cpu", "decoder"): "no KV cache: the whole sequence is re-run each step",
    ("torchscript", "cpu", "encoder-decoder"): (
        "encoder once, decoder re-run over the whole decoder sequence each step (no KV cache)"
    ),
    **{
        (engine, provider, architecture): _UNTESTED_GPU
        for engine, provider in (
            ("torch", "cuda"), ("onnx", "cuda"), ("onnx", "tensorrt"), ("torchscript", "cuda")
        )
        for architecture in ("encoder-decoder",)
    },
    **{
        (engine, "rocm", architecture): _UNTESTED_ROCM
        for engine in ("torch", "onnx")
        for architecture in ("decoder", "encoder-decoder")
    },
}
IMPOSSIBLE: dict[tuple[str, str], str] = {
    ("openvino", "cuda"): (
        "OpenVINO has no CUDA backend: it runs on Intel CPUs, GPUs and NPUs only; "
        "use the torch or onnx engine for cuda"
    ),
    ("openvino", "tensorrt"): "TensorRT is an ONNX Runtime execution provider; use engine onnx",
    ("torch", "tensorrt"): "TensorRT is an ONNX Runtime execution provider; use engine onnx",
    ("torchscript", "tensorrt"): (
        "TensorRT is an ONNX Runtime execution provider; use engine onnx"
    ),
    ("openvino", "rocm"): (
        "OpenVINO has no ROCm backend: it runs on Intel CPUs, GPUs and NPUs only; "
        "use the torch or onnx engine for rocm"
    ),
}


def get_engine(name: str, **kwargs: Any) -> Engine:
    """A new, unloaded engine; ``kwargs`` go to its constructor (e.g. ``cache_dir``)."""
    if name not in ENGINES:
        raise EngineError(
            f"unknown engine {name!r}; known engines: {', '.join(ENGINES)}",
            title="Unknown engine",
        )
    module_name, class_name = ENGINES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise EngineError(
            f"engine {name!r} cannot be imported: {error}; install greenmon[cpu]",
            title="Engine not installed",
        ) from error
    engine: Engine = getattr(module, class_name)(**kwargs)
    return engine


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def nvidia_gpu_present(root: Path = Path("/")) -> bool:
    """An NVIDIA driver and device node exist (no library imported)."""
    return (root / "proc/driver/nvidia/version").exists() or (root / "dev/nvidia0").exists()


def _onnxruntime_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def _torch_build_reason() -> str | None:
    torch_version = _version("torch") or ""
    if "+cpu" in torch_version:
        return (
            f"CUDA requested but torch {torch_version} is the CPU build: "
            "install a CUDA build of torch"
        )
    return None


def _torch_cuda_reason() -> str | None:
    torch_version = _version("torch") or ""
    import torch

    if not torch.cuda.is_available():
        return f"CUDA requested but torch {torch_version} sees no usable CUDA device"
    return None


def check_configuration(
    engine: str, provider: str, *, gpu_root: Path = Path("/")
) -> str | None:
    """The reason (engine, provider) cannot run on this machine, or None when it can."""
    if engine not in ENGINES:
        return f"unknown engine {engine!r}; known engines: {', '.join(ENGINES)}"
    if engine in SERVED_ENGINES:
        missing = [d for d in REQUIREMENTS[engine] if _version(d) is None]
        return f"{engine} needs {', '.join(missing)}" if missing else None
    if provider not in ALL_PROVIDERS:
        return f"unknown provider {provider!r}; known providers: {', '.join(ALL_PROVIDERS)}"
    if (engine, provider) in IMPOSSIBLE:
        return IMPOSSIBLE[(engine, provider)]
    if provider not in PROVIDERS[engine]:
        return f"engine {engine} does not support provider {provider}"
    missing = [d for d in REQUIREMENTS[engine] if _version(d) is None]
    if missing:
        return f"{engine} needs {', '.join(missing)}: install greenmon[cpu]"
    if provider == "cpu":
        return None
    if provider == "rocm":
        return check_rocm(engine, _version("torch") or "", _onnxruntime_providers, gpu_root)
    # The library's own answer comes first: it says what to install, which a person can act
    # on even before they move to a machine with a GPU.
    if engine == "onnx":
        from greenmon.engines.onnx_providers import missing_provider_reason

        reason = missing_provider_reason(provider, _onnxruntime_providers())
    else:
        reason = _torch_build_reason()
    if reason:
        return reason
    if not nvidia_gpu_present(gpu_root):
        return f"{_label(provider)} requested but no NVIDIA GPU or driver is present here"
    return None if engine == "onnx" else _torch_cuda_reason()


def _label(provider: str) -> str:
    return {"cuda": "CUDA", "tensorrt": "TensorRT", "rocm": "ROCm"}.get(provider, provider)


@dataclass(frozen=True)
class ConfigurationStatus:
    """One engine x provider on this machine."""

    engine: str
    provider: str
    usable: bool
    reason: str | None
    versions: dict[str, str | None] = field(default_factory=dict)
    # architecture -> what is known of serving it here ("" where nothing needs saying)
    architectures: dict[str, str] = field(default_factory=dict)


def describe_engines(*, gpu_root: Path = Path("/")) -> list[ConfigurationStatus]:
    """Every engine x provider: usable here or not, why, and the library versions involved."""
    statuses = []
    for engine in ENGINES:
        versions = {d: _version(d) for d in REQUIREMENTS[engine]}
        if engine in SERVED_ENGINES:
            # One row: the server, named in a plan's [servers.<name>], is the provider.
            reason = check_configuration(engine, "<server>")
            statuses.append(
                ConfigurationStatus(engine, "<server>", reason is None, reason, versions)
            )
            continue
        if engine == "onnx":
            versions["onnxruntime-gpu"] = _version("onnxruntime-gpu")
        for provider in ALL_PROVIDERS:
            reason = check_configuration(engine, provider, gpu_root=gpu_root)
            possible = (engine, provider) not in IMPOSSIBLE and provider in PROVIDERS[engine]
            architectures = {
                architecture: ARCHITECTURE_NOTES.get((engine, provider, architecture), "")
                for architecture in (ARCHITECTURES[engine] if possible else ())
            }
            statuses.append(
                ConfigurationStatus(
                    engine, provider, reason is None, reason, versions, architectures
                )
            )
    return statuses


__all__ = [
    "ARCHITECTURES",
    "ENGINES",
    "PROVIDERS",
    "SERVED_ENGINES",
    "ConfigurationStatus",
    "check_configuration",
    "describe_engines",
    "get_engine",
]
