"""The ``torchscript`` engine: a ``torch.jit.trace`` of the model, driven by greenmon's own
autoregressive greedy loop.

Providers: ``cpu``, ``cuda``.  Options: ``dtype`` (``float32`` default, ``bfloat16``,
``float16``), ``threads`` (torch intra-op threads).

Terms:
- *traced step*: the traced module maps (input ids, 4D additive attention mask, position
  ids) to the logits of the last position.  The mask is built outside the trace and passed
  explicitly: transformers 4.57 builds its own mask with data-dependent Python control flow
  that tracing cannot follow, so a trace given only the 2D mask fails or bakes in one shape.
- *no KV cache*: every step re-runs the whole sequence so far (prompt + tokens generated),
  because a traced module cannot carry transformers' cache objects.  This engine therefore
  does O(n^2) work in the number of new tokens where the others do O(n); that is what
  TorchScript serving of these models costs, and it is reported as such, not hidden.

The study this replicates ran one padded forward pass instead of generating; here each of
the ``max_new_tokens`` steps appends the greedy token (end-of-sequence suppressed, as the
other engines' ``min_new_tokens`` does) and feeds the sequence back in.

Encoder-decoders (T5-shaped): the encoder and a decoder step are traced apart
(``encoder.pt``: (input ids, attention mask) -> hidden states; ``decoder.pt``: (decoder
ids, encoder hidden states, attention mask) -> the logits of the last decoder position).
The prompt is encoded once; the decoder starts from the model's decoder start token and
re-runs the whole decoder sequence each step (no KV cache, as above), appending the
greedy token, exactly ``max_new_tokens`` times.

Classifiers: the forward pass (inputs by position) to the logits is traced; one call per
batch, as every engine does.

The trace is made once per (model, device, dtype) and cached.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from greenmon.engines._cache import cached_export, library_versions
from greenmon.engines._classify import Preprocessor, is_classifier, load_preprocessor
from greenmon.engines._common import (
    as_model,
    check_options,
    check_provider,
    load_tokenizer,
    make_records,
    set_threads,
    tokenize_batch,
)
from greenmon.engines.base import LoadInfo, Prompt, RequestRecord
from greenmon.engines.torch_engine import check_dtype, torch_classify, torch_device
from greenmon.errors import EngineError
from greenmon.models import ModelInfo, model_architecture


def decoder_start_id(path: Path) -> int:
    """The token an encoder-decoder's decoder starts from (config.json; T5: the pad id)."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    start = config.get("decoder_start_token_id")
    if start is None:
        start = config.get("pad_token_id")
    if start is None:
        raise EngineError(
            f"{path / 'config.json'} has no decoder_start_token_id", title="Model not loadable"
        )
    return int(start)

OPTIONS: dict[str, object] = {"dtype": "float32", "threads": None}
EXPORT_LIBRARIES = ("torch", "transformers")
TRACE_FILE = "model.pt"
ENCODER_FILE = "encoder.pt"
DECODER_FILE = "decoder.pt"
META_FILE = "trace.json"


