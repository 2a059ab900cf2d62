"""The typed messages of the daemon's wire, shared by the server and its clients.

Each endpoint that a client reads field by field answers one of these msgspec Structs:
the server builds it, ``greenmon.api.wire`` encodes it, and a client decodes the JSON
back into the same Struct (``decode``), so a renamed or missing field fails at the
boundary with a message instead of as a KeyError deep in the TUI.  Imports nothing of the
server, the store or DuckDB, so a client that loads it stays light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


class SqlResult(msgspec.Struct):
    """``POST /sql``: the columns, the rows (at most the row limit), and whether more
    rows were cut."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False


# -- what a client asks -------------------------------------------------------------------


class PlanRequest(msgspec.Struct, kw_only=True):
    """``POST /plans``: a plan's text (and its path, for messages), and how to queue it:
    ``force`` a new experiment, ``resume`` the last one, ``shard`` "K/N" for one part."""

    plan_toml: str
    plan_path: str | None = None
    force: bool = False
    resume: bool = False
    shard: str | None = None


class CancelRequest(msgspec.Struct, kw_only=True):
    """``POST /cancel``: a queued plan's experiment id; None cancels the running one."""

    experiment_id: str | None = None


class SqlRequest(msgspec.Struct, kw_only=True):
    """``POST /sql``: a read-only query, and at most how many rows to answer (None: the
    daemon's row limit, which also caps a larger one)."""

    sql: str
    limit: int | None = None


class WindowRequest(msgspec.Struct, kw_only=True):
    """``POST /windows``: a window to open now (``kind``: window | baseline), and either
    the baseline window it subtracts or ``baseline_s`` for the daemon to take one."""

    name: str | None = None
    # the caller's own labels (open-ended, as a JSON object)
    tags: dict[str, Any] | None = None
    kind: str | None = None  # None: window
    baseline_window_id: int | None = None
    baseline_s: float | None = None


# -- what the runner shows ---------------------------------------------------------------


class PlanEntry(msgspec.Struct, kw_only=True):
    """A plan the runner accepted: queued, or finished in this daemon's life (its outcome:
    done | cancelled | failed | interrupted; None while it has none)."""

    experiment_id: str
    plan_name: str
    units_total: int
    units_done: int
    resumed: bool = False
    outcome: str | None = None


class PlanSubmitted(PlanEntry, kw_only=True):
    """``POST /plans``: the plan as queued, and the experiments that run before it (the
    running one first)."""

    queued_behind: list[str] = msgspec.field(default_factory=list)


class UnitInfo(msgspec.Struct, kw_only=True):
    """The unit running now: its place in the run order (from 0), model, engine and
    provider (``configuration`` is ``engine/provider``), repetition (from 1), factors."""

    unit_id: int | None = None
    model: str
    engine: str = ""
    provider: str = ""
    configuration: str
    repetition: int
    # the plan's own factor names (open-ended: whatever the plan varies)
    factors: dict[str, Any] = msgspec.field(default_factory=dict)


class GridCell(msgspec.Struct, kw_only=True):
    """One (model, configuration) of the running plan: its units by state."""

    model: str
    configuration: str
    done: int = 0
    failed: int = 0
    running: int = 0
    total: int = 0


class ResultRow(msgspec.Struct, kw_only=True):
    """One configuration's medians over an experiment's finished units (measured or,
    for the domains in ``estimated_domains``, estimated): the live results table, the
    summary ``greenmon run`` prints, ``GET /experiments/{id}``."""

    configuration: str
    units: int = 0
    median_energy_j: float | None = None
    median_duration_s: float | None = None
    median_j_per_token: float | None = None
    flags: list[str] = msgspec.field(default_factory=list)
    # how many of the units ``background_load`` marks
    background_load_units: int = 0
    estimated_domains: list[str] = msgspec.field(default_factory=list)


