"""Fidelity: did a serving configuration produce the same tokens as the reference?

Terms:
- *reference*: the output token ids of ``torch`` + ``cpu`` in float32 for the same model,
  prompts and ``max_new_tokens``, generated one prompt at a time (no padding), computed once
  and cached on disk keyed by (model fingerprint, prompts fingerprint, max_new_tokens).
- *identical share*: position-wise equal tokens over the longer of the two sequences; for
  a unit, pooled over its requests.
- *first divergence*: the 0-based position of the first token that differs (None when the
  outputs are identical); for a unit, the earliest over its requests.

Greedy decoding makes divergence sticky: once one token differs the continuation usually
differs too, so the first divergent position says more than the share alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenmon.engines.base import Prompt, RequestRecord
from greenmon.models import ModelInfo, cache_root, resolve_model
from greenmon.workload import prompts_fingerprint

REFERENCE_ENGINE = "torch"
REFERENCE_PROVIDER = "cpu"


@dataclass(frozen=True)
class RequestFidelity:
    prompt_id: str
    identical_tokens: int
    compared_tokens: int
    first_divergence: int | None

    @property
    def identical_share(self) -> float:
        return 1.0 if self.compared_tokens == 0 else self.identical_tokens / self.compared_tokens


@dataclass(frozen=True)
class UnitFidelity:
    requests: tuple[RequestFidelity, ...]

    @property
    def identical_tokens(self) -> int:
        return sum(r.identical_tokens for r in self.requests)

    @property
    def compared_tokens(self) -> int:
        return sum(r.compared_tokens for r in self.requests)

    @property
    def identical_share(self) -> float:
        compared = self.compared_tokens
        return 1.0 if compared == 0 else self.identical_tokens / compared

    @property
    def identical_requests_share(self) -> float:
        if not self.requests:
            return 1.0
        return sum(r.first_divergence is None for r in self.requests) / len(self.requests)

    @property
    def first_divergence(self) -> int | None:
        positions = [r.first_divergence for r in self.requests if r.first_divergence is not None]
        return min(positions) if positions else None


def compare_tokens(
    prompt_id: str, output_ids: Sequence[int], reference_ids: Sequence[int]
) -> RequestFidelity:
    """Position-wise comparison of one request's tokens with the reference's."""
    compared = max(len(output_ids), len(reference_ids))
    identical = sum(1 for a, b in zip(output_ids, reference_ids, strict=False) if a == b)
    first: int | None = None
    for position in range(compared):
        in_both = position < len(output_ids) and position < len(reference_ids)
        if not in_both or output_ids[position] != reference_ids[position]:
            first = position
            break
    return RequestFidelity(prompt_id, identical, compared, first)


def compare_unit(
    records: Sequence[RequestRecord], reference: Mapping[str, Sequence[int]]
) -> UnitFidelity:
    """Each request's fidelity against the reference, by prompt id."""
    missing = [r.prompt_id for r in records if r.prompt_id not in reference]
    if missing:
        raise ValueError(f"no reference output for prompt(s) {', '.join(missing[:5])}")
    return UnitFidelity(
        tuple(compare_tokens(r.prompt_id, r.output_ids, reference[r.prompt_id]) for r in records)
    )


def reference_path(
    model: ModelInfo,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    key = f"{model.fingerprint}-{prompts_fingerprint(prompts)}-{max_new_tokens}"
    return cache_root(cache_dir) / "reference" / f"{key}.json"


def reference_outputs(
    model: Any,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    *,
    cache_dir: str | None = None,
) -> dict[str, tuple[int, ...]]:
    """The reference token ids per prompt id, from the disk cache or computed now."""
    info = resolve_model(model, cache_dir=cache_dir)
    path = reference_path(info, prompts, max_new_tokens, cache_dir)
    if path.is_file():
        stored = json.loads(path.read_text())
        return {pid: tuple(ids) for pid, ids in stored["outputs"].items()}
    from greenmon.engines import get_engine

    engine = get_engine(REFERENCE_ENGINE, cache_dir=cache_dir)
    engine.load(info, REFERENCE_PROVIDER, {"dtype": "float32"})
    try:
        outputs: dict[str, tuple[int, ...]] = {}
        for prompt in prompts:
            (record,) = engine.generate([prompt], max_new_tokens)
            outputs[prompt.prompt_id] = record.output_ids
    finally:
        engine.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "model": info.spec,
                "fingerprint": info.fingerprint,
                "engine": REFERENCE_ENGINE,
                "provider": REFERENCE_PROVIDER,
                "max_new_tokens": max_new_tokens,
                "outputs": {pid: list(ids) for pid, ids in outputs.items()},
            }
        )
    )
    tmp.replace(path)
    return outputs
