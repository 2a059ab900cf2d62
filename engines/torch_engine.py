"""The ``torch`` engine: transformers ``AutoModelForCausalLM`` (decoders),
``AutoModelForSeq2SeqLM`` (encoder-decoders, e.g. T5), ``AutoModelForSequenceClassification``
or ``AutoModelForImageClassification`` (classifiers: one forward pass per batch) in eager
PyTorch.

Providers: ``cpu``, ``cuda``, ``rocm`` (a ROCm build of torch, whose device type is
``cuda``).  Options: ``dtype`` (``float32`` default, ``bfloat16``,
``float16``), ``threads`` (torch intra-op threads; unset leaves torch's default).
This engine on ``cpu`` with ``float32`` is the fidelity reference (greenmon.fidelity).
No export: ``export_s`` is 0 and ``export_cache_hit`` is False.
"""

from __future__ import annotations

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
    as_model,
    check_options,
    check_provider,
    hf_generate,
    load_tokenizer,
    set_threads,
)
from greenmon.engines.base import LoadInfo, Prompt, RequestRecord, StopCheck
from greenmon.engines.rocm import torch_rocm_device
from greenmon.errors import EngineError
from greenmon.models import model_architecture

OPTIONS: dict[str, object] = {"dtype": "float32", "threads": None}
DTYPES = ("float32", "bfloat16", "float16")


def check_dtype(engine: str, dtype: str) -> None:
    """Refuse a dtype the torch-based engines (torch, torchscript) do not know."""
    if dtype not in DTYPES:
        raise EngineError(
            f"{engine} dtype {dtype!r} is not one of {', '.join(DTYPES)}",
            title="Unknown engine option",
        )


def torch_device(provider: str) -> str:
    """The torch device for a provider; EngineError when CUDA (or ROCm) is not usable here."""
    if provider == "rocm":
        return torch_rocm_device()
    if provider == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise EngineError(
                "CUDA requested but torch sees no CUDA device "
                f"(torch {torch.__version__}; a '+cpu' build never does)",
                title="Provider not available",
            )
        return "cuda"
    return "cpu"


def auto_model_class(architecture: str) -> Any:
    """transformers' Auto class for a model architecture (greenmon.models)."""
    import transformers

    return getattr(transformers, {
        "decoder": "AutoModelForCausalLM",
        "encoder-decoder": "AutoModelForSeq2SeqLM",
        "text-classifier": "AutoModelForSequenceClassification",
        "image-classifier": "AutoModelForImageClassification",
    }[architecture])  # fmt: skip


def torch_classify(
    model: Any, pre: Preprocessor, prompts: Sequence[Prompt], device: str
) -> list[RequestRecord]:
    """One forward pass of a torch classifier (eager or traced) over the batch."""
    import torch

    inputs = classifier_inputs(pre, prompts)
    tensors = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
    dtype = next(model.parameters()).dtype if hasattr(model, "parameters") else None
    if "pixel_values" in tensors and dtype is not None:
        tensors["pixel_values"] = tensors["pixel_values"].to(dtype)

    def forward() -> Any:
        output = model(**tensors)
        logits = output[0] if isinstance(output, (tuple, list)) else output.logits
        # The copy to the host is inside the timed pass: it waits for a GPU to finish.
        return logits.float().cpu().numpy()

    try:
        with torch.inference_mode():
            logits, start_ns, end_ns = timed(forward)
    except torch.OutOfMemoryError as error:
        raise EngineError(
            f"out of memory in a forward pass: {error}", title="Out of memory"
        ) from error
    return label_records(pre, prompts, inputs, logits, start_ns, end_ns)


class TorchEngine:
    name: ClassVar[str] = "torch"
    providers: ClassVar[tuple[str, ...]] = ("cpu", "cuda", "rocm")
    stoppable: ClassVar[bool] = True

    def __init__(self, cache_dir: str | None = None) -> None:
        self.cache_dir = cache_dir
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = "cpu"
        self._pre: Preprocessor | None = None

    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo:
        check_provider(self.name, provider, self.providers)
        opts = check_options(self.name, options, OPTIONS)
        check_dtype(self.name, opts["dtype"])
        info = as_model(model, self.cache_dir)
        self._device = torch_device(provider)
        set_threads(opts["threads"])
        import torch

        architecture = model_architecture(info.path)
        auto_class = auto_model_class(architecture)
        start_s = time.perf_counter()
        try:
            if is_classifier(architecture):
                self._pre = load_preprocessor(info, architecture)
            else:
                self._tokenizer = load_tokenizer(info)
            self._model = auto_class.from_pretrained(
                info.path, dtype=getattr(torch, opts["dtype"])
            ).to(self._device).eval()  # type: ignore[arg-type]
        except torch.OutOfMemoryError as error:
            raise EngineError(
                f"out of memory loading {info.spec}", title="Out of memory"
            ) from error
        except (OSError, ValueError) as error:
            raise EngineError(
                f"could not load {info.spec} with transformers: {error}",
                title="Model not loadable",
            ) from error
        load_s = time.perf_counter() - start_s
        return LoadInfo(
            export_s=0.0,
            load_s=load_s,
            export_cache_hit=False,
            details={
                "device": self._device,
                "architecture": architecture,
                "dtype": opts["dtype"],
                "threads": torch.get_num_threads(),
                "attn_implementation": getattr(
                    self._model.config, "_attn_implementation", None
                ),
                "model_fingerprint": info.fingerprint,
            },
        )

    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int, stop: StopCheck | None = None
    ) -> list[RequestRecord]:
        if self._model is None:
            raise EngineError("generate called before load", title="Engine not loaded")
        if self._pre is not None:
            return torch_classify(self._model, self._pre, prompts, self._device)
        return hf_generate(
            self._model, self._tokenizer, prompts, max_new_tokens, self._device, stop=stop
        )

    def close(self) -> None:
        device = self._device
        self._model = None
        self._tokenizer = None
        self._pre = None
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()


Engine = TorchEngine