def causal_mask_4d(attention_mask: Any, dtype: Any) -> Any:
    """(batch, 1, q, k) additive mask: 0 where key k is a real token at or before q, else min.

    The dtype's minimum rather than -inf, so a left-padding query row (all keys masked)
    softmaxes to a uniform row instead of NaN; those rows are never read.
    """
    import torch

    length = attention_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None, None, :, :] & attention_mask.bool()[:, None, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def position_ids_for(attention_mask: Any) -> Any:
    """Positions counted from each row's first real token (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _step_module(model: Any) -> Any:
    import inspect

    import torch

    keeps_last = "logits_to_keep" in inspect.signature(model.forward).parameters

    class LastLogits(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, mask_4d: Any, position_ids: Any) -> Any:
            extra = {"logits_to_keep": 1} if keeps_last else {}
            logits = self.model(
                input_ids=input_ids,
                attention_mask=mask_4d,
                position_ids=position_ids,
                use_cache=False,
                return_dict=False,
                **extra,
            )[0]
            return logits[:, -1, :]

    return LastLogits().eval()


def _seq2seq_modules(model: Any) -> tuple[Any, Any]:
    """(encoder, decoder step) modules of a seq2seq LM, as the trace sees them."""
    import torch

    class Encoder(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            encoder = self.model.get_encoder()
            return encoder(
                input_ids=input_ids, attention_mask=attention_mask, return_dict=False
            )[0]

    class DecoderStep(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, decoder_ids: Any, hidden: Any, attention_mask: Any) -> Any:
            logits = self.model(
                encoder_outputs=(hidden,),
                attention_mask=attention_mask,
                decoder_input_ids=decoder_ids,
                use_cache=False,
                return_dict=False,
            )[0]
            return logits[:, -1, :]

    return Encoder().eval(), DecoderStep().eval()


def export_torchscript_seq2seq(
    model: ModelInfo, dest: Path, *, device: str, dtype_name: str
) -> None:
    """Trace an encoder-decoder's encoder and decoder step; save both to ``dest``."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    dtype = getattr(torch, dtype_name)
    # Eager attention: the trace then follows plain tensor code, with the masks given.
    hf_model = AutoModelForSeq2SeqLM.from_pretrained(
        model.path, dtype=dtype, attn_implementation="eager"
    ).to(device).eval()  # type: ignore[arg-type]
    encoder, decoder = _seq2seq_modules(hf_model)
    # Batch 2 with one left-padded row, and a decoder longer than one token, so batch and
    # both lengths stay symbolic in the trace.
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], device=device)
    ids = torch.full(mask.shape, 3, dtype=torch.long, device=device)
    decoder_ids = torch.full((2, 3), 3, dtype=torch.long, device=device)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced_encoder = torch.jit.trace(  # type: ignore[no-untyped-call]
            encoder, (ids, mask), check_trace=False
        )
        hidden = encoder(ids, mask)
        traced_decoder = torch.jit.trace(  # type: ignore[no-untyped-call]
            decoder, (decoder_ids, hidden, mask), check_trace=False
        )
    torch.jit.save(traced_encoder, str(dest / ENCODER_FILE))
    torch.jit.save(traced_decoder, str(dest / DECODER_FILE))
    (dest / META_FILE).write_text(
        json.dumps({"device": device, "dtype": dtype_name, "architecture": "encoder-decoder"})
    )


CLASSIFIER_INPUTS = {
    "text-classifier": ("input_ids", "attention_mask", "token_type_ids"),
    "image-classifier": ("pixel_values",),
}


def export_torchscript_classifier(
    model: ModelInfo, dest: Path, *, device: str, dtype_name: str
) -> None:
    """Trace a classifier's forward pass (inputs by position, as CLASSIFIER_INPUTS lists
    them) to its logits; save it to ``dest``."""
    import torch

    from greenmon.engines.torch_engine import auto_model_class

    architecture = model_architecture(model.path)
    dtype = getattr(torch, dtype_name)
    # Eager attention: its mask is plain tensor code the trace follows for any padding.
    extra = {"attn_implementation": "eager"} if architecture == "text-classifier" else {}
    hf_model = auto_model_class(architecture).from_pretrained(
        model.path, dtype=dtype, **extra
    ).to(device).eval()
    names = CLASSIFIER_INPUTS[architecture]

    class Logits(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = hf_model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(names, inputs, strict=True)), return_dict=False)[0]

    if architecture == "text-classifier":
        # Batch 2, one row right-padded, so batch, length and padding stay symbolic.
        mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], device=device)
        example: tuple[Any, ...] = (
            torch.full(mask.shape, 3, dtype=torch.long, device=device), mask,
            torch.zeros_like(mask),
        )  # fmt: skip
    else:
        side = int(hf_model.config.num_channels)
        example = (torch.zeros((2, side, 32, 32), dtype=dtype, device=device),)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(  # type: ignore[no-untyped-call]
            Logits().eval(), example, check_trace=False
        )
    torch.jit.save(traced, str(dest / TRACE_FILE))
    (dest / META_FILE).write_text(
        json.dumps({"device": device, "dtype": dtype_name, "architecture": architecture})
    )


