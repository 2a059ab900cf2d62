"""RAPL probe: CPU package, core, uncore, DRAM and platform energy from powercap sysfs.

The kernel exposes each RAPL *zone* as a directory under ``/sys/class/powercap``:
``intel-rapl:N`` (a package, through MSRs), ``intel-rapl:N:M`` (its subzones: core, uncore,
dram) and, on newer Intel parts, ``intel-rapl-mmio:N`` (the same package through MMIO).
A zone's ``name`` says what it is (``package-0``, ``core``, ``uncore``, ``dram``, ``psys``);
``energy_uj`` is a counter in µJ that wraps at ``max_energy_range_uj``.  The probe stores
the raw counter (kind ``counter``, metadata ``counter_range``) and greenmon/energy.py
wrap-corrects deltas, so nothing is integrated here.

When both the MSR and the MMIO view of a package exist, the MMIO zone is skipped: it
measures the same energy, and keeping both would count the package twice.

Reads use ``os.pread`` on descriptors kept open from ``open()``: about 0.3 µs per read on
these machines, against 2.3 µs for open/read/close.

*Access*: ``direct`` when this process can read ``energy_uj``; else, unless ``helper =
false``, ``helper``: the greenmon helper (greenmon/privhelper.py), running as root, reads
every zone in one request with this same code over its own powercap root, and the probe
returns its values.  The sampler stamps both kinds with the midpoint of ``read()``, so
the request's round trip sits inside the same timestamps.  A channel read through the
helper carries ``"access": "helper"`` in its metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from greenmon.errors import GreenmonError
from greenmon.privhelper import HelperClient, helper_socket_path
from greenmon.probes.base import Channel, ProbeLost, ProbeUnavailable, Values
from greenmon.probes.options import ProbeOptions

DEFAULT_SYSFS_ROOT = "/sys/class/powercap"
_ZONE_DIR = re.compile(r"^(intel-rapl|intel-rapl-mmio):(\d+)(?::(\d+))?$")

# Zone name -> energy domain (probes/base.py); unknown names are kept with no domain.
_DOMAINS = {"core": "cpu_core", "uncore": "cpu_uncore", "dram": "dram", "psys": "psys"}

PERMISSION_HELP = (
    "{path} is readable only by root: since the 2020 PLATYPUS disclosure (CVE-2020-8694) "
    "kernels restrict RAPL energy_uj. Grant read access to the user running greenmon, "
    'e.g. a udev rule  ACTION=="add", SUBSYSTEM=="powercap", '
    'RUN+="/bin/chmod g+r /sys%p/energy_uj", RUN+="/bin/chgrp power /sys%p/energy_uj"  '
    "with that user in group 'power' (or, for one boot, `sudo chmod o+r "
    "/sys/class/powercap/intel-rapl:*/energy_uj /sys/class/powercap/intel-rapl:*:*/energy_uj`)"
    ", or run the daemon as root."
)


class Options(ProbeOptions, kw_only=True, forbid_unknown_fields=True):
    sysfs_root: str = DEFAULT_SYSFS_ROOT
    # Read subzones (core, uncore, dram) as well as packages.
    subzones: bool = True
    # When energy_uj is not readable here, read through the greenmon helper at this socket
    # (None: $GREENMON_HELPER_SOCKET, else /run/greenmon-helper.sock); helper = false: never.
    helper: bool = True
    helper_socket: str | None = None


@dataclass(frozen=True)
class Zone:
    path: Path
    interface: str  # "intel-rapl" | "intel-rapl-mmio"
    name: str
    parent_name: str | None
    max_energy_range_uj: int


def _read_text(path: Path) -> str:
    return path.read_text().strip()


def discover_zones(root: Path, *, subzones: bool = True) -> list[Zone]:
    """Every distinct RAPL zone under ``root``, MSR view preferred over MMIO."""
    if not root.is_dir():
        return []
    entries: list[tuple[str, int, int | None, Path]] = []
    for entry in sorted(root.iterdir()):
        match = _ZONE_DIR.match(entry.name)
        if match and (entry / "name").exists():
            sub = None if match.group(3) is None else int(match.group(3))
            entries.append((match.group(1), int(match.group(2)), sub, entry))
    names: dict[tuple[str, int], str] = {
        (iface, idx): _read_text(path / "name") for iface, idx, sub, path in entries if sub is None
    }
    msr_packages = {name for (iface, _), name in names.items() if iface == "intel-rapl"}
    zones: list[Zone] = []
    for iface, idx, sub, path in entries:
        if sub is not None and not subzones:
            continue
        top_name = names.get((iface, idx))
        if iface == "intel-rapl-mmio" and top_name in msr_packages:
            continue  # same package, already read through MSRs
        name = _read_text(path / "name")
        range_path = path / "max_energy_range_uj"
        max_range = int(_read_text(range_path)) if range_path.exists() else 0
        zones.append(
            Zone(
                path=path,
                interface=iface,
                name=name,
                parent_name=None if sub is None else top_name,
                max_energy_range_uj=max_range,
            )
        )
    return zones


# RAPL's energy status registers are updated about every 1 ms (Intel SDM, "RAPL
# interfaces"; AMD's the same order).
RAPL_UPDATE_NS = 1_000_000


def zone_channel(zone: Zone) -> Channel:
    if zone.parent_name is None:
        label = zone.name
        domain = "cpu" if zone.name.startswith("package") else _DOMAINS.get(zone.name)
    else:
        label = f"{zone.parent_name}/{zone.name}"
        domain = _DOMAINS.get(zone.name)
    metadata: dict[str, object] = {
        "zone": zone.path.name,
        "max_energy_range_uj": zone.max_energy_range_uj,
        # The hardware updates the energy status about every millisecond: the time
        # resolution of a window whose edges read the counter (sources.py
        # window_resolution_sql).
        "counter_update_ns": RAPL_UPDATE_NS,
    }
    if zone.max_energy_range_uj > 0:
        # RAPL counters wrap at max_energy_range_uj: the delta after a wrap is
        # (new - old + range), which greenmon/energy.py adds back.
        metadata["counter_range"] = zone.max_energy_range_uj + 1
    return Channel(f"{label}.energy_uj", "uJ", "counter", domain=domain, metadata=metadata)


class RaplProbe:
    name: ClassVar[str] = "rapl"
    # The counters are read at every window and phase edge (sampling.py), so polling
    # only feeds the live chart (a few Hz) and wrap safety (minutes at full power).
    default_rate_hz: ClassVar[float] = 5.0

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self._fds: list[int] = []
        self._paths: list[Path] = []
        self._helper: HelperClient | None = None
        self._helper_indices: list[int] = []
        self.access: str | None = None  # "direct" | "helper", once open

    def describe_access(self) -> str | None:
        """How the counters are read, in words (None before open)."""
        if self.access == "helper" and self._helper is not None:
            return f"through the greenmon helper at {self._helper.path}"
        return "directly" if self.access == "direct" else None

    def open(self) -> Sequence[Channel]:
        root = Path(self.options.sysfs_root)
        zones = discover_zones(root, subzones=self.options.subzones)
        if not zones:
            raise ProbeUnavailable(
                f"no RAPL zones under {root}: this machine exposes no powercap energy "
                "counters (a virtual machine, a CPU without RAPL, or the intel_rapl_common / "
                "intel_rapl_msr modules not loaded: try `sudo modprobe intel_rapl_msr`). "
                "Use EnergiBridge or the estimate probe instead."
            )
        try:
            channels = self._open_direct(zones)
        except PermissionError as error:
            denied = PERMISSION_HELP.format(path=error.filename)
            if not self.options.helper:
                raise ProbeUnavailable(denied) from None
            try:
                return self._open_helper()
            except GreenmonError as helper_error:
                raise ProbeUnavailable(
                    f"{denied} Nor can the greenmon helper read them: {helper_error}"
                ) from None
        self.access = "direct"
        return channels

    def _open_helper(self) -> list[Channel]:
        self._helper = HelperClient(helper_socket_path(self.options.helper_socket))
        try:
            offered = self._helper.rapl_channels()
            self._helper_indices, channels = [], []
            for index, data in enumerate(offered):
                zone = str(data["metadata"].get("zone", ""))
                match = _ZONE_DIR.match(zone)
                if match and match.group(3) is not None and not self.options.subzones:
                    continue
                self._helper_indices.append(index)
                metadata = {**data["metadata"], "access": "helper"}
                channels.append(dataclasses.replace(Channel(**data), metadata=metadata))
            self._helper.rapl_read()  # fails now, not at the first tick
        except BaseException:
            self.close()
            raise
        self.access = "helper"
        return channels

    def _open_direct(self, zones: Sequence[Zone]) -> list[Channel]:
        """Channels of the zones read here; PermissionError when energy_uj is root's."""
        channels: list[Channel] = []
        try:
            for zone in zones:
                energy_path = zone.path / "energy_uj"
                try:
                    fd = os.open(energy_path, os.O_RDONLY)
                    os.pread(fd, 32, 0)
                except PermissionError:
                    raise
                except OSError as error:
                    # Some subzones exist but cannot be read (e.g. dram on client parts):
                    # skip them rather than lose the package.
                    if zone.parent_name is None:
                        raise ProbeUnavailable(f"cannot read {energy_path}: {error}") from None
                    continue
                self._fds.append(fd)
                self._paths.append(energy_path)
                channels.append(zone_channel(zone))
        except BaseException:
            self.close()
            raise
        return channels

    def read(self) -> Values:
        if self._helper is not None:
            try:
                offered = self._helper.rapl_read()
            except GreenmonError as error:
                raise ProbeLost(f"RAPL through the greenmon helper: {error}") from None
            return [offered[i] for i in self._helper_indices]
        values: list[float | None] = []
        for fd, path in zip(self._fds, self._paths, strict=True):
            try:
                values.append(float(os.pread(fd, 32, 0)))
            except PermissionError:
                raise ProbeLost(PERMISSION_HELP.format(path=path)) from None
        return values

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds, self._paths = [], []
        if self._helper is not None:
            self._helper.close()
            self._helper = None


def create(options: Options) -> RaplProbe:
    return RaplProbe(options)
