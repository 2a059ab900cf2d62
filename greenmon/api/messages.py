"""The typed messages of the daemon's wire, shared by the server and its clients.

Each endpoint that a client reads field by field answers one of these msgspec Structs:
the server builds it, ``greenmon.api.wire`` encodes it, and a client decodes the JSON
back into the same Struct (``decode``), so a renamed or missing field fails at the
boundary with a message instead of as a KeyError deep in the TUI.  Imports nothing of the
server, the store or DuckDB, so a client that loads it stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


@dataclass
class SqlResult:
    """``POST /sql``: the columns, the rows (at most the row limit), and whether more
    rows were cut."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False


class PlanEntry(msgspec.Struct, kw_only=True):
    """A plan the runner accepted: queued, or finished in this daemon's life (its outcome:
    done | cancelled | failed | interrupted; None while it has none)."""

    experiment_id: str
    plan_name: str
    units_total: int
    units_done: int
    resumed: bool = False
    outcome: str | None = None


class UnitInfo(msgspec.Struct, kw_only=True):
    """The unit running now: its place in the run order (from 0), model, engine and
    provider (``configuration`` is ``engine/provider``), repetition (from 1), factors."""

    unit_id: int | None = None
    model: str
    engine: str = ""
    provider: str = ""
    configuration: str
    repetition: int
    factors: dict[str, Any] = msgspec.field(default_factory=dict)


class GridCell(msgspec.Struct, kw_only=True):
    """One (model, configuration) of the running plan: its units by state."""

    model: str
    configuration: str
    done: int = 0
    failed: int = 0
    running: int = 0
    total: int = 0


class Progress(msgspec.Struct, kw_only=True):
    """The runner's progress (``progress`` of a snapshot and of ``GET /status``)."""

    status: str = "idle"  # idle | running | paused | ...
    experiment_id: str | None = None
    plan_name: str | None = None
    unit_index: int = 0
    units_total: int = 0
    unit: UnitInfo | None = None
    phase: str | None = None
    phase_remaining_s: float | None = None
    request_index: int = 0
    requests_total: int = 0
    eta_s: float | None = None
    # per (model, configuration): counts of units by state
    grid: list[GridCell] = msgspec.field(default_factory=list)
    # medians per configuration of the running plan's finished units
    results: list[dict[str, Any]] = msgspec.field(default_factory=list)
    last_error: str | None = None
    queue: list[PlanEntry] = msgspec.field(default_factory=list)
    finished: list[PlanEntry] = msgspec.field(default_factory=list)
    # a served unit's requests in flight, tokens/s and latency; None for in-process engines
    serving: dict[str, Any] | None = None

    def outcome_of(self, experiment_id: str) -> str | None:
        """How the plan ``experiment_id`` ended, once it has."""
        for entry in self.finished:
            if entry.experiment_id == experiment_id:
                return entry.outcome
        return None


class Snapshot(msgspec.Struct, kw_only=True):
    """One ``GET /stream`` line: the latest value of every channel as ``[channel_id, t_ns,
    value]``, cheap probe health and the runner's progress (None without a runner)."""

    t_ns: int
    session_id: str | None = None
    values: list[tuple[int, int, float]] = msgspec.field(default_factory=list)
    probes: list[dict[str, Any]] = msgspec.field(default_factory=list)
    progress: Progress | None = None


class Status(Snapshot, kw_only=True):
    """What ``GET /status`` adds to a snapshot: full probe health (with jitter), the
    writer's flush timings, the channel table and whether the daemon runs plans.  The
    server adds its own pid, start, database and socket beside it."""

    writer: dict[str, Any] = msgspec.field(default_factory=dict)
    channels: list[dict[str, Any]] = msgspec.field(default_factory=list)
    runner: bool = False


class ExperimentSummary(msgspec.Struct, kw_only=True):
    """``GET /experiments/{id}``: the experiment's medians per configuration, one row per
    configuration (the columns of ``unit_results_for`` summarised; see the runner)."""

    experiment_id: str
    results: list[dict[str, Any]] = msgspec.field(default_factory=list)


class WindowListing(msgspec.Struct, kw_only=True):
    """``GET /windows``: the named windows open now and the most recent closed ones."""

    open: list[dict[str, Any]] = msgspec.field(default_factory=list)
    recent: list[dict[str, Any]] = msgspec.field(default_factory=list)


def decode(data: Any, kind: type[T]) -> T:
    """A message of type ``kind`` from its JSON-decoded form (``dict`` from the wire)."""
    return msgspec.convert(data, kind)
