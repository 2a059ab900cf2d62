"""The ``onnx`` engine: ONNX Runtime through optimum-onnx's ``ORTModelForCausalLM``
(decoders), ``ORTModelForSeq2SeqLM`` (encoder-decoders: an encoder graph and a decoder
graph with past key values, exported together), ``ORTModelForSequenceClassification`` or
``ORTModelForImageClassification`` (classifiers: one forward pass per batch).

Providers: ``cpu`` (CPUExecutionProvider), ``cuda`` (CUDAExecutionProvider, with IO binding
so the KV cache stays on the GPU), ``tensorrt`` (TensorrtExecutionProvider, CUDA as the
fallback for nodes TensorRT does not take, engine cache under greenmon's cache), ``rocm``
(MIGraphXExecutionProvider or ROCMExecutionProvider on AMD GPUs: engines/rocm.py).
Options: ``graph_optimization_level`` (``disable``, ``basic``, ``extended``, ``all``;
default ``all``, ONNX Runtime's own default), ``threads`` (intra-op threads).

The ONNX export (a decoder with past key values) is made once per model and cached; graph
optimisation happens when the session is created, so it is part of ``load_s``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from greenmon.engines._cache import Exporter, cached_export, library_versions
from greenmon.engines._classify import (
    Preprocessor,
    is_classifier,
    load_preprocessor,
    optimum_classify,
)
from greenmon.engines._common import (
    as_model,
    check_options,
    check_provider,
    hf_generate,
    load_tokenizer,
)
from greenmon.engines.base import LoadInfo, Prompt, RequestRecord, StopCheck
from greenmon.engines.onnx_providers import ORT_PROVIDERS, missing_provider_reason
from greenmon.engines.rocm import ORT_ROCM_PROVIDERS, ort_rocm_provider
from greenmon.errors import EngineError
from greenmon.models import ModelInfo, cache_root, model_architecture

OPTIONS: dict[str, object] = {"graph_optimization_level": "all", "threads": None}
GRAPH_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
EXPORT_LIBRARIES = ("optimum-onnx", "optimum", "transformers", "torch", "onnx")


EXPORT_TASKS = {
    "decoder": "text-generation-with-past",
    "encoder-decoder": "text2text-generation-with-past",
    "text-classifier": "text-classification",
    "image-classifier": "image-classification",
}
ORT_CLASSES = {
    "decoder": "ORTModelForCausalLM",
    "encoder-decoder": "ORTModelForSeq2SeqLM",
    "text-classifier": "ORTModelForSequenceClassification",
    "image-classifier": "ORTModelForImageClassification",
}


def export_onnx(model: ModelInfo, dest: Path) -> None:
    """Export a causal or seq2seq LM with past key values, or a classifier, to ONNX in
    ``dest``."""
    from optimum.exporters.onnx import main_export

    # Validation against PyTorch is skipped: greenmon's fidelity check compares every
    # unit's tokens with the torch reference, which is the comparison that matters.
    main_export(
        str(model.path),
        output=dest,
        task=EXPORT_TASKS[model_architecture(model.path)],
        do_validation=False,
        local_files_only=True,
    )


def ort_provider(provider: str, available: Sequence[str]) -> str:
    """ONNX Runtime's provider name for greenmon's ``provider`` (rocm: the one installed)."""
    if provider == "rocm":
        return ort_rocm_provider(available) or ORT_ROCM_PROVIDERS[0]
    return ORT_PROVIDERS[provider]


class OnnxEngine:
    name: ClassVar[str] = "onnx"
    providers: ClassVar[tuple[str, ...]] = ("cpu", "cuda", "tensorrt", "rocm")
    stoppable: ClassVar[bool] = True

    def __init__(self, cache_dir: str | None = None, exporter: Exporter = export_onnx) -> None:
        self.cache_dir = cache_dir
        self.exporter = exporter
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = "cpu"
        self._pre: Preprocessor | None = None

    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo:
        opts = self._checked(provider, options)
        import onnxruntime

        info = as_model(model, self.cache_dir)
        export = cached_export(
            info, self.name, {}, library_versions(*EXPORT_LIBRARIES), self.exporter,
            cache_dir=self.cache_dir,
        )
        import optimum.onnxruntime

        architecture = model_architecture(info.path)
        ort_class = getattr(optimum.onnxruntime, ORT_CLASSES[architecture])

        session_options = _session_options(onnxruntime, opts)
        provider_options = self._provider_options(provider, export.key)
        # ROCm builds of ONNX Runtime and torch name the AMD GPU's device "cuda" too.
        gpu = provider in ("cuda", "tensorrt", "rocm")
        start_s = time.perf_counter()
        try:
            if is_classifier(architecture):
                self._pre = load_preprocessor(info, architecture)
            else:
                self._tokenizer = load_tokenizer(info)
            self._model = ort_class.from_pretrained(
                export.path,
                provider=ort_provider(provider, onnxruntime.get_available_providers()),
                provider_options=provider_options,
                session_options=session_options,
                use_io_binding=gpu,
                local_files_only=True,
            )
        except Exception as error:  # onnxruntime raises its own Fail/RuntimeException types
            raise EngineError(
                f"ONNX Runtime could not load {info.spec} on {provider}: {error}",
                title="Model not loadable",
            ) from error
        load_s = time.perf_counter() - start_s
        self._device = "cuda" if gpu else "cpu"
        # A seq2seq model holds an encoder and a decoder session; both use one provider.
        session = getattr(self._model, "session", None) or self._model.decoder.session
        return LoadInfo(
            export_s=export.export_s,
            load_s=load_s,
            export_cache_hit=export.cache_hit,
            details={
                "architecture": architecture,
                "session_providers": list(session.get_providers()),
                "graph_optimization_level": opts["graph_optimization_level"],
                "io_binding": bool(self._model.use_io_binding),
                "threads": opts["threads"],
                "export_dir": str(export.path),
                "model_fingerprint": info.fingerprint,
            },
        )

    def _checked(self, provider: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """The engine's options, checked, once the provider is known to be usable here."""
        check_provider(self.name, provider, self.providers)
        opts = check_options(self.name, options, OPTIONS)
        if opts["graph_optimization_level"] not in GRAPH_LEVELS:
            raise EngineError(
                f"graph_optimization_level {opts['graph_optimization_level']!r} is not one of "
                f"{', '.join(GRAPH_LEVELS)}",
                title="Unknown engine option",
            )
        import onnxruntime

        reason = missing_provider_reason(provider, onnxruntime.get_available_providers())
        if reason:
            raise EngineError(reason, title="Provider not available")
        return opts

    def _provider_options(self, provider: str, export_key: str) -> dict[str, Any] | None:
        """TensorRT keeps its built engines beside the export (one folder per export)."""
        if provider != "tensorrt":
            return None
        trt_cache = cache_root(self.cache_dir) / "tensorrt" / export_key
        trt_cache.mkdir(parents=True, exist_ok=True)
        return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache)}

    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int, stop: StopCheck | None = None
    ) -> list[RequestRecord]:
        if self._model is None:
            raise EngineError("generate called before load", title="Engine not loaded")
        if self._pre is not None:
            return optimum_classify(self._model, self._pre, prompts, self._device)
        return hf_generate(
            self._model, self._tokenizer, prompts, max_new_tokens, self._device, stop=stop
        )

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
        self._pre = None


Engine = OnnxEngine


def _session_options(onnxruntime: Any, opts: Mapping[str, Any]) -> Any:
    """ONNX Runtime's session options from the engine's options (graph level, threads)."""
    session_options = onnxruntime.SessionOptions()
    session_options.graph_optimization_level = getattr(
        onnxruntime.GraphOptimizationLevel, GRAPH_LEVELS[opts["graph_optimization_level"]]
    )
    if opts["threads"] is not None:
        session_options.intra_op_num_threads = int(opts["threads"])
    return session_options
