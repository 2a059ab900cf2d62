"""Timestamps and the wall-clock anchor of a session.

Every sample, marker and request is stamped with ``time.monotonic_ns()`` (``t_ns``): it
never jumps when NTP or a person changes the wall clock.  A session's *anchor* is
``time.time_ns() - time.monotonic_ns()``, sampled at start and every minute; adding it to a
monotonic stamp gives Unix epoch nanoseconds, so data stamped by other tools in epoch time
(EnergiBridge's ``Time`` column, a wattmeter's log) can be aligned with greenmon's samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

ANCHOR_REFRESH_S = 60.0


def now_ns() -> int:
    """The monotonic clock every greenmon timestamp uses."""
    return time.monotonic_ns()


def wall_anchor_ns() -> int:
    """Epoch ns minus monotonic ns, read as close together as the two calls allow.

    Three readings are taken and the one whose bracketing monotonic reads are closest is
    kept, so a preemption between the two clock reads does not skew the anchor.
    """
    best_anchor_ns = 0
    best_span_ns = -1
    for _ in range(3):
        before_ns = time.monotonic_ns()
        wall_ns = time.time_ns()
        after_ns = time.monotonic_ns()
        span_ns = after_ns - before_ns
        if best_span_ns < 0 or span_ns < best_span_ns:
            best_span_ns = span_ns
            best_anchor_ns = wall_ns - (before_ns + after_ns) // 2
    return best_anchor_ns


@dataclass(frozen=True)
class ClockAnchor:
    """One reading of the wall-clock anchor, taken at monotonic time ``t_ns``."""

    t_ns: int
    anchor_ns: int

    @classmethod
    def read(cls) -> ClockAnchor:
        anchor_ns = wall_anchor_ns()
        return cls(t_ns=now_ns(), anchor_ns=anchor_ns)

    def to_epoch_ns(self, t_ns: int) -> int:
        return t_ns + self.anchor_ns

    def from_epoch_ns(self, epoch_ns: int) -> int:
        return epoch_ns - self.anchor_ns
