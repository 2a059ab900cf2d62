"""A real powercap sysfs tree under a temporary directory, with counters we advance.

The RAPL probe takes the tree's root as its ``sysfs_root`` option, so tests run the
production code path on files laid out exactly as the kernel lays them out.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import Any


@dataclass
class FakeZone:
    path: Path
    max_energy_range_uj: int
    value_uj: int = 0
    total_uj: int = 0  # ground truth: energy added since creation, never wraps

    def advance(self, energy_uj: int) -> None:
        """Add energy; the counter wraps like the kernel's, modulo (max + 1)."""
        self.total_uj += energy_uj
        self.value_uj = (self.value_uj + energy_uj) % (self.max_energy_range_uj + 1)
        self.write()

    def write(self) -> None:
        # In place (the probe keeps the file open, as it does on sysfs), padded to a fixed
        # width and written with one pwrite, so a concurrent reader never sees a short
        # number; int() and float() ignore the leading spaces.
        fd = os.open(self.path / "energy_uj", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, f"{self.value_uj:>24}\n".encode(), 0)
        finally:
            os.close(fd)


@dataclass
class FakeRaplTree:
    root: Path
    zones: dict[str, FakeZone] = field(default_factory=dict)

    def add_zone(
        self,
        dirname: str,
        name: str,
        *,
        max_energy_range_uj: int = 262_143_328_850,
        start_uj: int = 0,
    ) -> FakeZone:
        path = self.root / dirname
        path.mkdir(parents=True)
        (path / "name").write_text(f"{name}\n")
        (path / "max_energy_range_uj").write_text(f"{max_energy_range_uj}\n")
        (path / "enabled").write_text("1\n")
        zone = FakeZone(path, max_energy_range_uj, value_uj=start_uj)
        zone.write()
        self.zones[dirname] = zone
        return zone


def standard_tree(root: Path, *, max_energy_range_uj: int = 262_143_328_850) -> FakeRaplTree:
    """One package with core and dram subzones, plus the MMIO view of the same package."""
    tree = FakeRaplTree(root)
    tree.add_zone("intel-rapl:0", "package-0", max_energy_range_uj=max_energy_range_uj)
    tree.add_zone("intel-rapl:0:0", "core", max_energy_range_uj=max_energy_range_uj)
    tree.add_zone("intel-rapl:0:1", "dram", max_energy_range_uj=max_energy_range_uj)
    tree.add_zone("intel-rapl-mmio:0", "package-0", max_energy_range_uj=max_energy_range_uj)
    return tree


# Slots of the array a PoweredRapl shares with its counter process.  Plain doubles without a
# lock: each slot has one writer (the test or the counter process), and a torn read of an
# aligned double does not happen on the platforms we run.
EXTRA_W, ADDED_UJ, BUSY_NS, MAX_GAP_NS, STOP, READY = range(6)


class PoweredRapl:
    """A package zone whose counter a separate process advances every ``tick_s`` at the
    current power: ``idle_w``, plus ``extra_w`` (set by a fake engine), plus ``marker_w`` while
    the file ``marker`` exists (so a child process can raise the power), plus energy added at
    once through ``added_uj``.

    A process, as the hardware is outside greenmon: a thread here shared the GIL with the
    samplers of an in-process daemon, and on a loaded 2-core machine its counter went stale
    for tens of milliseconds, which CI read as windows 1-80 % off.  A process can still be
    descheduled, so it records the longest gap between two of its writes; ``stale_j`` turns
    that into the most any reading of the counter can be off, for tolerances that follow the
    fake's own lateness instead of guessing it.
    """

    def __init__(
        self,
        root: Path,
        idle_w: float,
        *,
        tick_s: float = 0.0005,
        marker: Path | None = None,
        marker_w: float = 0.0,
    ) -> None:
        self.tree = FakeRaplTree(root)
        self.zone = self.tree.add_zone("intel-rapl:0", "package-0")
        self.idle_w = idle_w
        self.tick_s = tick_s
        self.marker = marker
        self.marker_w = marker_w
        context = multiprocessing.get_context("spawn")
        self._shared: SynchronizedArray[float] = context.Array("d", 6, lock=False)  # type: ignore[assignment]
        self._process = context.Process(
            target=advance_counter,
            args=(self.zone, idle_w, tick_s, marker, marker_w, self._shared),
            daemon=True,
        )

    @property
    def extra_w(self) -> float:
        return float(self._shared[EXTRA_W])

    @extra_w.setter
    def extra_w(self, watts: float) -> None:
        self._shared[EXTRA_W] = watts

    @property
    def added_uj(self) -> float:
        return float(self._shared[ADDED_UJ])

    @added_uj.setter
    def added_uj(self, energy_uj: float) -> None:
        self._shared[ADDED_UJ] = energy_uj

    @property
    def busy_ns(self) -> int:
        """Time the marker's extra power was on, exactly as the counter was advanced."""
        return int(self._shared[BUSY_NS])

    @property
    def max_gap_s(self) -> float:
        """The longest the counter went without a write since start."""
        return float(self._shared[MAX_GAP_NS]) / 1e9

    def stale_j(self, watts: float | None = None) -> float:
        """The most an energy difference read from the counter can be off: each edge reads
        a value at most one gap old, at no more than ``watts`` (default: all power on)."""
        top_w = watts if watts is not None else self.idle_w + self.marker_w
        return top_w * self.max_gap_s

    def start(self) -> Any:
        self._process.start()
        deadline = time.monotonic() + 60
        while not self._shared[READY]:
            if not self._process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake RAPL counter process did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._shared[STOP] = 1.0
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def advance_counter(
    zone: FakeZone,
    idle_w: float,
    tick_s: float,
    marker: Path | None,
    marker_w: float,
    shared: Any,
) -> None:
    """The counter process: add (power x elapsed time) every tick, until told to stop."""
    energy_uj = 0.0
    written_uj = zone.total_uj
    last = time.monotonic_ns()
    shared[READY] = 1.0
    while not shared[STOP]:
        time.sleep(tick_s)
        now = time.monotonic_ns()
        watts = idle_w + shared[EXTRA_W]
        if marker is not None and marker.exists():
            watts += marker_w
            shared[BUSY_NS] += now - last
        energy_uj += watts * (now - last) / 1e3
        if now - last > shared[MAX_GAP_NS]:
            shared[MAX_GAP_NS] = now - last
        last = now
        delta = int(energy_uj + shared[ADDED_UJ]) - written_uj
        if delta > 0:
            zone.advance(delta)
            written_uj += delta
