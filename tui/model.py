"""What the TUI shows, computed from the API's status and stream snapshots (no textual).

Terms:
- *source*: the channel that answers for a domain (``cpu`` = CPU package, ``dram``,
  ``gpu``, ``wall``) as the store's ``energy_sources`` view chose it (the daemon marks
  it in its channel table); each is one line on the power chart, so the chart shows
  what the results add up.
- *power*: a counter's rate between readings or a gauge's value (greenmon/livepower.py).
- *phase span*: the runner's phase between the stream snapshots that saw it begin and end,
  on the daemon's monotonic clock, for shading the chart.
- Times are seconds relative to the newest sample (``t_s <= 0``), so nothing depends on
  the viewer's clock.

What the model and the views read are the typed messages of greenmon/api/messages.py, as
the API client decoded them: a field the daemon renamed fails at the client with a
message, not as a KeyError in a view.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from greenmon.api.messages import (
    DaemonStatus,
    ExperimentRow,
    GridCell,
    ProbeStatus,
    Progress,
    ResultRow,
    ServingStats,
    Snapshot,
    WindowListing,
)
from greenmon.estimates import domains_of, mark
from greenmon.livepower import ChannelInfo, reading_power_w

WINDOW_S = 300.0

# Utilisation gauges: the first channel whose name matches wins.
GAUGE_PATTERNS: dict[str, re.Pattern[str]] = {
    "CPU": re.compile(r"^cpu\.(percent|utilisation_percent)$"),
    "RAM": re.compile(r"^ram\.percent$"),
    "GPU": re.compile(r"^gpu\d+\.util_gpu_percent$"),
    "GPU memory": re.compile(r"^gpu\d+\.memory_percent$"),
}


@dataclass
class PowerSeries:
    channel: ChannelInfo
    points: deque[tuple[int, float]] = field(default_factory=deque)  # (t_ns, power_w)

    @property
    def latest_w(self) -> float | None:
        return self.points[-1][1] if self.points else None


@dataclass
class PhaseSpan:
    phase: str
    start_ns: int
    end_ns: int | None = None


class LiveModel:
    """The latest state of a daemon as the TUI sees it; fed by ``set_status``/``ingest``."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_ns = int(window_s * 1e9)
        self.channels: dict[int, ChannelInfo] = {}
        self.series: dict[int, PowerSeries] = {}
        self.last_reading: dict[int, tuple[int, float]] = {}
        self.values: dict[int, float] = {}
        self.phases: deque[PhaseSpan] = deque()
        self.progress: Progress | None = None
        self.probes: list[ProbeStatus] = []
        self.status: DaemonStatus | None = None
        self.latest_ns: int | None = None
        self.snapshots = 0

    @property
    def session_id(self) -> str | None:
        return self.status.session_id if self.status is not None else None

    def set_status(self, status: DaemonStatus) -> None:
        """A (re)connection: channel ids are per session, so start the series afresh."""
        channels = [ChannelInfo.from_status(row) for row in status.channels]
        if status.session_id != self.session_id:
            self.series.clear()
            self.last_reading.clear()
            self.values.clear()
            self.phases.clear()
            self.latest_ns = None
        self.status = status
        self.channels = {c.channel_id: c for c in channels}
        for info in channels:
            if info.is_source and info.channel_id not in self.series:
                self.series[info.channel_id] = PowerSeries(info)
        self.progress = status.progress
        self.probes = list(status.probes)

    def ingest(self, snap: Snapshot) -> None:
        """One stream snapshot."""
        self.snapshots += 1
        for channel_id, t_ns, value in snap.values:
            self._reading(channel_id, t_ns, value)
        self.probes = list(snap.probes)
        self.progress = snap.progress
        self._phase(snap.t_ns, self.progress.phase if self.progress is not None else None)
        self._trim()

    def _reading(self, channel_id: int, t_ns: int, value: float) -> None:
        info = self.channels.get(channel_id)
        if info is None:
            return
        previous = self.last_reading.get(channel_id)
        if previous is not None and t_ns <= previous[0]:
            return  # the same reading as in the last snapshot
        self.last_reading[channel_id] = (t_ns, value)
        self.values[channel_id] = value
        self.latest_ns = t_ns if self.latest_ns is None else max(self.latest_ns, t_ns)
        series = self.series.get(channel_id)
        if series is None:
            return
        power_w = reading_power_w(info, previous, (t_ns, value))
        if power_w is not None:
            series.points.append((t_ns, power_w))

    def _phase(self, t_ns: int, phase: str | None) -> None:
        current = self.phases[-1] if self.phases else None
        if current is not None and current.end_ns is None and current.phase != phase:
            current.end_ns = t_ns
            current = None
        if phase and (current is None or current.end_ns is not None):
            self.phases.append(PhaseSpan(phase, t_ns))

    def _trim(self) -> None:
        if self.latest_ns is None:
            return
        horizon_ns = self.latest_ns - self.window_ns
        for series in self.series.values():
            while series.points and series.points[0][0] < horizon_ns:
                series.points.popleft()
        while self.phases and (self.phases[0].end_ns or self.latest_ns) < horizon_ns:
            self.phases.popleft()

    # -- views -------------------------------------------------------------------------
    def chart_series(
        self, max_points: int | None = None
    ) -> list[tuple[str, list[float], list[float]]]:
        """(label, t_s, power_w) per source, t_s relative to the newest sample.

        ``max_points``: at most about this many points per series (every k-th, the newest
        always kept) — a terminal chart cannot show more, and plotting costs per point.
        """
        if self.latest_ns is None:
            return []
        latest = self.latest_ns
        out = []
        for series in self.series.values():
            points = list(series.points)
            if not points:
                continue
            if max_points and len(points) > max_points:
                step = -(-len(points) // max_points)
                points = points[::-1][::step][::-1]
            xs = [(t - latest) / 1e9 for t, _ in points]
            out.append((series.channel.label, xs, [w for _, w in points]))
        return out

    def phase_spans_s(self) -> list[tuple[str, float, float]]:
        if self.latest_ns is None:
            return []
        latest = self.latest_ns
        return [
            (
                span.phase,
                max((span.start_ns - latest) / 1e9, -self.window_ns / 1e9),
                ((span.end_ns or latest) - latest) / 1e9,
            )
            for span in self.phases
        ]

    def gauges(self) -> dict[str, float | None]:
        found: dict[str, float | None] = dict.fromkeys(GAUGE_PATTERNS)
        for channel_id, info in sorted(self.channels.items()):
            for label, pattern in GAUGE_PATTERNS.items():
                if found[label] is None and pattern.match(info.name):
                    found[label] = self.values.get(channel_id)
        return found

    def power_now(self) -> list[tuple[str, float | None]]:
        return [(s.channel.label, s.latest_w) for s in self.series.values()]


def chart_bands(
    spans: Iterable[tuple[str, float, float]], oldest_s: float, columns: int
) -> list[tuple[str, float, float, bool]]:
    """The phase bands worth drawing on a chart whose x axis runs from ``oldest_s`` to 0
    over ``columns`` columns: (phase, start_s, end_s, labelled), each clipped to the axis.
    A phase narrower than a column cannot be seen, and each band costs the chart a plot
    (a plan of sub-second phases gave about 100 a draw): none for those.  A band is
    labelled only where its name fits inside it."""
    column_s = -oldest_s / max(columns, 1)
    bands = []
    for phase, span_start_s, end_s in spans:
        start_s = max(span_start_s, oldest_s)
        width_s = end_s - start_s
        if width_s <= 0 or width_s < column_s:
            continue
        bands.append((phase, start_s, end_s, width_s >= (len(phase) + 1) * column_s))
    return bands


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def unit_lines(progress: Progress | None) -> list[str]:
    """The current unit panel's text."""
    if progress is None:
        return ["The daemon's runner is starting."]
    queued = [f"queued: {q.plan_name} ({q.experiment_id})" for q in progress.queue]
    if progress.experiment_id is None:
        return ["idle: waiting for a plan (greenmon run PLAN --db FILE)", *queued]
    lines = [
        f"plan {progress.plan_name or '-'}  ({progress.experiment_id or '-'})"
        f"  status {progress.status}"
    ]
    unit = progress.unit
    index, total = progress.unit_index, progress.units_total
    if unit is not None:
        lines.append(
            f"unit {index}/{total}: {unit.model}  {unit.configuration}"
            f"  repetition {unit.repetition}"
        )
        phase = progress.phase or "-"
        if progress.phase_remaining_s is not None:
            phase += f" ({format_duration(progress.phase_remaining_s)} left)"
        request = ""
        if progress.requests_total:
            request = f"  request {progress.request_index}/{progress.requests_total}"
        lines.append(f"phase {phase}{request}")
    elif total:
        lines.append(f"units {index}/{total}")
    lines.append(f"plan ETA {format_duration(progress.eta_s)}")
    if progress.serving:  # a served unit's load, live
        lines.append(serving_line(progress.serving))
    if progress.last_error:
        lines.append(f"last error: {progress.last_error}")
    return lines + queued


def serving_line(serving: ServingStats) -> str:
    """A served unit (http engine): requests in flight, tokens per second, latency."""

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{float(value):.2f}s"

    rate = serving.tokens_per_s
    return (
        f"served: {serving.requests_in_flight} in flight, "
        f"{serving.requests_done} done, "
        f"{'-' if rate is None else f'{float(rate):.1f}'} tok/s, "
        f"latency p50 {seconds(serving.latency_p50_s)} p90 {seconds(serving.latency_p90_s)}, "
        f"TTFT p50 {seconds(serving.ttft_p50_s)}"
    )


def window_lines(listing: WindowListing, limit: int = 6) -> list[str]:
    """Named windows: the open ones with their age, then the recent closed ones
    with duration, energy per domain and flags."""
    lines = [f"▶ {w.name}  {w.elapsed_s:.1f}s open" for w in listing.open]
    for r in listing.recent[:limit]:
        energy = ", ".join(f"{d} {j:.2f} J" for d, j in sorted(r.energy_j.items()))
        flags = ", ".join(r.flags)
        lines.append(
            f"{r.name}  {r.duration_s:.2f}s  {energy or '-'}" + (f"  [{flags}]" if flags else "")
        )
    return lines[:limit] or ["no named windows yet (greenmon measure, Monitor.window)"]


def experiment_table(
    progress: Progress | None, experiments: Iterable[ExperimentRow]
) -> list[tuple[str, ...]]:
    """Rows of the experiments table: the running experiment, the daemon's queue, then
    every other experiment in the file.

    The running experiment's counts come from the live progress (the file's are written
    per unit, and its list is polled only now and then); queued ones that are not in the
    file's list yet come from the queue.
    """
    progress = progress or Progress()
    rows: list[tuple[str, ...]] = []
    seen: set[str] = set()
    running = progress.experiment_id
    if running:
        # the file's list is polled now and then; the running plan is in every snapshot
        grid = progress.grid
        rows.append(
            (running, str(progress.plan_name), progress.status,
             str(sum(c.done for c in grid)),
             str(sum(c.failed for c in grid)),
             str(progress.units_total))
        )  # fmt: skip
        seen.add(running)
    for queued in progress.queue:
        rows.append(
            (queued.experiment_id, queued.plan_name, "queued",
             str(queued.units_done), "-", str(queued.units_total))
        )  # fmt: skip
        seen.add(queued.experiment_id)
    for row in experiments:
        if row.experiment_id in seen:
            continue
        rows.append(
            (row.experiment_id, str(row.plan_name), str(row.status),
             str(row.units_done), str(row.units_failed), str(row.units_total))
        )  # fmt: skip
    return rows


def grid_table(
    progress: Progress | None,
) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(configurations, [(model, cells)]) for the plan grid."""
    cells: dict[tuple[str, str], GridCell] = {}
    models: list[str] = []
    configurations: list[str] = []
    for counts in progress.grid if progress is not None else []:
        model, configuration = counts.model, counts.configuration
        if model not in models:
            models.append(model)
        if configuration not in configurations:
            configurations.append(configuration)
        cells[(model, configuration)] = counts
    rows = []
    for model in models:
        row = []
        for configuration in configurations:
            cell = cells.get((model, configuration))
            row.append(grid_cell(cell) if cell else "")
        rows.append((model, row))
    return configurations, rows


def grid_cell(cell: GridCell) -> str:
    text = f"{cell.done}/{cell.total} done"
    if cell.failed:
        text += f" {cell.failed} failed"
    if cell.running:
        text += " ▶ running"
    return text


RESULT_COLUMNS = ("configuration", "units", "median J", "median s", "J/token", "flags")


def result_rows(results: Iterable[ResultRow]) -> list[tuple[str, ...]]:
    """The results table: one row per configuration's medians (a progress's ``results``,
    or an experiment's summary)."""

    def number(row: ResultRow, column: str, value: float | None, digits: int) -> str:
        if value is None:
            return "-"
        return mark(f"{float(value):.{digits}f}", column, domains_of(row.estimated_domains))

    return [
        (
            row.configuration,
            str(row.units),
            number(row, "median_energy_j", row.median_energy_j, 1),
            number(row, "median_duration_s", row.median_duration_s, 2),
            number(row, "median_j_per_token", row.median_j_per_token, 4),
            ", ".join(_flag_text(f, row) for f in row.flags) or "ok",
        )
        for row in results
    ]


def _flag_text(flag: str, row: ResultRow) -> str:
    """Background_load says how many of the configuration's units it marks."""
    count = row.background_load_units
    return f"{flag} ({count} units)" if flag == "background_load" and count else flag


HEALTH_COLUMNS = ("probe", "state", "achieved/target Hz", "errors", "missed", "last error")


def health_rows(probes: Iterable[ProbeStatus]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for probe in probes:
        if probe.state == "unavailable":
            rate = "-"
        else:
            rate = f"{probe.achieved_hz:.1f}/{probe.target_hz:g}"
        rows.append(
            (
                probe.probe,
                probe.state,
                rate,
                str(probe.errors),
                str(probe.missed_ticks),
                probe.last_error or probe.reason or "",
            )
        )
    return rows