class PositionalClassifier:
    """A traced classifier called as torch_classify calls a transformers model (by input
    name); the trace takes its inputs by position."""

    def __init__(self, module: Any, names: Sequence[str]) -> None:
        self.module = module
        self.names = tuple(names)

    def parameters(self) -> Any:
        return self.module.parameters()

    def __call__(self, **inputs: Any) -> Any:
        return (self.module(*(inputs[name] for name in self.names)),)


def export_torchscript(model: ModelInfo, dest: Path, *, device: str, dtype_name: str) -> None:
    """Trace ``model`` on ``device`` in ``dtype_name`` and save it to ``dest``."""
    architecture = model_architecture(model.path)
    if architecture == "encoder-decoder":
        export_torchscript_seq2seq(model, dest, device=device, dtype_name=dtype_name)
        return
    if is_classifier(architecture):
        export_torchscript_classifier(model, dest, device=device, dtype_name=dtype_name)
        return
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        model.path, dtype=dtype, attn_implementation="sdpa"
    ).to(device).eval()  # type: ignore[arg-type]
    # Example inputs with batch 2, one row left-padded: the trace then records the
    # padding path too, and batch and length stay symbolic.
    example_mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], device=device)
    example_ids = torch.full(example_mask.shape, 1, dtype=torch.long, device=device)
    step = _step_module(hf_model)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-side shape read; with the mask passed in,
        # none of them decides the result.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(  # type: ignore[no-untyped-call]
            step,
            (example_ids, causal_mask_4d(example_mask, dtype), position_ids_for(example_mask)),
            check_trace=False,
        )
    torch.jit.save(traced, str(dest / TRACE_FILE))
    (dest / META_FILE).write_text(json.dumps({"device": device, "dtype": dtype_name}))


