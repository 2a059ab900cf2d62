"""The ``tensorflow`` engine: transformers' TensorFlow classes, loaded from the same
PyTorch weights (``from_pt=True``) as every other engine.

Providers: ``cpu`` (tensorflow-cpu), ``cuda`` (the full tensorflow build; written against
TensorFlow's documented device placement, never run on a GPU yet).
Options: ``jit_compile`` (``false`` default: a ``tf.function`` graph; ``true`` asks XLA to
compile it), ``threads`` (TensorFlow intra-op threads; set before TensorFlow starts).

Architectures:
- classifiers (``TFAutoModelForSequenceClassification``, ``TFAutoModelForImageClassification``):
  the forward pass is one ``tf.function`` with a shape-free input signature, so a new batch
  shape does not retrace it.  Whether XLA compiled the graph is tried at load on one
  example batch and recorded (``LoadInfo.details["xla_compiled"]``); when XLA refuses, the
  reason is recorded and the plain graph runs.
- decoders (``TFAutoModelForCausalLM``): transformers' TF ``generate``, greedy, exactly
  ``max_new_tokens`` new tokens.  Only architectures TensorFlow has a class for: GPT-2,
  Mistral and others, not Llama, so not the built-in ``tiny``; encoder-decoders are not
  served.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from greenmon.engines._classify import (
    Preprocessor,
    classifier_inputs,
    is_classifier,
    label_records,
    load_preprocessor,
    timed,
)
from greenmon.engines._common import (
    Batch,
    as_model,
    check_options,
    check_provider,
    greedy_config,
    load_tokenizer,
    make_records,
)
from greenmon.engines.base import LoadInfo, Prompt, RequestRecord
from greenmon.errors import EngineError
from greenmon.models import model_architecture

OPTIONS: dict[str, object] = {"jit_compile": False, "threads": None}
TF_CLASSES = {
    "decoder": "TFAutoModelForCausalLM",
    "text-classifier": "TFAutoModelForSequenceClassification",
    "image-classifier": "TFAutoModelForImageClassification",
}


def import_tensorflow(threads: int | None) -> Any:
    """TensorFlow, quiet, with Keras 2 for transformers' TF classes."""
    # transformers' TF classes are Keras 2 models: tf-keras, not Keras 3.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads is not None:
        # Refused once TensorFlow has initialised in this process: the first setting holds.
        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    return tf


