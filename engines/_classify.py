"""What the engines share for the classification tasks: inputs in, labels out.

Terms:
- *classifier*: a model whose architecture (greenmon.models.model_architecture) is
  ``text-classifier`` (``...ForSequenceClassification``) or ``image-classifier``
  (``...ForImageClassification``).
- *inference*: one forward pass over a batch; its outputs are logits, and a request's
  output is the arg-max label id (``RequestRecord.output_ids == (label,)``,
  ``tokens_out == 1``), so fidelity compares labels with the reference engine's exactly as
  it compares generated tokens.
- *preprocessing*: the model's own tokenizer (padded on the right, truncated to the
  model's positions) or image processor, in numpy, outside the timed forward pass; every
  engine gets the same arrays, so any difference in labels is the runtime's.

numpy, transformers and PIL are imported inside functions only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenmon.engines.base import Prompt, RequestRecord
from greenmon.errors import EngineError
from greenmon.models import CLASSIFIER_TASKS, ModelInfo

CLASSIFIERS = tuple(CLASSIFIER_TASKS)


def is_classifier(architecture: str) -> bool:
    return architecture in CLASSIFIER_TASKS


@dataclass
class Preprocessor:
    """A classifier's preprocessing: a tokenizer or an image processor."""

    architecture: str
    processor: Any
    max_length: int | None
    id2label: dict[int, str]

    @property
    def task(self) -> str:
        return CLASSIFIER_TASKS[self.architecture]


def load_preprocessor(model: ModelInfo, architecture: str) -> Preprocessor:
    """The model's tokenizer (right padding: a BERT reads its first position) or its
    image processor, and its label names."""
    config = json.loads((Path(model.path) / "config.json").read_text(encoding="utf-8"))
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    try:
        if architecture == "text-classifier":
            from transformers import AutoTokenizer

            processor = AutoTokenizer.from_pretrained(model.path)  # type: ignore[no-untyped-call]
            processor.padding_side = "right"
            if processor.pad_token is None:
                processor.pad_token = processor.eos_token
            max_length = int(config.get("max_position_embeddings") or 512)
        else:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(model.path, use_fast=False)
            max_length = None
    except Exception as error:  # transformers raises many types for a broken folder
        raise EngineError(
            f"no usable preprocessor in {model.path}: {error}", title="Model not loadable"
        ) from error
    return Preprocessor(architecture, processor, max_length, id2label)


def check_task(pre: Preprocessor, prompts: Sequence[Prompt]) -> None:
    wrong = [p for p in prompts if p.task != pre.task]
    if wrong:
        raise EngineError(
            f"a {pre.architecture} labels {pre.task} inputs, but prompt "
            f"{wrong[0].prompt_id!r} is a {wrong[0].task} prompt: use the "
            f"{pre.task.replace('_', '-')} workload with this model",
            title="Model and workload do not match",
        )


def classifier_inputs(pre: Preprocessor, prompts: Sequence[Prompt]) -> dict[str, Any]:
    """The batch's model inputs as numpy arrays (int64 ids and masks, or float32 pixels)."""
    if not prompts:
        raise EngineError("generate was called with no prompts", title="Empty batch")
    check_task(pre, prompts)
    if pre.architecture == "text-classifier":
        encoded = pre.processor(
            [p.text for p in prompts],
            return_tensors="np",
            padding=True,
            truncation=True,
            max_length=pre.max_length,
        )
        return {k: encoded[k].astype("int64") for k in encoded}
    from greenmon.images import seeded_image

    images = [seeded_image(p.text) for p in prompts]
    pixels = pre.processor(images=images, return_tensors="np")["pixel_values"]
    return {"pixel_values": pixels.astype("float32")}


def tokens_in(inputs: dict[str, Any], count: int) -> list[int]:
    """Per request: its real tokens (text) or its pixels (image)."""
    if "attention_mask" in inputs:
        return [int(n) for n in inputs["attention_mask"].sum(axis=1).tolist()]
    pixels = inputs["pixel_values"]
    return [int(pixels[0].size)] * count


def label_records(
    pre: Preprocessor,
    prompts: Sequence[Prompt],
    inputs: dict[str, Any],
    logits: Any,
    start_ns: int,
    end_ns: int,
) -> list[RequestRecord]:
    """One record per prompt: its arg-max label (ties: the lowest id, as numpy does)."""
    import numpy as np

    labels = np.asarray(logits).reshape(len(prompts), -1).argmax(axis=1).tolist()
    records = []
    for prompt, count, label in zip(prompts, tokens_in(inputs, len(prompts)), labels, strict=True):
        records.append(
            RequestRecord(
                prompt_id=prompt.prompt_id,
                tokens_in=count,
                tokens_out=1,
                start_ns=start_ns,
                end_ns=end_ns,
                ttft_ns=end_ns - start_ns,
                output_ids=(int(label),),
                text=pre.id2label.get(int(label), str(label)),
            )
        )
    return records


def timed(forward: Any, *args: Any, **kwargs: Any) -> tuple[Any, int, int]:
    """(result, start_ns, end_ns) of one forward pass."""
    start_ns = time.monotonic_ns()
    result = forward(*args, **kwargs)
    return result, start_ns, time.monotonic_ns()


def optimum_classify(
    model: Any, pre: Preprocessor, prompts: Sequence[Prompt], device: str = "cpu"
) -> list[RequestRecord]:
    """One forward pass of an optimum classifier (ORTModelFor..., OVModelFor...): numpy
    in and out on the CPU; torch tensors on a GPU, where IO binding keeps them there."""
    import numpy as np

    inputs = classifier_inputs(pre, prompts)
    wanted = set(getattr(model, "input_names", None) or inputs)
    # Only the inputs the exported graph takes (a BERT export may drop token types).
    feed: dict[str, Any] = {k: v for k, v in inputs.items() if k in wanted}
    if device != "cpu":
        import torch

        feed = {k: torch.from_numpy(v).to(device) for k, v in feed.items()}

    def forward() -> Any:
        logits = model(**feed).logits
        return logits.cpu().numpy() if hasattr(logits, "cpu") else np.asarray(logits)

    output, start_ns, end_ns = timed(forward)
    return label_records(pre, prompts, inputs, output, start_ns, end_ns)
