"""A real powercap sysfs tree under a temporary directory, with counters we advance.

The RAPL probe takes the tree's root as its ``sysfs_root`` option, so tests run the
production code path on files laid out exactly as the kernel lays them out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


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
