"""The ``openvino`` engine: OpenVINO through optimum-intel's ``OVModelForCausalLM``
(decoders), ``OVModelForSeq2SeqLM`` (encoder-decoders), ``OVModelForSequenceClassification``
or ``OVModelForImageClassification`` (classifiers: one forward pass per batch).

Provider: ``cpu`` (OpenVINO device ``CPU``).  OpenVINO has no CUDA backend, so
openvino + cuda is refused with that reason.
Options: ``inference_precision`` (OpenVINO's ``INFERENCE_PRECISION_HINT``; default ``f32``
because on CPUs with AMX or AVX512-BF16 OpenVINO otherwise runs in bf16, and its tokens
then drift from the float32 reference), ``threads`` (``INFERENCE_NUM_THREADS``),
``performance_hint`` (``LATENCY`` default, or ``THROUGHPUT``).
The precision the compiled model actually uses is read back and recorded in
``LoadInfo.details["inference_precision"]``.

The OpenVINO IR (stateful: the KV cache lives inside the infer request) is exported once
per model and cached.  Weights are exported uncompressed: optimum-intel compresses models
above 1 B parameters to int8 by default, which would make this a different model.
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
from greenmon.errors import EngineError
from greenmon.models import ModelInfo, model_architecture

OPTIONS: dict[str, object] = {
    "inference_precision": "f32",
    "threads": None,
    "performance_hint": "LATENCY",
}
PRECISIONS = ("f32", "bf16", "f16")
EXPORT_LIBRARIES = ("optimum-intel", "optimum", "openvino", "transformers", "torch")
CUDA_REASON = (
    "OpenVINO has no CUDA backend: it runs on Intel CPUs, GPUs and NPUs only; "
    "use the torch or onnx engine for cuda"
)


# Why greenmon calls optimum-intel's exporter and loader directly, not
# ``OVModelFor*.from_pretrained``: that method first guesses whether its argument
# is already an OpenVINO IR, and with ``local_files_only`` (which HF_HUB_OFFLINE forces) it
# takes every argument for a hub id in the Hugging Face cache.  A local folder then fails
# the guess (a Path: "Path.replace() takes 2 positional arguments"; a str: no refs file in
# the hub cache), and every export and every load printed "Could not infer whether the
# model was already converted".  optimum-onnx fixed the same guess for local folders;
# optimum-intel 1.27.0 has not.  greenmon knows what each folder holds (a model to
# export, or its export-cache entry), so nothing needs guessing.


OV_CLASSES = {
    "decoder": "OVModelForCausalLM",
    "encoder-decoder": "OVModelForSeq2SeqLM",
    "text-classifier": "OVModelForSequenceClassification",
    "image-classifier": "OVModelForImageClassification",
}
EXPORT_TASKS = {
    "decoder": "text-generation-with-past",
    "encoder-decoder": "text2text-generation-with-past",
    "text-classifier": "text-classification",
    "image-classifier": "image-classification",
}


def ov_model_class(model_path: Path) -> Any:
    """optimum-intel's class for the model's architecture."""
    import optimum.intel

    return getattr(optimum.intel, OV_CLASSES[model_architecture(model_path)])


def export_openvino(model: ModelInfo, dest: Path) -> None:
    """Export a causal or seq2seq LM, or a classifier, to an OpenVINO IR in ``dest``
    (float weights)."""
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    architecture = model_architecture(model.path)
    main_export(
        model_name_or_path=str(model.path),
        output=dest,
        task=EXPORT_TASKS[architecture],
        # dtype "auto" keeps the weights as the model stores them; without an OVConfig
        # optimum-intel compresses models above 1 B parameters to int8.  (This is what
        # from_pretrained(export=True, load_in_8bit=False) passes.)
        ov_config=OVConfig(dtype="auto"),
        # optimum-intel 1.27's stateful seq2seq export fails on T5 ("Attempt to get a name
        # for a Tensor without names" in patch_stateful_encoder_decoder, OpenVINO 2026.4):
        # the stateless decoder passes past key values as inputs and outputs instead.
        stateful=architecture == "decoder",
        local_files_only=True,
        library_name="transformers",
    )


def load_openvino(path: Path, ov_config: Mapping[str, str]) -> Any:
    """The exported IR in ``path`` (an export-cache entry), compiled for the CPU."""
    from transformers import AutoConfig

    # _from_pretrained is the loader from_pretrained hands an existing IR to, after its
    # guess (see above); the model class it picks by model type is kept.
    return ov_model_class(path)._from_pretrained(
        model_id=path,
        config=AutoConfig.from_pretrained(path, local_files_only=True),
        device="CPU",
        ov_config=dict(ov_config),
        compile=True,
        local_files_only=True,
    )


class OpenvinoEngine:
    name: ClassVar[str] = "openvino"
    providers: ClassVar[tuple[str, ...]] = ("cpu",)
    stoppable: ClassVar[bool] = True

    def __init__(
        self, cache_dir: str | None = None, exporter: Exporter = export_openvino
    ) -> None:
        self.cache_dir = cache_dir
        self.exporter = exporter
        self._model: Any = None
        self._tokenizer: Any = None
        self._pre: Preprocessor | None = None

    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo:
        check_provider(self.name, provider, self.providers)
        opts = check_options(self.name, options, OPTIONS)
        precision = str(opts["inference_precision"]).lower()
        if precision not in PRECISIONS:
            raise EngineError(
                f"inference_precision {precision!r} is not one of {', '.join(PRECISIONS)}",
                title="Unknown engine option",
            )
        info = as_model(model, self.cache_dir)
        export = cached_export(
            info, self.name, {}, library_versions(*EXPORT_LIBRARIES), self.exporter,
            cache_dir=self.cache_dir,
        )
        ov_config: dict[str, str] = {
            "INFERENCE_PRECISION_HINT": precision,
            # OpenVINO 2024+ also stores the KV cache in f16 (or u8) and quantises
            # activations dynamically on CPU by default: measured here, that alone made
            # 3 of 32 greedy outputs of `tiny` diverge from torch at f32.  An f32 run keeps
            # both exact; other precisions keep OpenVINO's defaults.
            **(
                {"KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
                if precision == "f32"
                else {}
            ),
            "PERFORMANCE_HINT": str(opts["performance_hint"]),
            # No compiled-blob cache: every load compiles, so load_s means the same each time.
            "CACHE_DIR": "",
        }
        if opts["threads"] is not None:
            ov_config["INFERENCE_NUM_THREADS"] = str(int(opts["threads"]))
        start_s = time.perf_counter()
        try:
            architecture = model_architecture(info.path)
            if is_classifier(architecture):
                self._pre = load_preprocessor(info, architecture)
            else:
                self._tokenizer = load_tokenizer(info)
            self._model = load_openvino(export.path, ov_config)
        except Exception as error:  # openvino raises RuntimeError subclasses of its own
            raise EngineError(
                f"OpenVINO could not load {info.spec}: {error}", title="Model not loadable"
            ) from error
        load_s = time.perf_counter() - start_s
        return LoadInfo(
            export_s=export.export_s,
            load_s=load_s,
            export_cache_hit=export.cache_hit,
            details={
                "device": "CPU",
                "architecture": model_architecture(info.path),
                "inference_precision_requested": precision,
                "inference_precision": self._compiled_property("INFERENCE_PRECISION_HINT"),
                "kv_cache_precision": self._compiled_property("KV_CACHE_PRECISION"),
                "dynamic_quantization_group_size": self._compiled_property(
                    "DYNAMIC_QUANTIZATION_GROUP_SIZE"
                ),
                "threads": self._compiled_property("INFERENCE_NUM_THREADS"),
                "performance_hint": str(opts["performance_hint"]),
                "export_dir": str(export.path),
                "model_fingerprint": info.fingerprint,
            },
        )

    def _compiled_property(self, name: str) -> str | None:
        """A property of the compiled model, as OpenVINO reports it; None if unreadable."""
        # A seq2seq model compiles an encoder and a decoder with one config: ask the decoder.
        holder = getattr(self._model, "decoder", None) or self._model
        try:
            value = holder.request.get_compiled_model().get_property(name)
        except Exception:  # an older OpenVINO or optimum layout: the record says unknown
            return None
        # An element type prints as "<Type: 'float32'>"; its short name ("f32") is what
        # the precision option takes, so the record compares directly with the request.
        get_type_name = getattr(value, "get_type_name", None)
        return str(get_type_name()) if callable(get_type_name) else str(value)

    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int, stop: StopCheck | None = None
    ) -> list[RequestRecord]:
        if self._model is None:
            raise EngineError("generate called before load", title="Engine not loaded")
        if self._pre is not None:
            return optimum_classify(self._model, self._pre, prompts)
        return hf_generate(self._model, self._tokenizer, prompts, max_new_tokens, stop=stop)

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
        self._pre = None


Engine = OpenvinoEngine