class ServingStats(msgspec.Struct, kw_only=True):
    """A served unit's load so far in the current phase (an ``http/<server>`` engine):
    requests, tokens per second and latency quantiles, measured by the client side.
    ``concurrency`` for a closed loop, ``request_rate_hz`` for an open one."""

    requests_in_flight: int = 0
    requests_done: int = 0
    requests_failed: int = 0
    tokens_per_s: float | None = None
    latency_p50_s: float | None = None
    latency_p90_s: float | None = None
    ttft_p50_s: float | None = None
    concurrency: int | None = None
    request_rate_hz: float | None = None


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
    results: list[ResultRow] = msgspec.field(default_factory=list)
    last_error: str | None = None
    queue: list[PlanEntry] = msgspec.field(default_factory=list)
    finished: list[PlanEntry] = msgspec.field(default_factory=list)
    # a served unit's requests in flight, tokens/s and latency; None for in-process engines
    serving: ServingStats | None = None

    def outcome_of(self, experiment_id: str) -> str | None:
        """How the plan ``experiment_id`` ended, once it has."""
        for entry in self.finished:
            if entry.experiment_id == experiment_id:
                return entry.outcome
        return None


class ControlReply(msgspec.Struct, kw_only=True):
    """``POST /pause``, ``/resume``, ``/cancel``: accepted, and the progress after it."""

    ok: bool = True
    progress: Progress | None = None


# -- what the daemon shows ----------------------------------------------------------------


class ProbeStatus(msgspec.Struct, kw_only=True):
    """A probe's health as every stream snapshot carries it (cheap: no counts of reads,
    no jitter).  ``state``: starting | running | unavailable | lost | stopped; ``reason``
    says why a probe is unavailable."""

    probe: str
    state: str
    reason: str | None = None
    target_hz: float = 0.0
    achieved_hz: float = 0.0
    errors: int = 0
    missed_ticks: int = 0
    last_error: str | None = None


class ProbeStatusDetail(ProbeStatus, kw_only=True):
    """A probe's health as ``GET /status`` shows it: reads, samples, the sampling jitter
    (µs, over the recent reads) and the newest values by channel name."""

    reads: int = 0
    samples: int = 0
    jitter_p50_us: float | None = None
    jitter_p99_us: float | None = None
    last_t_ns: int | None = None
    last_values: dict[str, float | None] = msgspec.field(default_factory=dict)


class ChannelRow(msgspec.Struct, kw_only=True):
    """A registered channel of this session, and whether it answers for its domain (the
    ``energy_sources`` view's choice)."""

    channel_id: int
    probe: str
    name: str
    unit: str
    kind: str
    domain: str | None = None
    estimated: bool = False
    energy_source: bool = False
    # what the probe says about the channel (counter_range, device, ...); open-ended
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class WriterStats(msgspec.Struct, kw_only=True):
    """The writer's flushes since the store opened, and the recent ones' durations (ms)
    and sizes (rows)."""

    flushes: int = 0
    rows: int = 0
    recent_flushes: int = 0
    recent_ms_p50: float | None = None
    recent_ms_p99: float | None = None
    recent_rows_mean: float | None = None


class Snapshot(msgspec.Struct, kw_only=True):
    """One ``GET /stream`` line: the latest value of every channel as ``[channel_id, t_ns,
    value]``, cheap probe health and the runner's progress (None without a runner)."""

    t_ns: int
    session_id: str | None = None
    values: list[tuple[int, int, float]] = msgspec.field(default_factory=list)
    probes: Sequence[ProbeStatus] = msgspec.field(default_factory=list)
    progress: Progress | None = None


class Status(Snapshot, kw_only=True):
    """What ``Daemon.status`` adds to a snapshot: full probe health (with jitter), the
    writer's flush timings, the channel table and whether the daemon runs plans."""

    probes: Sequence[ProbeStatusDetail] = msgspec.field(default_factory=list)
    writer: WriterStats = msgspec.field(default_factory=WriterStats)
    channels: list[ChannelRow] = msgspec.field(default_factory=list)
    runner: bool = False


class DaemonStatus(Status, kw_only=True):
    """``GET /status``: the daemon's status, and the server's own pid, start (ns on the
    samples' clock; None before the session row is read), database and socket."""

    pid: int
    started_ns: int | None = None
    db_path: str
    socket_path: str


