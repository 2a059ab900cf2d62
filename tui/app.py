"""The greenmon TUI: a live view of a daemon, through its API client only.

Views (keys 1-4): *live* (power per source over the last minutes with the runner's phase
shaded, utilisation gauges, the current unit), *plan* (models x configurations grid and the
results table), *health* (probes and the event log), *sql* (a read-only console).
``p`` / ``r`` pause and resume the plan; ``c`` twice within a few seconds cancels it;
``q`` quits; Escape leaves the SQL input so the view keys work again.  Quitting never
stops a daemon the TUI only attached to.

The plan view lists the daemon's queue and every experiment in the file; moving the
cursor onto one shows its medians per configuration.

Cost: the TUI runs on the machine it measures, so it draws only the visible view, at most
once a second, only what changed, and nothing while nothing changes; the chart (plotext,
the one expensive widget) plots at most a few points per column.

The app never touches the store: everything arrives through a ``DaemonLink`` (the API
client, or a fake with its shape in tests).  When the link fails the app says so, keeps
what it last saw, and reconnects when the daemon answers again.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ParamSpec, Protocol

import anyio
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, ScreenStackError
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import ContentSwitcher, DataTable, Footer, Input, Static
from textual_plotext import PlotextPlot

from greenmon.api.errors import ApiError
from greenmon.api.messages import (
    ControlReply,
    DaemonEvent,
    DaemonStatus,
    ExperimentRow,
    ResultRow,
    Snapshot,
    SqlResult,
    WindowListing,
)
from greenmon.tui.model import (
    HEALTH_COLUMNS,
    RESULT_COLUMNS,
    LiveModel,
    chart_bands,
    experiment_table,
    grid_table,
    health_rows,
    result_rows,
    unit_lines,
    window_lines,
)

VIEWS = ("live", "plan", "health", "sql")
# The screen is redrawn at most this often (htop's default is 1.5 s, top's 3 s): every
# redraw is CPU spent on the machine being measured, and at 1 s the text panels alone cost
# about 1.4% of a core (bench/tui.py).
DRAW_PERIOD_S = 2.0
# The chart (plotext, then its ANSI output parsed back) costs 15-40 ms a draw: every 5 s.
CHART_PERIOD_S = 5.0
EXPERIMENTS_PERIOD_S = 10.0
EXPERIMENT_COLUMNS = ("experiment", "plan", "status", "units done", "failed", "total")
CANCEL_CONFIRM_S = 3.0
EVENT_LIMIT = 200
WINDOW_LIMIT = 6
SERIES_COLORS = ("cyan", "orange", "green", "magenta", "yellow", "blue")



P = ParamSpec("P")

def _while_mounted(draw: Callable[P, None]) -> Callable[P, None]:
    """A draw that finds its widgets gone does nothing: a timer or worker can fire while
    the app tears its screen down, and the widgets go one by one, so any query may miss
    (NoMatches on #banner seen in a journey run).  A widget missing from a running app is
    still caught, by the snapshot and app tests, which look at what is drawn."""

    @functools.wraps(draw)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            draw(*args, **kwargs)
        except (NoMatches, ScreenStackError):
            return

    return guarded

class DaemonLink(Protocol):
    """What the app needs from the API client (greenmon.api.ApiClient has this shape)."""

    async def status(self) -> DaemonStatus: ...
    def stream(self) -> AsyncIterator[Snapshot]: ...
    async def events(self, limit: int = 100) -> list[DaemonEvent]: ...
    async def sql(self, query: str, limit: int | None = None) -> SqlResult: ...
    async def pause(self) -> ControlReply: ...
    async def resume(self) -> ControlReply: ...
    async def cancel(self, experiment_id: str | None = None) -> ControlReply: ...
    async def experiments(self) -> list[ExperimentRow]: ...
    async def experiment_results(self, experiment_id: str) -> list[ResultRow]: ...
    async def windows(self, limit: int = 20) -> WindowListing: ...
    async def close(self) -> None: ...


class PowerChart(PlotextPlot):  # type: ignore[misc]  # textual-plotext is untyped here
    """Power per source (W) against seconds before the newest sample."""

    def draw(self, model: LiveModel) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.xlabel("s before the newest sample")
        # One point per column: plotext's cost grows with the points, and a line across a
        # few minutes shows no more with two (braille's half-columns).
        columns = max(self.size.width, 40)
        series = model.chart_series(max_points=columns)
        if not series:
            plt.title("power (W): waiting for samples")
            self.refresh()
            return
        top_w = max(max(ws) for _, _, ws in series) * 1.1 or 1.0
        spans = model.phase_spans_s()
        # The x axis runs from the oldest sample shown to 0 (seconds before the newest).
        oldest_s = min(xs[0] for _, xs, _ in series)
        for phase, start_s, end_s, labelled in chart_bands(spans, oldest_s, columns):
            # A sparse band up to the chart's top marks each phase's extent; cooldowns
            # (the idle baseline) in blue, work phases in gray.
            shade = "blue" if "cooldown" in phase else "gray"
            plt.plot([start_s, end_s], [top_w, top_w], fillx=True, color=shade, marker="·")
            if labelled:
                plt.text(phase, x=start_s, y=top_w * 0.05, color=shade, alignment="left")
        for index, (label, xs, ws) in enumerate(series):
            color = SERIES_COLORS[index % len(SERIES_COLORS)]
            plt.plot(xs, ws, label=label, color=color, marker="braille")
        current = spans[-1][0] if spans else None
        plt.title("power (W)" + (f"   shaded: phase {current}" if current else ""))
        plt.ylim(0, top_w)
        self.refresh()


def gauge_text(values: dict[str, float | None], width: int = 12) -> Text:
    text = Text()
    for label, value in values.items():
        text.append(f"{label:<11}")
        if value is None:
            text.append("n/a\n", style="dim")
            continue
        filled = round(max(0.0, min(100.0, value)) / 100 * width)
        text.append(f"{value:5.1f}% ")
        text.append("█" * filled, style="green" if value < 80 else "red")
        text.append("░" * (width - filled) + "\n", style="dim")
    return text


def power_text(model: LiveModel) -> Text:
    text = Text()
    for label, watts in model.power_now():
        reading = "-" if watts is None else f"{watts:7.2f} W"
        text.append(f"{reading}  {label}\n")
    return text


class GreenmonApp(App[str]):
    TITLE = "greenmon"
    CSS = """
    #banner { height: 1; padding: 0 1; background: $panel; }
    #banner.lost { background: $error; color: $text; }
    #live-chart { height: 1fr; min-height: 10; }
    #live-side { height: 11; }
    #live-side > Static { height: 100%; }
    #unit { width: 1fr; border: round $primary; padding: 0 1; }
    #gauges { width: 34; border: round $primary; padding: 0 1; }
    #power-now { width: 1fr; border: round $primary; padding: 0 1; }
    #windows { width: 1fr; border: round $primary; padding: 0 1; }
    .title { padding: 0 1; text-style: bold; }
    #grid { height: auto; max-height: 50%; }
    #experiments { height: auto; max-height: 12; }
    #results { height: 1fr; }
    #health-table { height: 1fr; }
    #events { height: 2fr; }
    #sql-status { height: auto; padding: 0 1; }
    #sql-table { height: 1fr; }
    """
    BINDINGS = [  # noqa: RUF012 (textual's declared type)
        Binding("1", "show('live')", "Live"),
        Binding("2", "show('plan')", "Plan"),
        Binding("3", "show('health')", "Health"),
        Binding("4", "show('sql')", "SQL"),
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("c", "cancel", "Cancel (twice)"),
        Binding("q", "quit", "Quit"),
        Binding("escape", "leave_input", "Leave input", show=False),
    ]

    def __init__(
        self,
        link: DaemonLink,
        *,
        owns_daemon: bool = False,
        where: str = "",
        reconnect_s: float = 1.0,
        events_every_s: float = 2.0,
        windows_every_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.link = link
        self.owns_daemon = owns_daemon
        self.where = where
        self.reconnect_s = reconnect_s
        self.events_every_s = events_every_s
        self.windows_every_s = windows_every_s
        self.model = LiveModel()
        self.connected = False
        self.disconnects = 0
        self.last_error = ""
        self._cancel_armed_at: float | None = None
        self._shown: dict[str, Any] = {}
        self._drawn_s = 0.0
        self._chart_drawn_s = 0.0
        self._stale = True
        self._draw_timer_set = False
        self._finished_seen: tuple[str, ...] = ()
        self._chosen_experiment: str | None = None
        self._experiment_rows: list[ExperimentRow] = []
        self._results_of: str | None = None
        self._experiment_results: list[ResultRow] = []

    # -- layout --------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("connecting to the daemon…", id="banner")
        with ContentSwitcher(initial="live", id="views"):
            with Vertical(id="live"):
                yield PowerChart(id="live-chart")
                with Horizontal(id="live-side"):
                    yield Static("", id="unit")
                    yield Static("", id="gauges")
                    yield Static("", id="power-now")
                    yield Static("", id="windows")
            with Vertical(id="plan"):
                yield Static("plan: models x configurations (repetitions)", classes="title")
                yield DataTable(id="grid", zebra_stripes=True, cursor_type="none")
                yield Static("experiments (running, queued, then the file's)", classes="title")
                yield DataTable(id="experiments", zebra_stripes=True, cursor_type="row")
                yield Static(
                    "results (median per configuration)", classes="title", id="results-title"
                )
                yield DataTable(id="results", zebra_stripes=True, cursor_type="none")
            with Vertical(id="health"):
                yield Static("probes", classes="title")
                yield DataTable(id="health-table", cursor_type="none")
                yield Static("events", classes="title")
                yield DataTable(id="events", cursor_type="row")
            with Vertical(id="sql"):
                yield Input(placeholder="SELECT … (read-only; Enter runs)", id="sql-input")
                yield Static("", id="sql-status")
                yield DataTable(id="sql-table", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#unit", Static).border_title = "current unit"
        self.query_one("#gauges", Static).border_title = "utilisation"
        self.query_one("#power-now", Static).border_title = "power now"
        self.query_one("#windows", Static).border_title = "named windows"
        self.query_one("#results", DataTable).add_columns(*RESULT_COLUMNS)
        self.query_one("#experiments", DataTable).add_columns(*EXPERIMENT_COLUMNS)
        self.query_one("#health-table", DataTable).add_columns(*HEALTH_COLUMNS)
        self.query_one("#events", DataTable).add_columns("t (s)", "level", "probe", "message")
        self._draw_all()
        self.follow_daemon()
        self.poll_events()
        self.poll_experiments()
        self.poll_windows()

    async def on_unmount(self) -> None:
        await self.link.close()

    # -- following the daemon --------------------------------------------------------------
    @work(exclusive=True, group="follow")
    async def follow_daemon(self) -> None:
        while True:
            try:
                status = await self.link.status()
                self.model.set_status(status)
                self._set_connected(True, status)
                self._draw_all()
                async for snap in self.link.stream():
                    self.model.ingest(snap)
                    self._stale = True
                    self._draw_soon()
                    self._note_finished()
                raise ApiError("the daemon closed the stream")
            except ApiError as error:
                self._set_connected(False, error=str(error))
            except Exception as error:  # a malformed answer must not end the viewer
                self._set_connected(False, error=f"{type(error).__name__}: {error}")
            await self._sleep(self.reconnect_s)

    @work(exclusive=True, group="events")
    async def poll_events(self) -> None:
        while True:
            # Events are fetched only while the health view shows them (and once at start).
            visible = self._current_view() == "health"
            if self.connected and (visible or not self._shown.get("events")):
                try:
                    events = await self.link.events(EVENT_LIMIT)
                except ApiError:
                    pass  # the follow worker reports the connection
                else:
                    self._draw_events(events)
            await self._sleep(self.events_every_s)

    @work(exclusive=True, group="experiments")
    async def poll_experiments(self) -> None:
        """Every experiment in the file: at start, when a plan ends, and now and then."""
        while True:
            if self.connected:
                try:
                    rows = await self.link.experiments()
                    chosen = self._chosen_experiment or self._default_experiment(rows)
                    results = await self.link.experiment_results(chosen) if chosen else []
                except ApiError:
                    pass
                else:
                    self._experiment_rows = rows
                    self._results_of, self._experiment_results = chosen, results
                    self._draw_plan()
            await self._sleep(EXPERIMENTS_PERIOD_S)

    @work(exclusive=True, group="windows")
    async def poll_windows(self) -> None:
        """Open and recent named windows, while the live view shows them."""
        while True:
            visible = self._current_view() == "live"
            if self.connected and visible:
                try:
                    listing = await self.link.windows(WINDOW_LIMIT)
                except ApiError:
                    pass  # the follow worker reports the connection
                else:
                    self._update_static("windows", "\n".join(window_lines(listing)))
            await self._sleep(self.windows_every_s)

    def _default_experiment(self, rows: Sequence[ExperimentRow]) -> str | None:
        running = self.model.progress.experiment_id if self.model.progress else None
        if running:
            return None  # the running plan's results come with every snapshot
        return rows[0].experiment_id if rows else None

    def _note_finished(self) -> None:
        progress = self.model.progress
        finished = tuple(f.experiment_id for f in progress.finished) if progress else ()
        if finished != self._finished_seen:
            self._finished_seen = finished
            self.poll_experiments()

    @on(DataTable.RowHighlighted, "#experiments")
    def choose_experiment(self, event: DataTable.RowHighlighted) -> None:
        if not event.data_table.has_focus:
            return  # the table was redrawn, not moved by the person
        key = event.row_key.value
        if key and key != self._chosen_experiment:
            self._chosen_experiment = key
            self._load_results(key)

    @work(exclusive=True, group="results")
    async def _load_results(self, experiment_id: str) -> None:
        try:
            results = await self.link.experiment_results(experiment_id)
        except ApiError as error:
            self.notify(error.message, title="results", severity="error")
            return
        self._results_of, self._experiment_results = experiment_id, results
        self._draw_plan()

    async def _sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    @_while_mounted
    def _set_connected(
        self, connected: bool, status: DaemonStatus | None = None, error: str = ""
    ) -> None:
        if self._current_view() is None:
            return  # closing: the banner is gone
        banner = self.query_one("#banner", Static)
        if connected and status is not None:
            self.connected = True
            owner = "in-process daemon" if self.owns_daemon else "daemon"
            banner.update(
                f"{owner} pid {status.pid}  db {status.db_path}  "
                f"session {str(status.session_id)[:8]}"
            )
            banner.remove_class("lost")
            return
        if self.connected or not self.disconnects:
            self.disconnects += 1
        self.connected = False
        self.last_error = error
        banner.update(
            f"daemon connection lost ({error}); reconnecting every {self.reconnect_s:g} s"
        )
        banner.add_class("lost")

    # -- drawing ------------------------------------------------------------------------
    def _draw_all(self) -> None:
        self._draw_live()
        self._draw_plan()
        self._draw_health()

    def _current_view(self) -> str | None:
        """The view on screen; None while the app is closing (a timer or worker that
        fires then finds no widgets, and must draw nothing rather than fail)."""
        try:
            return self.query_one("#views", ContentSwitcher).current
        except (NoMatches, ScreenStackError):
            return None

    def _draw_visible(self) -> None:
        """Only the view on screen is drawn; the others catch up when shown."""
        view = self._current_view()
        if view == "live":
            self._draw_live()
        elif view == "plan":
            self._draw_plan()
        elif view == "health":
            self._draw_health()

    @_while_mounted
    def _draw_live(self) -> None:
        model = self.model
        now_s = time.monotonic()
        if now_s - self._chart_drawn_s >= CHART_PERIOD_S or not self._chart_drawn_s:
            # The chart is most of a draw's cost: none while no sample or phase is new (a
            # paused daemon, a stalled stream).
            chart_key = (model.session_id, model.latest_ns, len(model.phases))
            if self._changed("live-chart", chart_key):
                self.query_one("#live-chart", PowerChart).draw(model)
            self._chart_drawn_s = now_s
        self._update_static("unit", "\n".join(unit_lines(model.progress)))
        self._update_static("gauges", gauge_text(model.gauges()))
        self._update_static("power-now", power_text(model))

    @property
    def draw_pending(self) -> bool:
        """Data arrived that the screen does not show yet (it will within DRAW_PERIOD_S)."""
        return self._stale

    def _draw_soon(self) -> None:
        """Draw the visible view now if it was not drawn in the last DRAW_PERIOD_S, else
        once by a timer, so the newest data is always drawn even if no more arrives."""
        if not self._stale or self._draw_timer_set:
            return
        wait_s = self._drawn_s + DRAW_PERIOD_S - time.monotonic()
        if wait_s > 0:
            self._draw_timer_set = True
            self.set_timer(wait_s, self._draw_timer)
            return
        self._draw_visible()
        self._drawn_s = time.monotonic()
        self._stale = False

    def _draw_timer(self) -> None:
        self._draw_timer_set = False
        self._draw_soon()

    @_while_mounted
    def _update_static(self, name: str, content: str | Text) -> None:
        key = content.plain if isinstance(content, Text) else content
        if self._current_view() is None:
            return  # closing: nothing left to draw on
        if self._changed(name, key):
            # No layout pass: these panels have fixed sizes (CSS), so new text never
            # moves anything, and a layout pass costs more than the text itself.
            self.query_one(f"#{name}", Static).update(content, layout=False)

    def _changed(self, key: str, value: Any) -> bool:
        """Tables are rebuilt only when their content changes, keeping scroll and cursor."""
        if self._shown.get(key) == value:
            return False
        self._shown[key] = value
        return True

    @_while_mounted
    def _draw_plan(self) -> None:
        configurations, rows = grid_table(self.model.progress)
        if self._changed("grid", (configurations, rows)):
            grid = self.query_one("#grid", DataTable)
            grid.clear(columns=True)
            grid.add_columns("model", *configurations)
            for model_name, cells in rows:
                grid.add_row(model_name, *cells)
        experiments = experiment_table(self.model.progress, self._experiment_rows)
        if self._changed("experiments", experiments):
            table = self.query_one("#experiments", DataTable)
            table.clear()
            for experiment in experiments:
                table.add_row(*experiment, key=experiment[0])
        progress = self.model.progress
        running = progress.experiment_id if progress is not None else None
        shown: str | None
        if progress is not None and running and self._chosen_experiment in (None, running):
            shown, results = running, result_rows(progress.results)
        else:
            shown, results = self._results_of, result_rows(self._experiment_results)
        title = f"results of {shown} (median per configuration)" if shown else "results"
        self._update_static("results-title", title)
        if self._changed("results", results):
            table = self.query_one("#results", DataTable)
            table.clear()
            for row in results:
                table.add_row(*row)

    @_while_mounted
    def _draw_health(self) -> None:
        rows = health_rows(self.model.probes)
        if self._changed("health", rows):
            table = self.query_one("#health-table", DataTable)
            table.clear()
            for row in rows:
                table.add_row(*row)

    @_while_mounted
    def _draw_events(self, events: Sequence[DaemonEvent]) -> None:
        status = self.model.status
        started_ns = status.started_ns if status is not None else None
        rows = [
            (
                f"{(e.t_ns - started_ns) / 1e9:.1f}" if started_ns else str(e.t_ns),
                e.level,
                e.probe or "",
                e.message,
            )
            for e in events
        ]
        if self._changed("events", rows):
            table = self.query_one("#events", DataTable)
            table.clear()
            for row in rows:
                table.add_row(*row)
            if rows:
                table.move_cursor(row=len(rows) - 1)

    # -- actions ------------------------------------------------------------------------
    def action_show(self, view: str) -> None:
        self.query_one("#views", ContentSwitcher).current = view
        if view == "sql":
            self.query_one("#sql-input", Input).focus()
        else:
            self._chart_drawn_s = 0.0  # a view shown anew is drawn whole
            self._draw_visible()

    def action_leave_input(self) -> None:
        """Escape: the SQL input lets go of the keyboard, so 1-4, p, r, c and q work again."""
        self.set_focus(None)

    async def action_pause(self) -> None:
        await self._control("pause")

    async def action_resume(self) -> None:
        await self._control("resume")

    async def action_cancel(self) -> None:
        now_s = time.monotonic()
        if self._cancel_armed_at is None or now_s - self._cancel_armed_at > CANCEL_CONFIRM_S:
            self._cancel_armed_at = now_s
            self.notify("Press c again to cancel the plan.", title="cancel?", timeout=3)
            return
        self._cancel_armed_at = None
        await self._control("cancel")

    async def _control(self, action: str) -> None:
        try:
            await getattr(self.link, action)()
        except ApiError as error:
            self.notify(error.message, title=f"{action} failed", severity="error")
        else:
            self.notify(f"{action} sent to the daemon", timeout=2)

    async def action_quit(self) -> None:
        if self.owns_daemon:
            message = "greenmon tui: stopping the in-process daemon (it flushes its samples)."
        elif not self.connected:
            # It went away while watched (its plan ended, or it was stopped): say so, not
            # that it keeps running.
            message = (
                "greenmon tui: detached; no daemon answers"
                + (f" at {self.where}" if self.where else "")
                + " any more (it stopped, or its plan ended)."
            )
        else:
            message = (
                "greenmon tui: detached; the daemon keeps running"
                + (f" at {self.where}" if self.where else "")
                + ". Stop it with Ctrl-C where it runs, or SIGTERM."
            )
        self.exit(message)

    # -- SQL console ---------------------------------------------------------------------
    @on(Input.Submitted, "#sql-input")
    def run_query(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self._query(event.value)

    @work(exclusive=True, group="sql")
    async def _query(self, sql: str) -> None:
        status = self.query_one("#sql-status", Static)
        table = self.query_one("#sql-table", DataTable)
        status.update("running…")
        try:
            result = await self.link.sql(sql)
        except ApiError as error:
            status.update(Text(f"{error.title}: {error.message}", style="bold red"))
            return
        table.clear(columns=True)
        table.add_columns(*result.columns)
        for row in result.rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        more = " (truncated: narrow the query or add LIMIT)" if result.truncated else ""
        status.update(f"{len(result.rows)} rows{more}")
