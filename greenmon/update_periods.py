"""Sensor update periods: how often each channel's value really changes.

Terms:
- *update period* of a channel: the median interval between samples whose value differs
  from the channel's previous sample.  A sensor that refreshes slower than it is polled
  (NVML's power every 100 ms or a 1 s average, a wattmeter once a second, EnergiBridge
  its own interval) repeats values, and the period found is its refresh; one that
  refreshes faster (RAPL, about 1 ms) changes at every sample, and the period found is the
  sampling period.  Either way it is the time resolution the stored samples really have,
  which is what decides how short a window can be measured (views.py ``short_window``,
  greenmon/plan/check.py's check of the planned measure length).
- Only energy and power channels are followed (units in ``TRACKED_UNITS``); a period is
  reported once ``MIN_INTERVALS`` intervals were seen, from the last ``WINDOW`` of them.

Detection is vectorised over each hand-off's rows (sampling.py calls ``offer`` with the
buffer it is about to hand off), so a read costs nothing extra.  The daemon stores the
periods in each channel's metadata (``update_period_ns``, ``update_intervals``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import numpy as np

from greenmon.probes.base import Channel
from greenmon.sources import ENERGY_UNITS, POWER_UNITS
from greenmon.thresholds import MIN_WINDOW_PERIODS

TRACKED_UNITS = frozenset(ENERGY_UNITS + POWER_UNITS)  # the units sources.py can read
MIN_INTERVALS = 5
WINDOW = 64


def min_window_s(period_s: float) -> float:
    """The shortest window the ``short_window`` flag lets pass for a source updating
    every ``period_s``: the minimum measure length."""
    return MIN_WINDOW_PERIODS * period_s


class _Track:
    __slots__ = ("intervals_ns", "last_change_ns", "last_value")

    def __init__(self) -> None:
        self.intervals_ns: deque[int] = deque(maxlen=WINDOW)
        self.last_value: float | None = None
        self.last_change_ns: int | None = None


class UpdatePeriods:
    """Per tracked channel, the intervals between value changes seen so far."""

    def __init__(self, channels: Sequence[Channel], channel_ids: Sequence[int]) -> None:
        self._columns = [
            (column, channel_id)
            for column, (channel, channel_id) in enumerate(zip(channels, channel_ids, strict=True))
            if channel.unit in TRACKED_UNITS
        ]
        self._tracks = {channel_id: _Track() for _, channel_id in self._columns}
        self._lock = threading.Lock()

    def offer(self, t_ns: np.ndarray, values: np.ndarray) -> None:
        """Rows of one hand-off: ``t_ns[i]`` and ``values[i, column]`` (NaN: no value)."""
        if not self._columns or not len(t_ns):
            return
        columns = [column for column, _ in self._columns]
        block = values[:, columns]
        with self._lock:
            if np.isnan(block).any():  # a missing reading is skipped, not a change
                for index, (_, channel_id) in enumerate(self._columns):
                    present = ~np.isnan(block[:, index])
                    self._offer_changes(
                        self._tracks[channel_id], t_ns[present], block[present, index]
                    )
                return
            # the common case, every channel read at every row: one comparison for all
            changed = np.empty(block.shape, dtype=bool)
            np.not_equal(block[1:], block[:-1], out=changed[1:])
            for index, (_, channel_id) in enumerate(self._columns):
                track = self._tracks[channel_id]
                first = block[0, index]
                changed[0, index] = track.last_value is not None and first != track.last_value
                self._record(track, t_ns[changed[:, index]], float(block[-1, index]))

    @classmethod
    def _offer_changes(cls, track: _Track, t_ns: np.ndarray, column: np.ndarray) -> None:
        if not len(column):
            return
        changed = np.empty(len(column), dtype=bool)
        changed[0] = track.last_value is not None and column[0] != track.last_value
        np.not_equal(column[1:], column[:-1], out=changed[1:])
        cls._record(track, t_ns[changed], float(column[-1]))

    @staticmethod
    def _record(track: _Track, change_ns: np.ndarray, last_value: float) -> None:
        track.last_value = last_value
        if not len(change_ns):
            return
        if track.last_change_ns is not None:
            track.intervals_ns.append(int(change_ns[0]) - track.last_change_ns)
        track.intervals_ns.extend(np.diff(change_ns[-WINDOW:]).tolist())
        track.last_change_ns = int(change_ns[-1])

    def estimates(self) -> dict[int, tuple[int, int]]:
        """channel_id -> (update period in ns, intervals it rests on), where known."""
        with self._lock:
            return {
                channel_id: (int(np.median(track.intervals_ns)), len(track.intervals_ns))
                for channel_id, track in self._tracks.items()
                if len(track.intervals_ns) >= MIN_INTERVALS
            }


def changed_enough(old_ns: int | None, new_ns: int, tolerance: float = 0.1) -> bool:
    """Whether a newly found period is worth storing over the one stored before."""
    return old_ns is None or abs(new_ns - old_ns) > tolerance * old_ns
