"""The real torch engine, held after its first generated token until a test opens a gate.

``greenmon serve --engine tests.fakes.gated_torch:GatedTorchEngine`` serves the model with
the torch engine unchanged but for one thing: a batch's stop check, once handed the first
token, waits until the file ``$GREENMON_GATE_DIR/open`` exists (``HOLD_S`` at most, so a
server whose stream never arrives is not held for ever), and ``$GREENMON_GATE_DIR/ended``
is written when ``generate`` returns.  A client that gets a streamed request's first chunk
while ``ended`` is absent has seen a token before the generation ended.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from greenmon.engines.base import Prompt, RequestRecord, StopCheck
from greenmon.engines.torch_engine import TorchEngine

__all__ = ["GatedTorchEngine"]

# How long the first token waits for the gate: far beyond any test's wait for a chunk.
HOLD_S = 60.0
GATE_POLL_S = 0.01


class GatedTorchEngine(TorchEngine):
    name: ClassVar[str] = "gated-torch"

    def __init__(self, cache_dir: str | None = None) -> None:
        super().__init__(cache_dir)
        self.gate_dir = Path(os.environ["GREENMON_GATE_DIR"])

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_model_len(self) -> int | None:
        config = self._model.config
        context = getattr(config, "max_position_embeddings", None)
        return None if context is None else int(context)

    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int, stop: StopCheck | None = None
    ) -> list[RequestRecord]:
        held = False

        def gated(newest: Sequence[int] | None = None, /) -> Sequence[bool]:
            nonlocal held
            flags = [False] * len(prompts) if stop is None else stop(newest)
            if newest is not None and not held:
                held = True
                deadline = time.monotonic() + HOLD_S
                while not (self.gate_dir / "open").exists() and time.monotonic() < deadline:
                    time.sleep(GATE_POLL_S)
            return flags

        try:
            return super().generate(prompts, max_new_tokens, stop=gated)
        finally:
            (self.gate_dir / "ended").write_text("ended\n")
