"""Interference: how busy the machine is with work that is not greenmon's, and waiting for quiet.

Terms:
- *background*: CPU time of every process outside greenmon's own process tree (the
  daemon, its in-process engines, a server it started: probes/proctree.py), not counting a
  virtual machine's steal time (no process here used it), in percent of one core (100 =
  one core busy elsewhere).  The host probe records it continuously
  (``background.cpu_percent``); the results views average it per unit over
  ``cooldown_before`` and ``measure`` and flag ``background_load`` above the plan's
  ``[cooldown] background_cpu_percent_max`` (greenmon/views.py).
- *busy*: the background above that threshold right now.  ``greenmon run`` and
  ``greenmon plan check`` say so before the first unit (``busy_note``).
- *waiting for quiet*: with ``[cooldown] wait_for_quiet_s`` > 0, the runner waits before
  each unit's ``cooldown_before``, at most that long, until the background over the last
  ``QUIET_WINDOW_S`` is under the threshold (``wait_for_quiet``); the time waited goes into
  the unit's row (``load_info.quiet_wait_s``, the ``quiet_wait_s`` column of
  ``unit_results``) and an event.

This reads /proc directly rather than the stored samples, so it works whether or not the
host probe is enabled and sees the load of the last second, not of the last flush.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from greenmon.probes.procstat import ProcStat
from greenmon.probes.proctree import ProcessTree, split_percent

if TYPE_CHECKING:
    from greenmon.plan import Cooldown
    from greenmon.protocols import RunnerHost

# The background is judged over windows of this length: long enough that /proc's clock
# ticks (100 Hz per core) give a figure within a few percent of a core, short enough that
# a wait ends within about a second of the load ending.
QUIET_WINDOW_S = 1.0
# A command's look at the machine before the first unit (it delays the command this long).
BUSY_CHECK_S = 0.5


@dataclass(frozen=True)
class _Reading:
    busy: int
    total: int
    steal: int
    own: int


class BackgroundMeter:
    """Background CPU since the previous look, in percent of one core."""

    def __init__(self, proc_root: str = "/proc", roots: list[int] | None = None) -> None:
        self.proc_root = proc_root
        # ProcStat first: where there is no /proc it raises OSError before a tree is made
        self.stat = ProcStat(proc_root)
        self.tree = ProcessTree(proc_root, roots if roots is not None else [os.getpid()])
        self._cores = self.stat.cores
        self._last = self._read()

    def _read(self) -> _Reading:
        busy, total, steal = self.stat.machine_ticks()
        return _Reading(busy, total, steal, self.tree.cpu_ticks())

    def percent(self) -> float:
        """The background since the last call (or since the meter was made)."""
        now = self._read()
        last, self._last = self._last, now
        return split_percent(
            now.busy - last.busy,
            now.total - last.total,
            now.own - last.own,
            self._cores,
            now.steal - last.steal,
        )[1]

    def close(self) -> None:
        self.tree.close()
        self.stat.close()


def meter_for(host_options: Any) -> BackgroundMeter:
    """A meter that reads what the host probe reads: its ``proc_root`` and its tree's roots
    (its ``tree_pids``, else this process and its watched ``pid``).  ``host_options``: the
    probe's Options, a plan's raw ``[probes.host]`` table, or None for the defaults."""

    def option(key: str) -> Any:
        if isinstance(host_options, Mapping):
            return host_options.get(key)
        return getattr(host_options, key, None)

    roots = option("tree_pids")
    if roots is None:
        roots = [os.getpid()] + ([int(option("pid"))] if option("pid") is not None else [])
    return BackgroundMeter(option("proc_root") or "/proc", list(roots))


def busy_note(
    threshold_percent: float,
    wait_for_quiet_s: float = 0.0,
    *,
    host_options: Any = None,
    duration_s: float = BUSY_CHECK_S,
) -> str | None:
    """A sentence when other processes use more CPU than ``threshold_percent`` now."""
    try:
        meter = meter_for(host_options)
    except OSError:
        return None  # no Linux /proc: nothing to say
    try:
        time.sleep(duration_s)
        background = meter.percent()
    finally:
        meter.close()
    if background <= threshold_percent:
        return None
    return (
        f"the machine is busy: other processes used {background:.0f}% of a core over the "
        f"last {duration_s:g} s (the plan flags units above {threshold_percent:g}%, "
        "[cooldown] background_cpu_percent_max). "
        + (
            f"Each unit waits up to {wait_for_quiet_s:g} s for it to end "
            "([cooldown] wait_for_quiet_s) and is flagged background_load if it does not."
            if wait_for_quiet_s > 0
            else "Units measured now will be flagged background_load; stop the other work, "
            "or set [cooldown] wait_for_quiet_s so each unit waits for it to end."
        )
    )


@dataclass(frozen=True)
class QuietWait:
    waited_s: float
    background_percent: float
    quiet: bool


async def wait_for_quiet(
    meter: BackgroundMeter,
    threshold_percent: float,
    max_wait_s: float,
    *,
    window_s: float = QUIET_WINDOW_S,
    on_wait: Callable[[float], None] | None = None,
) -> QuietWait:
    """Wait, at most ``max_wait_s``, until the background over one ``window_s`` is at or
    under ``threshold_percent``.  The first window is always measured (that is the check);
    ``on_wait(deadline_s)`` is called once if the machine was busy and waiting begins."""
    started = time.monotonic()
    deadline = started + max_wait_s
    waiting = False
    while True:
        await anyio.sleep(window_s)
        background = await anyio.to_thread.run_sync(meter.percent)
        now = time.monotonic()
        if background <= threshold_percent:
            return QuietWait(now - started if waiting else 0.0, background, True)
        if now >= deadline:
            return QuietWait(now - started, background, False)
        if not waiting and on_wait is not None:
            on_wait(deadline - now)
        waiting = True


class _Progress(Protocol):
    phase: str | None
    phase_ends_ns: int | None


async def quiet_before_baseline(
    cooldown: Cooldown, daemon: RunnerHost, progress: _Progress, unit_id: int
) -> float | None:
    """The runner's step before a unit's ``cooldown_before``: wait for quiet when the plan
    asks (``[cooldown] wait_for_quiet_s``); the seconds waited, None when not asked.

    While it waits, the progress shows phase ``wait_for_quiet`` with its deadline (the
    TUI and ``greenmon status`` read it), and the outcome is an event."""
    if cooldown.wait_for_quiet_s <= 0:
        return None
    threshold = cooldown.background_cpu_percent_max

    def waiting(deadline_s: float) -> None:
        progress.phase = "wait_for_quiet"
        progress.phase_ends_ns = time.monotonic_ns() + int(deadline_s * 1e9)

    host = daemon.config.probes.get("host")
    meter = await anyio.to_thread.run_sync(meter_for, host)
    try:
        result = await wait_for_quiet(meter, threshold, cooldown.wait_for_quiet_s, on_wait=waiting)
    finally:
        meter.close()
    progress.phase_ends_ns = None
    if result.waited_s > 0:
        outcome = (
            f"it fell to {result.background_percent:.0f}%"
            if result.quiet
            else f"it was still {result.background_percent:.0f}%; the unit runs and is flagged "
            "background_load"
        )
        daemon.event(
            "info" if result.quiet else "warning",
            f"unit {unit_id} waited {result.waited_s:.1f} s for other processes' CPU to fall "
            f"under {threshold:g}% of a core: {outcome}",
        )
    return round(result.waited_s, 3)
