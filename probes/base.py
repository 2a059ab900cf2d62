"""The Probe contract: one measured source behind open / read / close.

Terms:
- *channel*: one named quantity a probe reports, with its unit and kind.  Units are part
  of the name (``package-0.energy_uj``, ``gpu0.power_mw``, ``outlet1.load_w``).
- *kind*: ``counter`` for a monotonically increasing energy counter that may wrap (RAPL
  ``energy_uj``, NVML total energy in mJ, EnergiBridge's joules, NETIO's Wh) or ``gauge``
  for an instantaneous value (power, utilisation, temperature).
- *domain*: which part of the machine an energy or power channel measures, so results can
  add like with like: ``cpu`` (CPU packages), ``dram``, ``gpu``, ``wall`` (the socket);
  sub-domains ``cpu_core``, ``cpu_uncore``, ``psys`` are kept but never summed into totals.

The core owns timing: a probe never loops or sleeps.  ``read()`` returns one value per
channel, in the order ``open()`` returned them (``None`` where a value is missing this
time); the sampler stamps it with the midpoint of the call on the monotonic clock.  A
probe whose source carries its own timestamps (EnergiBridge's CSV rows) returns
``Stamped`` rows instead.  A probe may define ``read`` as a coroutine (network probes using
aiohttp); the sampler then awaits it on the event loop instead of calling it in a thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

ChannelKind = Literal["counter", "gauge"]
Values = Sequence[float | None]

# Domains whose energy is added into a unit's totals; the rest are reported on their own.
TOTAL_DOMAINS = ("cpu", "dram", "gpu", "wall")


@dataclass(frozen=True)
class Channel:
    """One quantity a probe reports.  ``metadata`` is stored as JSON with the channel:
    e.g. ``max_energy_range_uj`` for a RAPL counter, ``estimated: true`` for a modelled
    source, ``power_field`` for which NVML power reading is used."""

    name: str
    unit: str
    kind: ChannelKind
    domain: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def estimated(self) -> bool:
        return bool(self.metadata.get("estimated", False))


@dataclass(frozen=True)
class Stamped:
    """Readings that carry their own monotonic timestamps: ``rows`` of (t_ns, values)."""

    rows: Sequence[tuple[int, Values]]


class ProbeUnavailable(Exception):
    """Raised by ``open()``: the source cannot be read here.  The message says why and
    what a person can do about it (load a module, grant a permission, install a package).
    """


class ProbeLost(Exception):
    """Raised by ``read()`` when the source is gone for good (a GPU fell off the bus, a
    child process cannot be restarted).  The sampler records an event and stops this probe;
    the others go on.  Any other exception from ``read()`` is treated as transient: a gap,
    an event, and a retry with exponential backoff."""


@runtime_checkable
class Probe(Protocol):
    """One source of samples.  Construct with options; ``open()`` discovers channels."""

    name: ClassVar[str]
    default_rate_hz: ClassVar[float]

    def open(self) -> Sequence[Channel]:
        """Discover channels, or raise ProbeUnavailable with an actionable reason."""
        ...

    def read(self) -> Values | Stamped:
        """One reading of every channel (or a coroutine returning one, for async probes)."""
        ...

    def close(self) -> None:
        """Release files, sessions and child processes.  Safe to call twice."""
        ...
