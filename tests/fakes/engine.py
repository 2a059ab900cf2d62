"""A fake engine with the Engine shape that drives a fake power source while it works.

``PoweredRapl`` keeps a fake powercap counter equal to the integral of a known power: an
idle floor plus extra watts while the engine loads or generates.  Phase energy computed
from the stored samples can then be checked against the power the test put in.

Fault tests steer ``FakeEngine`` through the plan's ``[engine_options.<name>]``:
``load_s`` (how long a load takes), ``generate_s`` (extra seconds per generate call),
``fail_load``, ``fail_generate`` (raise), ``oom`` (raise MemoryError in generate) and
``hang_s`` (block in generate until ``HANG_RELEASE`` is set or the time passes) and
``busy_w`` (watts added while a request runs), and ``request_j`` with ``request_j_spread``
(every request adds ``request_j`` joules at once halfway through, times a factor drawn per
generate call uniformly from ``1 +- spread`` by a seeded generator, so a unit's energy is
known and its spread does not depend on how late a busy machine wakes the engine).  With
``GREENMON_FAKE_ENGINE_EVENTS`` set, every call appends ``<event> <pid>`` lines
(load-start, load-end, generate-start, generate-end, close) so a test in another process
can tell which phase a unit is in.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from greenmon.engines.base import LoadInfo, Prompt, RequestRecord
from tests.fakes.rapl import PoweredRapl

__all__ = ["FakeEngine", "PoweredRapl", "ShortEngine"]


# the draws of request_j_spread; seeded, so a test's spread is the same every run.
SPREAD_RANDOM = random.Random(14)

# Set by a test to let every hung generate() return (an abandoned engine thread ends).
HANG_RELEASE = threading.Event()


class FakeEngine:
    """Sleeps instead of computing; adds ``busy_w`` to the power source while busy."""

    name: ClassVar[str] = "fake"
    providers: ClassVar[tuple[str, ...]] = ("cpu",)
    token_s: ClassVar[float] = 0.002
    busy_w: ClassVar[float] = 20.0
    load_w: ClassVar[float] = 10.0

    def __init__(self, power: PoweredRapl | None = None, **_: Any) -> None:
        self.power = power
        self.loaded = False
        # In a subprocess, tests follow progress through this file: one line per request.
        marker = os.environ.get("GREENMON_FAKE_ENGINE_LOG")
        self.log = Path(marker) if marker else None
        events = os.environ.get("GREENMON_FAKE_ENGINE_EVENTS")
        self.events = Path(events) if events else None
        self.options: dict[str, Any] = {}

    def _event(self, name: str) -> None:
        if self.events is not None:
            with self.events.open("a") as handle:
                handle.write(f"{name} {os.getpid()}\n")

    def _busy(self, watts: float) -> None:
        if self.power is not None:
            self.power.extra_w = watts

    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo:
        self._event("load-start")
        if options.get("fail_load"):
            raise RuntimeError("simulated export failure")
        self.options = dict(options)
        load_s = float(options.get("load_s", 0.05))
        self._busy(self.load_w)
        time.sleep(load_s)
        self._busy(0.0)
        self.loaded = True
        self._event("load-end")
        return LoadInfo(
            export_s=0.0, load_s=load_s, export_cache_hit=True, details={"fake": True}
        )

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[RequestRecord]:
        self._event("generate-start")
        if self.options.get("fail_generate"):
            raise RuntimeError("simulated kernel failure in generate")
        if self.options.get("oom"):
            raise MemoryError("simulated allocation failure")
        if self.options.get("hang_s"):
            HANG_RELEASE.wait(float(self.options["hang_s"]))
        time.sleep(float(self.options.get("generate_s", 0.0)))
        busy_w = float(self.options.get("busy_w", self.busy_w))
        spread = float(self.options.get("request_j_spread", 0.0))
        request_j = float(self.options.get("request_j", 0.0))
        if spread:
            request_j *= 1 + spread * SPREAD_RANDOM.uniform(-1, 1)
        records = []
        for prompt in prompts:
            start = time.monotonic_ns()
            self._busy(busy_w)
            if self.power is not None and request_j:
                # halfway through the request, so no phase edge interpolates across it
                time.sleep(self.token_s * max_new_tokens / 2)
                self.power.added_uj += request_j * 1e6
                time.sleep(self.token_s * max_new_tokens / 2)
            else:
                time.sleep(self.token_s * max_new_tokens)
            self._busy(0.0)
            end = time.monotonic_ns()
            if self.log is not None:
                with self.log.open("a") as handle:
                    handle.write(f"{prompt.prompt_id}\n")
            ids = tuple((len(prompt.text) + i) % 97 for i in range(max_new_tokens))
            records.append(
                RequestRecord(
                    prompt.prompt_id,
                    len(prompt.text.split()),
                    max_new_tokens,
                    start,
                    end,
                    None,
                    ids,
                    " ".join(map(str, ids)),
                )
            )
        self._event("generate-end")
        return records

    def close(self) -> None:
        self._event("close")
        self.loaded = False


class ShortEngine(FakeEngine):
    """Generates one token fewer than asked: a runtime that cannot be made to emit exactly
    N tokens (served by ``greenmon serve``, it shows how such a server is flagged)."""

    name: ClassVar[str] = "short"

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[RequestRecord]:
        return super().generate(prompts, max(1, max_new_tokens - 1))