class TorchscriptEngine:
    name: ClassVar[str] = "torchscript"
    providers: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, cache_dir: str | None = None, exporter: Any = None) -> None:
        self.cache_dir = cache_dir
        # exporter(model, dest, device=..., dtype_name=...); replaceable to observe exports.
        self.exporter = exporter or export_torchscript
        self._module: Any = None
        self._encoder: Any = None
        self._decoder_start_id = 0
        self._tokenizer: Any = None
        self._device = "cpu"
        self._dtype: Any = None
        self._eos_ids: list[int] = []
        self._pre: Preprocessor | None = None
        self._classifier: PositionalClassifier | None = None

    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo:
        check_provider(self.name, provider, self.providers)
        opts = check_options(self.name, options, OPTIONS)
        check_dtype(self.name, opts["dtype"])
        info = as_model(model, self.cache_dir)
        self._device = torch_device(provider)
        set_threads(opts["threads"])
        import torch

        export = cached_export(
            info,
            self.name,
            {"device": self._device, "dtype": opts["dtype"]},
            library_versions(*EXPORT_LIBRARIES),
            partial(self.exporter, device=self._device, dtype_name=opts["dtype"]),
            cache_dir=self.cache_dir,
        )
        architecture = model_architecture(info.path)
        start_s = time.perf_counter()
        try:
            if is_classifier(architecture):
                self._pre = load_preprocessor(info, architecture)
            else:
                self._tokenizer = load_tokenizer(info)
            if architecture == "encoder-decoder":
                self._encoder = torch.jit.load(  # type: ignore[no-untyped-call]
                    str(export.path / ENCODER_FILE), map_location=self._device
                ).eval()
                self._decoder_start_id = decoder_start_id(info.path)
            self._module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(export.path / (DECODER_FILE if self._encoder else TRACE_FILE)),
                map_location=self._device,
            )
            self._module.eval()
        except (OSError, RuntimeError) as error:
            raise EngineError(
                f"could not load the TorchScript trace of {info.spec}: {error}",
                title="Model not loadable",
            ) from error
        load_s = time.perf_counter() - start_s
        self._dtype = getattr(torch, opts["dtype"])
        if self._pre is not None:
            self._classifier = PositionalClassifier(
                self._module, CLASSIFIER_INPUTS[architecture]
            )
        else:
            eos = self._tokenizer.eos_token_id
            self._eos_ids = [] if eos is None else [int(eos)]
        return LoadInfo(
            export_s=export.export_s,
            load_s=load_s,
            export_cache_hit=export.cache_hit,
            details={
                "device": self._device,
                "architecture": architecture,
                "dtype": opts["dtype"],
                "threads": torch.get_num_threads(),
                "kv_cache": False,
                "export_dir": str(export.path),
                "model_fingerprint": info.fingerprint,
            },
        )

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[RequestRecord]:
        if self._module is None:
            raise EngineError("generate called before load", title="Engine not loaded")
        if max_new_tokens < 1:
            raise EngineError("max_new_tokens must be at least 1", title="Invalid request")
        if self._classifier is not None and self._pre is not None:
            return torch_classify(self._classifier, self._pre, prompts, self._device)
        if self._encoder is not None:
            return self._generate_seq2seq(prompts, max_new_tokens)
        import torch

        batch = tokenize_batch(self._tokenizer, prompts)
        input_ids = batch.input_ids.to(self._device)
        attention_mask = batch.attention_mask.to(self._device)
        prompt_len = input_ids.shape[1]
        ttft_ns: int | None = None
        try:
            with torch.inference_mode():
                start_ns = time.monotonic_ns()
                for step in range(max_new_tokens):
                    logits = self._module(
                        input_ids,
                        causal_mask_4d(attention_mask, self._dtype),
                        position_ids_for(attention_mask),
                    )
                    if self._eos_ids:
                        logits[:, self._eos_ids] = -float("inf")
                    next_ids = logits.argmax(dim=-1, keepdim=True)
                    input_ids = torch.cat([input_ids, next_ids], dim=1)
                    attention_mask = torch.cat(
                        [attention_mask, torch.ones_like(next_ids, dtype=attention_mask.dtype)],
                        dim=1,
                    )
                    if step == 0:
                        # .item() above in argmax's consumer is not forced on CPU, but the
                        # cat has materialised next_ids; on CUDA wait for the kernel.
                        if self._device == "cuda":
                            torch.cuda.synchronize()
                        ttft_ns = time.monotonic_ns() - start_ns
                if self._device == "cuda":
                    torch.cuda.synchronize()
                end_ns = time.monotonic_ns()
        except torch.OutOfMemoryError as error:
            raise EngineError(
                f"out of memory while generating: {error}", title="Out of memory"
            ) from error
        new_ids = input_ids[:, prompt_len:].tolist()
        return make_records(self._tokenizer, prompts, batch, new_ids, start_ns, end_ns, ttft_ns)

    def _generate_seq2seq(
        self, prompts: Sequence[Prompt], max_new_tokens: int
    ) -> list[RequestRecord]:
        """Encode once, then exactly ``max_new_tokens`` greedy decoder steps."""
        import torch

        batch = tokenize_batch(self._tokenizer, prompts)
        input_ids = batch.input_ids.to(self._device)
        attention_mask = batch.attention_mask.to(self._device)
        decoder_ids = torch.full(
            (input_ids.shape[0], 1), self._decoder_start_id, dtype=torch.long,
            device=self._device,
        )
        ttft_ns: int | None = None
        try:
            with torch.inference_mode():
                start_ns = time.monotonic_ns()
                hidden = self._encoder(input_ids, attention_mask)
                for step in range(max_new_tokens):
                    logits = self._module(decoder_ids, hidden, attention_mask)
                    if self._eos_ids:
                        logits[:, self._eos_ids] = -float("inf")
                    next_ids = logits.argmax(dim=-1, keepdim=True)
                    decoder_ids = torch.cat([decoder_ids, next_ids], dim=1)
                    if step == 0:
                        if self._device == "cuda":
                            torch.cuda.synchronize()
                        ttft_ns = time.monotonic_ns() - start_ns
                if self._device == "cuda":
                    torch.cuda.synchronize()
                end_ns = time.monotonic_ns()
        except torch.OutOfMemoryError as error:
            raise EngineError(
                f"out of memory while generating: {error}", title="Out of memory"
            ) from error
        new_ids = decoder_ids[:, 1:].tolist()
        return make_records(self._tokenizer, prompts, batch, new_ids, start_ns, end_ns, ttft_ns)

    def close(self) -> None:
        device = self._device
        self._encoder = None
        self._module = None
        self._tokenizer = None
        self._pre = None
        self._classifier = None
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()


Engine = TorchscriptEngine
