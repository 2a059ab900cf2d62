"""The Engine contract: one runtime engine behind load / generate / close.

Terms:
- *engine*: a runtime (``torch``, ``onnx``, ``openvino``, ``torchscript``).
- *provider*: where it runs (``cpu``, ``cuda``, and ``tensorrt`` for onnx).
- *serving configuration*: the pair (engine, provider).
- *request*: one prompt served; its record says what was done and how long it took.

Every engine decodes greedily and generates exactly ``max_new_tokens`` new tokens per
request (end-of-sequence does not stop it early), so every configuration does the same
work.  Heavy libraries are imported inside the engine modules only, inside ``load``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable


@dataclass(frozen=True)
class Prompt:
    """One prompt of a workload; ``prompt_id`` is stable across runs (e.g. HumanEval/12).

    ``text`` is what the engine sees (for a task workload, the task's template filled in);
    ``task`` and ``references`` are what quality scoring needs (greenmon/quality.py).
    """

    prompt_id: str
    text: str
    task: str = "completion"
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestRecord:
    """What one request did.  Times are ``time.monotonic_ns()``."""

    prompt_id: str
    tokens_in: int
    tokens_out: int
    start_ns: int
    end_ns: int
    ttft_ns: int | None
    output_ids: tuple[int, ...]
    text: str
    # for a served request, the new tokens asked for and the count the server
    # claimed in ``usage`` (None when it sent none); ``tokens_out`` is what was streamed.
    tokens_requested: int | None = None
    usage_tokens_out: int | None = None
    # A served request that failed or timed out: the server's error (or the client's
    # timeout), recorded rather than retried; what it streamed before is kept.
    error: str | None = None
    # A served request's energy as the server itself reports it in ``usage`` (joules;
    # None when it reports none): stored beside greenmon's attributed figure.
    server_energy_j: float | None = None

    @property
    def output_hash(self) -> str:
        return hash_token_ids(self.output_ids)

    @property
    def latency_ns(self) -> int:
        return self.end_ns - self.start_ns


def hash_token_ids(token_ids: Sequence[int]) -> str:
    """A short stable hash of generated token ids, to compare outputs across engines."""
    payload = ",".join(str(int(t)) for t in token_ids).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


@dataclass(frozen=True)
class LoadInfo:
    """What loading cost and what is actually in force (precision, provider, cache)."""

    export_s: float
    load_s: float
    export_cache_hit: bool
    details: Mapping[str, Any] = field(default_factory=dict)


def handles_load(engine: object) -> bool:
    """The engine runs the closed or open loop of a unit's load level itself, so
    the runner hands it the whole measure's prompts in one ``generate`` call; its token
    counts are a server's claims, checked and flagged (``token_count_mismatch``) rather
    than failing the unit.  Engines declare it with ``handles_load: ClassVar[bool] = True``.
    """
    return bool(getattr(engine, "handles_load", False))


class StopCheck(Protocol):
    """Asked between generated tokens by an engine that can stop early: one flag per
    prompt of the batch, True once that prompt's request is cancelled (its client hung up,
    or the server is shutting down).  Rows asked to stop stop; the call returns when all
    have.  An engine that has them passes ``newest``, each row's newest token id (the one
    just generated), so ``greenmon serve`` streams each token as soon as it exists; an
    engine that passes nothing is only asked to stop."""

    def __call__(self, newest: Sequence[int] | None = None, /) -> Sequence[bool]: ...


def stoppable(engine: object) -> bool:
    """The engine's ``generate`` takes ``stop=StopCheck`` and honours it between tokens
    (declared with ``stoppable: ClassVar[bool] = True``); ``greenmon serve`` uses it so a
    cancelled request does not keep the engine busy, and streams the tokens it is handed
    there as they come."""
    return bool(getattr(engine, "stoppable", False))


@runtime_checkable
class Engine(Protocol):
    name: ClassVar[str]
    providers: ClassVar[tuple[str, ...]]

    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo: ...

    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int
    ) -> list[RequestRecord]: ...

    def close(self) -> None: ...