class DaemonEvent(msgspec.Struct, kw_only=True):
    """One event of this session (``level``: info | warning | error)."""

    t_ns: int
    level: str
    probe: str | None = None
    message: str


class EventList(msgspec.Struct, kw_only=True):
    """``GET /events?limit=N``: the session's newest events, oldest first."""

    events: list[DaemonEvent] = msgspec.field(default_factory=list)


# -- what the file holds ------------------------------------------------------------------


class ExperimentRow(msgspec.Struct, kw_only=True):
    """One experiment in the file with its unit counts (``GET /experiments``)."""

    experiment_id: str
    plan_name: str | None = None
    status: str | None = None
    created_ns: int | None = None
    finished_ns: int | None = None
    units_total: int = 0
    units_done: int = 0
    units_failed: int = 0


class ExperimentList(msgspec.Struct, kw_only=True):
    """``GET /experiments``: every experiment in the file, newest first."""

    experiments: list[ExperimentRow] = msgspec.field(default_factory=list)


class ExperimentSummary(msgspec.Struct, kw_only=True):
    """``GET /experiments/{id}``: the experiment's medians per configuration, one row per
    configuration (the columns of ``unit_results_for`` summarised; see the runner)."""

    experiment_id: str
    results: list[ResultRow] = msgspec.field(default_factory=list)


# -- named windows ------------------------------------------------------------------------


class OpenedWindow(msgspec.Struct, kw_only=True):
    """``POST /windows``, and each open window of ``GET /windows``: its id, name, kind
    (window | baseline), the caller's tags, start (ns on the samples' clock), seconds
    open so far and the baseline window it subtracts."""

    window_id: int
    name: str
    kind: str
    # the caller's own labels (open-ended, as a JSON object)
    tags: dict[str, Any] = msgspec.field(default_factory=dict)
    start_ns: int
    elapsed_s: float = 0.0
    baseline_window_id: int | None = None


class WindowResult(msgspec.Struct, kw_only=True, frozen=True):
    """A closed window's figures: ``POST /windows/{id}/close``, each recent window of
    ``GET /windows``, and what Monitor / ``greenmon measure`` show.

    ``energy_j``, ``dynamic_j``, ``baseline_w`` and ``mean_power_w`` are keyed by domain
    (cpu, dram, gpu, wall, and global = cpu + gpu); a domain no probe measured is absent.
    """

    window_id: int
    name: str
    kind: str
    tags: dict[str, Any] = msgspec.field(default_factory=dict)
    start_ns: int
    end_ns: int
    duration_s: float
    baseline_window_id: int | None = None
    energy_j: dict[str, float] = msgspec.field(default_factory=dict)
    dynamic_j: dict[str, float] = msgspec.field(default_factory=dict)
    baseline_w: dict[str, float] = msgspec.field(default_factory=dict)
    mean_power_w: dict[str, float] = msgspec.field(default_factory=dict)
    utilisation: dict[str, float] = msgspec.field(default_factory=dict)
    coverage: float | None = None
    flags: list[str] = msgspec.field(default_factory=list)
    # Domains whose energy is interpolated at the window's edges (a source that cannot
    # be read on demand, EnergiBridge); the others' counters were read at both edges.
    interpolated: list[str] = msgspec.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The figures by field name (``greenmon measure --json``)."""
        return msgspec.structs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowResult:
        return decode(data, cls)


class WindowListing(msgspec.Struct, kw_only=True):
    """``GET /windows``: the named windows open now and the most recent closed ones of
    this session, and the baseline the daemon took for it (None until one is)."""

    session_id: str | None = None
    open: list[OpenedWindow] = msgspec.field(default_factory=list)
    recent: list[WindowResult] = msgspec.field(default_factory=list)
    auto_baseline_window_id: int | None = None


def decode(data: Any, kind: type[T]) -> T:
    """A message of type ``kind`` from its JSON-decoded form (``dict`` from the wire)."""
    return msgspec.convert(data, kind)
