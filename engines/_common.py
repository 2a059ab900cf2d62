"""What the engines share: option checking, tokenising a batch, and HF-style greedy generation.

Terms:
- *batch*: the prompts one ``generate`` call receives; they are left-padded to one length
  so every row's next token sits in the last column.
- *exact-length greedy*: argmax decoding with ``min_new_tokens == max_new_tokens``; the
  end-of-sequence logit is suppressed until the end, exactly as transformers'
  ``MinNewTokensLengthLogitsProcessor`` does, so every engine does the same work.
- *TTFT*: time to first token, for a batch the time until the first new column exists;
  every request in the batch gets the same value.

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenmon.engines.base import Prompt, RequestRecord, StopCheck
from greenmon.errors import EngineError
from greenmon.models import ModelInfo, resolve_model


def check_options(
    engine: str, options: Mapping[str, Any], allowed: Mapping[str, object]
) -> dict[str, Any]:
    """Merge ``options`` over the defaults in ``allowed``; an unknown option is an error."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise EngineError(
            f"{engine} engine has no option {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(allowed)) or 'none'}",
            title="Unknown engine option",
        )
    merged = dict(allowed)
    merged.update(options)
    return merged


def check_provider(engine: str, provider: str, providers: Sequence[str]) -> None:
    if provider not in providers:
        from greenmon.engines import check_configuration

        reason = check_configuration(engine, provider)
        raise EngineError(
            reason or f"{engine} engine does not support provider {provider!r}",
            title="Configuration not possible",
        )


def as_model(model: Any, cache_dir: str | None) -> ModelInfo:
    """Accept a ModelInfo, a spec string or a path."""
    return resolve_model(model, cache_dir=cache_dir)


def load_tokenizer(model: ModelInfo) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model.path)  # type: ignore[no-untyped-call]
    except Exception as error:
        raise EngineError(
            f"no usable tokenizer in {model.path}: {error}", title="Model not loadable"
        ) from error
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        # Code models often ship without a pad token; the pad id only fills the left edge
        # of shorter prompts and is masked out, so reusing EOS is harmless.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


@dataclass
class Batch:
    """A tokenised, left-padded batch (torch tensors on the CPU)."""

    input_ids: Any
    attention_mask: Any
    tokens_in: list[int]


def tokenize_batch(tokenizer: Any, prompts: Sequence[Prompt]) -> Batch:
    if not prompts:
        raise EngineError("generate was called with no prompts", title="Empty batch")
    encoded = tokenizer(
        [p.text for p in prompts],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    tokens_in = [int(n) for n in encoded["attention_mask"].sum(dim=1).tolist()]
    for prompt, count in zip(prompts, tokens_in, strict=True):
        if count == 0:
            raise EngineError(
                f"prompt {prompt.prompt_id!r} is empty after tokenisation",
                title="Empty prompt",
            )
    return Batch(encoded["input_ids"], encoded["attention_mask"], tokens_in)


def make_records(
    tokenizer: Any,
    prompts: Sequence[Prompt],
    batch: Batch,
    new_ids: Sequence[Sequence[int]],
    start_ns: int,
    end_ns: int,
    ttft_ns: int | None,
) -> list[RequestRecord]:
    records = []
    for prompt, count, ids in zip(prompts, batch.tokens_in, new_ids, strict=True):
        output_ids = tuple(int(t) for t in ids)
        records.append(
            RequestRecord(
                prompt_id=prompt.prompt_id,
                tokens_in=count,
                tokens_out=len(output_ids),
                start_ns=start_ns,
                end_ns=end_ns,
                ttft_ns=ttft_ns,
                output_ids=output_ids,
                text=tokenizer.decode(list(output_ids), skip_special_tokens=True),
            )
        )
    return records


def _first_token_streamer() -> Any:
    """A transformers streamer that notes when the first new token column exists."""
    from transformers.generation.streamers import BaseStreamer

    class FirstTokenClock(BaseStreamer):  # type: ignore[misc]
        def __init__(self) -> None:
            self.puts = 0
            self.first_token_ns: int | None = None

        def put(self, value: Any) -> None:
            # generate() puts the prompt first, then one column per step.
            self.puts += 1
            if self.puts == 2:
                self.first_token_ns = time.monotonic_ns()

        def end(self) -> None:
            pass

    return FirstTokenClock()


def _stopping_criteria(stop: StopCheck) -> Any:
    """A transformers stopping criterion that ends each row whose request was cancelled;
    generate() returns once every row has ended, so a batch nobody waits for stops at the
    next token instead of running to max_new_tokens.  generate() asks it after appending
    each step's tokens, so the last column is each row's newest token: handed to ``stop``
    for a server to stream at once."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):  # type: ignore[misc]
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            newest = [int(t) for t in input_ids[:, -1].tolist()]
            return torch.tensor(list(stop(newest)), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Cancelled()])


def greedy_config(tokenizer: Any, max_new_tokens: int) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def hf_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    device: Any = None,
    stop: StopCheck | None = None,
) -> list[RequestRecord]:
    """Exact-length greedy generation through a model's transformers ``generate``; with
    ``stop``, rows whose request was cancelled end early (their records are then short)."""
    import torch

    if max_new_tokens < 1:
        raise EngineError("max_new_tokens must be at least 1", title="Invalid request")
    batch = tokenize_batch(tokenizer, prompts)
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    if device is not None:
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    config = greedy_config(tokenizer, max_new_tokens)
    streamer = _first_token_streamer()
    try:
        with torch.inference_mode():
            start_ns = time.monotonic_ns()
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                streamer=streamer,
                stopping_criteria=None if stop is None else _stopping_criteria(stop),
            )
            end_ns = time.monotonic_ns()
    except torch.OutOfMemoryError as error:
        raise EngineError(
                f"out of memory while generating: {error}", title="Out of memory"
            ) from error
    # A decoder returns prompt + new tokens; an encoder-decoder returns the decoder's start
    # token + new tokens (the prompt went to the encoder).
    start = 1 if getattr(model.config, "is_encoder_decoder", False) else input_ids.shape[1]
    new_ids = output[:, start:].tolist()
    ttft = None if streamer.first_token_ns is None else streamer.first_token_ns - start_ns
    return make_records(tokenizer, prompts, batch, new_ids, start_ns, end_ns, ttft)
