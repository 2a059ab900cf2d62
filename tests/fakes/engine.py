"""A fake engine with the Engine shape that drives a fake power source while it works.

``PoweredRapl`` keeps a fake powercap counter equal to the integral of a known power: an
idle floor plus extra watts while the engine loads or generates.  Phase energy computed
from the stored samples can then be checked against the power the test put in.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from greenmon.engines.base import LoadInfo, Prompt, RequestRecord
from tests.fakes.rapl import FakeRaplTree


class PoweredRapl:
    """A thread advancing a fake RAPL package counter at the current power, every 0.5 ms."""

    def __init__(self, root: Path, idle_w: float, *, tick_s: float = 0.0005) -> None:
        self.tree = FakeRaplTree(root)
        self.zone = self.tree.add_zone("intel-rapl:0", "package-0")
        self.idle_w = idle_w
        self.extra_w = 0.0
        self.tick_s = tick_s
        self._energy_uj = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PoweredRapl:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last = time.monotonic_ns()
        while not self._stop.wait(self.tick_s):
            now = time.monotonic_ns()
            self._energy_uj += (self.idle_w + self.extra_w) * (now - last) / 1e3
            last = now
            delta = int(self._energy_uj) - self.zone.total_uj
            if delta > 0:
                self.zone.advance(delta)


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

    def _busy(self, watts: float) -> None:
        if self.power is not None:
            self.power.extra_w = watts

    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo:
        if options.get("fail_load"):
            raise RuntimeError("simulated export failure")
        self._busy(self.load_w)
        time.sleep(0.05)
        self._busy(0.0)
        self.loaded = True
        return LoadInfo(export_s=0.0, load_s=0.05, export_cache_hit=True, details={"fake": True})

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[RequestRecord]:
        records = []
        for prompt in prompts:
            start = time.monotonic_ns()
            self._busy(self.busy_w)
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
        return records

    def close(self) -> None:
        self.loaded = False