class TensorflowEngine:
    name: ClassVar[str] = "tensorflow"
    providers: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, cache_dir: str | None = None) -> None:
        self.cache_dir = cache_dir
        self._model: Any = None
        self._forward: Any = None
        self._pre: Preprocessor | None = None
        self._tokenizer: Any = None
        self._device = "/CPU:0"

    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo:
        check_provider(self.name, provider, self.providers)
        opts = check_options(self.name, options, OPTIONS)
        if not isinstance(opts["jit_compile"], bool):
            raise EngineError(
                f"tensorflow jit_compile must be true or false, not {opts['jit_compile']!r}",
                title="Unknown engine option",
            )
        info = as_model(model, self.cache_dir)
        architecture = model_architecture(info.path)
        if architecture not in TF_CLASSES:
            raise EngineError(
                f"the tensorflow engine serves {', '.join(TF_CLASSES)} models, not "
                f"{architecture} ({info.spec}): use torch, onnx or openvino",
                title="Model not loadable",
            )
        tf = import_tensorflow(opts["threads"])
        if provider == "cuda" and not tf.config.list_physical_devices("GPU"):
            raise EngineError(
                f"CUDA requested but tensorflow {tf.__version__} sees no GPU "
                "(tensorflow-cpu never does: install tensorflow[and-cuda])",
                title="Provider not available",
            )
        self._device = "/GPU:0" if provider == "cuda" else "/CPU:0"
        import transformers

        start_s = time.perf_counter()
        try:
            with tf.device(self._device):
                self._model = getattr(transformers, TF_CLASSES[architecture]).from_pretrained(
                    info.path, from_pt=True
                )
        except (OSError, ValueError, KeyError) as error:
            # transformers raises ValueError for a model type with no TF class (Llama).
            raise EngineError(
                f"TensorFlow could not load {info.spec}: {error}"
                + (" (transformers has no TF class for this architecture)"
                   if "Unrecognized configuration class" in str(error) else ""),
                title="Model not loadable",
            ) from error  # fmt: skip
        details: dict[str, Any] = {
            "device": self._device,
            "architecture": architecture,
            "tensorflow": tf.__version__,
            "jit_compile_requested": opts["jit_compile"],
            "model_fingerprint": info.fingerprint,
        }
        if is_classifier(architecture):
            self._pre = load_preprocessor(info, architecture)
            details.update(self._compile(tf, opts["jit_compile"]))
        else:
            self._tokenizer = load_tokenizer(info)
            details["xla_compiled"] = False
        details["threads"] = tf.config.threading.get_intra_op_parallelism_threads() or None
        return LoadInfo(
            export_s=0.0,
            load_s=time.perf_counter() - start_s,
            export_cache_hit=False,
            details=details,
        )

    def _compile(self, tf: Any, jit_compile: bool) -> dict[str, Any]:
        """The classifier's forward pass as a tf.function; with ``jit_compile``, XLA is
        tried on one example batch and the outcome recorded."""
        assert self._pre is not None
        model = self._model
        names: tuple[str, ...]
        if self._pre.architecture == "text-classifier":
            names = ("input_ids", "attention_mask", "token_type_ids")
            signature = [tf.TensorSpec([None, None], tf.int64, name=n) for n in names]
        else:
            names = ("pixel_values",)
            signature = [tf.TensorSpec([None, None, None, None], tf.float32, name=names[0])]

        def forward(*inputs: Any) -> Any:
            return model(**dict(zip(names, inputs, strict=True)), training=False).logits

        self._names = names
        self._forward = tf.function(forward, input_signature=signature, reduce_retracing=True)
        if not jit_compile:
            return {"xla_compiled": False}
        compiled = tf.function(forward, input_signature=signature, jit_compile=True)
        example = self._example()
        try:
            with tf.device(self._device):
                compiled(*[example[n] for n in names])
        except Exception as error:  # XLA raises InvalidArgumentError and others
            return {"xla_compiled": False, "xla_error": str(error).splitlines()[0][:300]}
        self._forward = compiled
        return {"xla_compiled": True}

    def _example(self) -> dict[str, Any]:
        assert self._pre is not None
        from greenmon.images import image_prompts

        if self._pre.architecture == "text-classifier":
            prompt = Prompt("example", "def example(x):\n    return x\n", "text_classification")
        else:
            prompt = image_prompts(0, 1)[0]
        return classifier_inputs(self._pre, [prompt])

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[RequestRecord]:
        if self._model is None:
            raise EngineError("generate called before load", title="Engine not loaded")
        import tensorflow as tf

        if self._pre is not None:
            inputs = classifier_inputs(self._pre, prompts)
            feed = [
                tf.constant(inputs[n] if n in inputs else _zeros_like_ids(inputs))
                for n in self._names
            ]
            with tf.device(self._device):
                logits, start_ns, end_ns = timed(lambda: self._forward(*feed).numpy())
            return label_records(self._pre, prompts, inputs, logits, start_ns, end_ns)
        return self._generate(tf, prompts, max_new_tokens)

    def _generate(
        self, tf: Any, prompts: Sequence[Prompt], max_new_tokens: int
    ) -> list[RequestRecord]:
        if max_new_tokens < 1:
            raise EngineError("max_new_tokens must be at least 1", title="Invalid request")
        # numpy, not torch tensors: with TensorFlow on, transformers treats torch as absent.
        encoded = self._tokenizer(
            [p.text for p in prompts], return_tensors="np", padding=True,
            add_special_tokens=False,
        )  # fmt: skip
        batch = Batch(
            encoded["input_ids"], encoded["attention_mask"],
            [int(n) for n in encoded["attention_mask"].sum(axis=1)],
        )  # fmt: skip
        config = greedy_config(self._tokenizer, max_new_tokens)
        with tf.device(self._device):
            start_ns = time.monotonic_ns()
            output = self._model.generate(
                input_ids=tf.constant(batch.input_ids, dtype=tf.int32),
                attention_mask=tf.constant(batch.attention_mask, dtype=tf.int32),
                generation_config=config,
            )
            end_ns = time.monotonic_ns()
        new_ids = output.numpy()[:, batch.input_ids.shape[1]:].tolist()
        return make_records(self._tokenizer, prompts, batch, new_ids, start_ns, end_ns, None)

    def close(self) -> None:
        self._model = None
        self._forward = None
        self._pre = None
        self._tokenizer = None
        import tensorflow as tf

        tf.keras.backend.clear_session()


def _zeros_like_ids(inputs: Mapping[str, Any]) -> Any:
    """Segment ids of zeros, for a tokenizer that gives none (one segment)."""
    import numpy as np

    return np.zeros_like(inputs["input_ids"])


Engine = TensorflowEngine
