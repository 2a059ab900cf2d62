"""The fixed-rate schedule: drift-free deadlines, skipped ticks after overruns, backoff."""

from __future__ import annotations

import pytest

from greenmon.sampling import backoff_ticks, next_tick

MS = 1_000_000


@pytest.mark.parametrize(
    ("done_tick", "now_ms", "expected_tick", "expected_missed"),
    [
        (0, 0.2, 1, 0),  # read finished early: next tick as planned
        (0, 10.0, 1, 0),  # finished exactly on the next deadline: not missed
        (0, 10.1, 2, 1),  # overran tick 1's deadline: skip it, count one miss
        (0, 35.0, 4, 3),  # long stall: ticks 1, 2, 3 skipped, never burst
        (5, 55.0, 6, 0),  # ticks are absolute (t0 + k * period): no drift from late reads
        (5, 70.0, 8, 2),
        (9, 99.9, 10, 0),
    ],
)
def test_next_tick_table(
    done_tick: int, now_ms: float, expected_tick: int, expected_missed: int
) -> None:
    t0_ns = 1_000 * MS
    tick, missed = next_tick(t0_ns, 10 * MS, done_tick, t0_ns + int(now_ms * MS))
    assert (tick, missed) == (expected_tick, expected_missed)


def test_next_tick_deadline_is_in_the_future() -> None:
    t0_ns, period_ns = 0, 7 * MS
    for now_ns in range(0, 200 * MS, 3 * MS + 17):
        done = max(0, now_ns // period_ns - 2)
        tick, _ = next_tick(t0_ns, period_ns, done, now_ns)
        assert t0_ns + tick * period_ns >= now_ns
        assert t0_ns + (tick - 1) * period_ns < now_ns or tick == done + 1


@pytest.mark.parametrize(
    ("failures", "period_ms", "max_backoff_s", "expected"),
    [
        (1, 10, 30, 1),
        (2, 10, 30, 2),
        (3, 10, 30, 4),
        (6, 10, 30, 32),
        (20, 10, 1.0, 100),
        (40, 1000, 0.5, 1),
    ],
)
def test_backoff_doubles_and_is_capped(
    failures: int, period_ms: int, max_backoff_s: float, expected: int
) -> None:
    assert backoff_ticks(failures, period_ms * MS, max_backoff_s) == expected
