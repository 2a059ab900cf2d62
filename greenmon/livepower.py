"""Live power from the API's channel table and stream values (no database, no textual).

Which channel answers for a domain is decided once, by the store's ``energy_sources`` view
(the rule in greenmon/sources.py): the daemon marks those channels ``energy_source`` in its
channel table, so the TUI, the ``greenmon run`` progress line and the results all count the
same channels.  A reading becomes power by greenmon/sources.py's ``interval_power_w`` too:
a counter's wrap-corrected rate since its previous reading (none after a reset), a power
gauge's value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from greenmon.api.messages import ChannelRow
from greenmon.sources import interval_power_w, is_energy_channel

SOURCE_LABELS = {"cpu": "CPU package", "dram": "DRAM", "gpu": "GPU", "wall": "wall"}


@dataclass(frozen=True)
class ChannelInfo:
    channel_id: int
    probe: str
    name: str
    unit: str
    kind: str
    domain: str | None
    estimated: bool
    counter_range: float | None
    energy_source: bool = False

    @classmethod
    def from_status(cls, row: ChannelRow) -> ChannelInfo:
        """From a row of the daemon's channel table (``GET /status``)."""
        counter_range = row.metadata.get("counter_range")
        return cls(
            channel_id=row.channel_id,
            probe=row.probe,
            name=row.name,
            unit=row.unit,
            kind=row.kind,
            domain=row.domain,
            estimated=row.estimated,
            counter_range=float(counter_range) if counter_range else None,
            energy_source=row.energy_source,
        )

    @property
    def is_source(self) -> bool:
        """The channel that answers for its domain (the ``energy_sources`` view's choice)."""
        return self.energy_source and is_energy_channel(self.kind, self.unit)

    @property
    def label(self) -> str:
        base = f"{SOURCE_LABELS.get(self.domain or '', self.domain)} ({self.probe} {self.name})"
        return f"{base} ~estimated" if self.estimated else base


def reading_power_w(
    info: ChannelInfo, previous: tuple[int, float] | None, current: tuple[int, float]
) -> float | None:
    """Power at a reading: a counter's rate since the previous one, or a gauge's value."""
    return interval_power_w(info.kind, info.unit, info.counter_range, previous, current)


@dataclass(frozen=True)
class DomainPower:
    domain: str
    power_w: float
    estimated: bool

    def text(self) -> str:
        return f"{self.domain} {self.power_w:.1f} W" + (" (estimated)" if self.estimated else "")


class PowerMeter:
    """Power per domain now, from successive ``[channel_id, t_ns, value]`` readings."""

    def __init__(self, channels: Iterable[ChannelRow]) -> None:
        infos = (ChannelInfo.from_status(row) for row in channels)
        self.sources = {info.channel_id: info for info in infos if info.is_source}
        self._last: dict[int, tuple[int, float]] = {}
        self._power_w: dict[int, float] = {}

    def ingest(self, values: Iterable[Iterable[Any]]) -> None:
        for channel_id, t_ns, value in values:
            info = self.sources.get(int(channel_id))
            if info is None:
                continue
            current = (int(t_ns), float(value))
            previous = self._last.get(info.channel_id)
            if previous is not None and current[0] <= previous[0]:
                continue  # the same reading as in the last snapshot
            self._last[info.channel_id] = current
            power_w = reading_power_w(info, previous, current)
            if power_w is not None:
                self._power_w[info.channel_id] = power_w

    def by_domain(self) -> list[DomainPower]:
        totals: dict[str, DomainPower] = {}
        for channel_id, power_w in self._power_w.items():
            info = self.sources[channel_id]
            domain = info.domain or "?"
            known = totals.get(domain)
            totals[domain] = DomainPower(
                domain,
                power_w + (known.power_w if known else 0.0),
                info.estimated or bool(known and known.estimated),
            )
        return [totals[d] for d in sorted(totals)]
