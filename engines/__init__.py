"""Runtime engines by name, loaded lazily, and what can run on this machine.

Terms:
- *engine*: ``torch``, ``onnx``, ``openvino``, ``torchscript``, ``tensorflow``, ``mxnet``;
  each lives in its own module that is imported only when the engine is chosen, so a
  missing library costs nothing until then.  ``SPECS`` holds one ``EngineSpec`` per engine:
  everything known of it without importing it.
- *provider*: ``cpu``, ``cuda``, ``tensorrt`` (onnx only), ``rocm`` (torch and onnx on
  AMD GPUs: engines/rocm.py).
- *architecture*: ``decoder`` (causal LM), ``encoder-decoder`` (seq2seq LM, e.g. T5),
  ``text-classifier`` or ``image-classifier``; a spec says which each engine serves, and
  what is known of each provider x architecture (the GPU paths are written against the
  libraries' documented classes but cannot be run on a machine without a GPU).
- *own environment*: ``mxnet`` needs numpy < 1.24, so it runs in a virtual environment of
  its own (``greenmon engines install mxnet``), in a worker process greenmon drives over
  a pipe (greenmon/engines/worker_engine.py).
- *configuration check*: ``check_configuration(engine, provider)`` returns the reason a
  configuration cannot run here, or None.  It reads installed versions from package
  metadata and looks for an NVIDIA device in /proc and /dev before importing anything
  heavy; torch is imported only to confirm CUDA once a GPU and a CUDA build are present.
- *served engine*: ``http``, whose "provider" is the name of a plan's
  ``[servers.<name>]`` table (``http/greenmon-serve``); it needs only aiohttp here, the
  server brings its own runtime.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from greenmon.engines.base import Engine
from greenmon.engines.rocm import check_rocm
from greenmon.errors import EngineError

# With TensorFlow installed (greenmon[tensorflow]), transformers would import it into every
# engine's process (its tensor-type checks do), costing seconds and memory in units that
# never use it.  The tensorflow engine runs in a worker process that turns it back on.
os.environ.setdefault("USE_TF", "0")

_ONNX_ONLY = "TensorRT is an ONNX Runtime execution provider; use engine onnx"
_NOT_RUN_GPU = "written against the library's documented classes; never run on a GPU yet"
_NOT_RUN_ROCM = "written against the library's documented ROCm API; never run on an AMD GPU yet"
_LMS = ("decoder", "encoder-decoder")
_CLASSIFIERS = ("text-classifier", "image-classifier")


@dataclass(frozen=True)
class EngineSpec:
    """Everything greenmon knows of one engine without importing it.

    ``architectures`` is what each provider serves; ``notes`` says what is known of a
    (provider, architecture) pair ("" where nothing needs saying); ``impossible`` the
    reason a provider can never work with this engine; ``environment`` is ``"own"`` when
    the engine runs in a worker process of its own virtual environment
    (``greenmon engines install <name>``), else ``"greenmon"``.
    """

    module: str
    class_name: str
    providers: tuple[str, ...]
    requirements: tuple[str, ...]  # distributions it needs
    install: str  # what installs them
    architectures: tuple[str, ...] = ()
    notes: dict[tuple[str, str], str] = field(default_factory=dict)
    impossible: dict[str, str] = field(default_factory=dict)
    served: bool = False  # its "provider" is a server named in the plan
    environment: str = "greenmon"


def _gpu_notes(providers: tuple[str, ...], architectures: tuple[str, ...]) -> dict[
    tuple[str, str], str
]:
    return {(p, a): _NOT_RUN_GPU for p in providers for a in architectures}


def _rocm_notes(architectures: tuple[str, ...]) -> dict[tuple[str, str], str]:
    return {("rocm", a): _NOT_RUN_ROCM for a in architectures}


SPECS: dict[str, EngineSpec] = {
    "torch": EngineSpec(
        "greenmon.engines.torch_engine", "TorchEngine", ("cpu", "cuda", "rocm"),
        ("torch", "transformers"), "greenmon[cpu]", (*_LMS, *_CLASSIFIERS),
        notes={
            **_gpu_notes(("cuda",), ("encoder-decoder", *_CLASSIFIERS)),
            **_rocm_notes((*_LMS, *_CLASSIFIERS)),
        },
        impossible={"tensorrt": _ONNX_ONLY},
    ),
    "onnx": EngineSpec(
        "greenmon.engines.onnx_engine", "OnnxEngine", ("cpu", "cuda", "tensorrt", "rocm"),
        ("torch", "transformers", "optimum-onnx", "onnxruntime"), "greenmon[cpu]",
        (*_LMS, *_CLASSIFIERS),
        notes={
            **_gpu_notes(("cuda", "tensorrt"), ("encoder-decoder", *_CLASSIFIERS)),
            **_rocm_notes((*_LMS, *_CLASSIFIERS)),
        },
    ),
    "openvino": EngineSpec(
        "greenmon.engines.openvino_engine", "OpenvinoEngine", ("cpu",),
        ("torch", "transformers", "optimum-intel", "openvino"), "greenmon[cpu]",
        (*_LMS, *_CLASSIFIERS),
        notes={
            ("cpu", "encoder-decoder"): (
                "stateless decoder (past key values as inputs): optimum-intel 1.27's "
                "stateful seq2seq export fails on T5"
            ),
        },
        impossible={
            "cuda": (
                "OpenVINO has no CUDA backend: it runs on Intel CPUs, GPUs and NPUs only; "
                "use the torch or onnx engine for cuda"
            ),
            "tensorrt": _ONNX_ONLY,
            "rocm": (
                "OpenVINO has no ROCm backend: it runs on Intel CPUs, GPUs and NPUs only; "
                "use the torch or onnx engine for rocm"
            ),
        },
    ),
    "torchscript": EngineSpec(
        "greenmon.engines.torchscript_engine", "TorchscriptEngine", ("cpu", "cuda"),
        ("torch", "transformers"), "greenmon[cpu]", (*_LMS, *_CLASSIFIERS),
        notes={
            ("cpu", "decoder"): "no KV cache: the whole sequence is re-run each step",
            ("cpu", "encoder-decoder"): (
                "encoder once, decoder re-run over the whole decoder sequence each step "
                "(no KV cache)"
            ),
            **_gpu_notes(("cuda",), ("encoder-decoder", *_CLASSIFIERS)),
        },
        impossible={"tensorrt": _ONNX_ONLY},
    ),
    "tensorflow": EngineSpec(
        "greenmon.engines.worker_engine", "TensorflowEngine", ("cpu", "cuda"),
        ("tensorflow-cpu", "tf-keras", "transformers", "torch"), "greenmon[tensorflow]",
        ("decoder", *_CLASSIFIERS),
        notes={
            ("cpu", "decoder"): (
                "architectures with a TF class only (GPT-2, Mistral...; no TF Llama, so "
                "not the built-in tiny); no encoder-decoder (TF T5 generation not wired)"
            ),
            **_gpu_notes(("cuda",), ("decoder", *_CLASSIFIERS)),
        },
        impossible={"tensorrt": _ONNX_ONLY},
    ),
    "mxnet": EngineSpec(
        "greenmon.engines.worker_engine", "MxnetEngine", ("cpu",),
        ("mxnet", "numpy", "onnx"), "greenmon engines install mxnet", _CLASSIFIERS,
        notes={
            ("cpu", "text-classifier"): (
                "BERT only, in MXNet operators with the weights carried over: MXNet's ONNX "
                "importer lacks LayerNormalization, Erf, Where, Expand and ConstantOfShape"
            ),
            ("cpu", "image-classifier"): (
                "the ONNX export imported by mxnet.contrib.onnx; a load names any operator "
                "MXNet lacks"
            ),
        },
        impossible={
            "cuda": (
                "greenmon's MXNet environment is the CPU build (mxnet 1.9.1, the last "
                "release); use torch, onnx or tensorflow for cuda"
            ),
            "tensorrt": _ONNX_ONLY,
        },
        environment="own",
    ),
    "http": EngineSpec(
        "greenmon.engines.http_engine", "HttpEngine", (), ("aiohttp",), "greenmon",
        served=True,
    ),
}
ALL_PROVIDERS = ("cpu", "cuda", "tensorrt", "rocm")
# Views kept for callers that read one aspect of every engine.
ENGINES: dict[str, tuple[str, str]] = {n: (s.module, s.class_name) for n, s in SPECS.items()}
SERVED_ENGINES = tuple(n for n, s in SPECS.items() if s.served)
PROVIDERS: dict[str, tuple[str, ...]] = {
    n: s.providers for n, s in SPECS.items() if not s.served
}
REQUIREMENTS: dict[str, tuple[str, ...]] = {n: s.requirements for n, s in SPECS.items()}
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    n: s.architectures for n, s in SPECS.items() if not s.served
}
IMPOSSIBLE: dict[tuple[str, str], str] = {
    (n, p): reason for n, s in SPECS.items() for p, reason in s.impossible.items()
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
            f"engine {name!r} cannot be imported: {error}; install {SPECS[name].install}",
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


# A distribution that stands in for a required one (tensorflow's full build, with CUDA,
# for the CPU-only tensorflow-cpu).
_ALTERNATIVES = {"tensorflow-cpu": ("tensorflow",)}


def engine_versions(engine: str) -> dict[str, str | None]:
    """The versions of an engine's libraries: greenmon's environment's, or for an engine
    with an environment of its own, what its install recorded (None: absent)."""
    spec = SPECS[engine]
    if spec.environment == "own":
        from greenmon.engines.environments import recorded_versions

        recorded = recorded_versions(engine)
        return {d: recorded.get(d) for d in spec.requirements}
    versions: dict[str, str | None] = {}
    for distribution in spec.requirements:
        version = _version(distribution)
        for alternative in _ALTERNATIVES.get(distribution, ()) if version is None else ():
            version = _version(alternative)
            if version is not None:
                distribution = alternative
                break
        versions[distribution] = version
    return versions


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
    versions = engine_versions(engine)
    missing = [d for d, v in versions.items() if v is None]
    if missing:
        where = "its environment lacks" if SPECS[engine].environment == "own" else "needs"
        return f"{engine} {where} {', '.join(missing)}: {SPECS[engine].install}"
    if provider == "cpu":
        return None
    if provider == "rocm":
        return check_rocm(engine, _version("torch") or "", _onnxruntime_providers, gpu_root)
    # The library's own answer comes first: it says what to install, which a person can act
    # on even before they move to a machine with a GPU.
    if engine == "onnx":
        from greenmon.engines.onnx_providers import missing_provider_reason

        reason = missing_provider_reason(provider, _onnxruntime_providers())
    elif engine == "tensorflow":
        reason = _tensorflow_build_reason(versions)
    else:
        reason = _torch_build_reason()
    if reason:
        return reason
    if not nvidia_gpu_present(gpu_root):
        return f"{_label(provider)} requested but no NVIDIA GPU or driver is present here"
    if engine == "tensorflow":
        return _tensorflow_cuda_reason()
    return None if engine == "onnx" else _torch_cuda_reason()


def _tensorflow_build_reason(versions: dict[str, str | None]) -> str | None:
    if "tensorflow-cpu" in versions:
        return (
            f"CUDA requested but tensorflow-cpu {versions['tensorflow-cpu']} has no GPU "
            "support: install tensorflow[and-cuda] (same version) instead"
        )
    return None


def _tensorflow_cuda_reason() -> str | None:
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return f"CUDA requested but tensorflow {tf.__version__} sees no GPU"
    return None


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
    for engine, spec in SPECS.items():
        versions = engine_versions(engine)
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
                architecture: spec.notes.get((provider, architecture), "")
                for architecture in (spec.architectures if possible else ())
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
    "SPECS",
    "ConfigurationStatus",
    "EngineSpec",
    "check_configuration",
    "describe_engines",
    "get_engine",
]
