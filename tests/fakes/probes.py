"""Small in-memory probes with the Probe shape, for daemon and sampling tests."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import ClassVar

from greenmon.probes.base import Channel, ProbeLost, Values


class CountingProbe:
    """A gauge that reports how many reads it has served."""

    name: ClassVar[str] = "counting"
    default_rate_hz: ClassVar[float] = 100.0

    def __init__(self, name: str = "counting", fail_every: int = 0, lose_after: int = 0) -> None:
        self.name = name  # type: ignore[misc]
        self.fail_every = fail_every
        self.lose_after = lose_after
        self.reads = 0
        self.closed = False
        self.lock = threading.Lock()

    def open(self) -> Sequence[Channel]:
        return [Channel(f"{self.name}.reads", "1", "gauge")]

    def read(self) -> Values:
        with self.lock:
            self.reads += 1
            count = self.reads
        if self.lose_after and count > self.lose_after:
            raise ProbeLost("device fell off the bus")
        if self.fail_every and count % self.fail_every == 0:
            raise OSError(f"simulated read failure #{count}")
        return [float(count)]

    def close(self) -> None:
        self.closed = True
