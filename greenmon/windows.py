"""Named windows: a user's interval on the samples' clock, kept by the daemon.

Terms:
- *window*: a name, tags (a JSON object) and ``[start_ns, end_ns]`` on the monotonic clock
  of the samples, stored in the ``windows`` table when it opens; its figures are the view
  ``window_results`` (greenmon/views.py), computed by the same energy SQL as a runner's
  phases (greenmon/energy.py) with the same rule for which channel answers for a domain.
- *baseline window*: an idle window (kind ``baseline``) whose mean power per domain other
  windows subtract (dynamic energy).  A caller names one by id, or asks the daemon to take
  one of ``baseline_s`` seconds before its first window (kept for the session).
- *edges*: a window starts and ends at an edge read (``Daemon.edge_ns``): the counters
  that can be read on demand are read at that instant, so the window's energy from them is
  their exact difference; a stream that cannot be asked (EnergiBridge) is interpolated.
- *closing*: the end is stamped on arrival, by its edge read; the daemon then asks every
  sampler for its samples up to that instant and the writer to flush them (``Daemon.flush``), so the
  figures returned by a close are complete, and the same as DuckDB gives afterwards.

``windows_service()`` attaches a ``WindowRegistry`` to a daemon as ``daemon.windows``;
the API's routes (greenmon/windows_api.py) call it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from greenmon.api.messages import OpenedWindow, WindowListing, WindowResult
from greenmon.clock import now_ns
from greenmon.errors import GreenmonError
from greenmon.sampling import HANDOFF_POLL_S, HANDOFF_WAIT_MAX_S
from greenmon.store import Event, SampleBatch
from greenmon.views import UTILISATION_QUANTITIES

if TYPE_CHECKING:
    from greenmon.protocols import WindowHost
    from greenmon.store import Store

DOMAINS = ("cpu", "dram", "gpu", "wall", "global")
RECENT_WINDOWS = 20
CACHED_WINDOWS = 1000


class WindowError(GreenmonError):
    title = "Window"


@dataclass(frozen=True)
class OpenWindow:
    window_id: int
    name: str
    kind: str
    tags: dict[str, Any]
    start_ns: int
    baseline_window_id: int | None

    def message(self) -> OpenedWindow:
        """The window as the API shows it, with the seconds it has been open."""
        return OpenedWindow(
            window_id=self.window_id,
            name=self.name,
            kind=self.kind,
            tags=self.tags,
            start_ns=self.start_ns,
            elapsed_s=(now_ns() - self.start_ns) / 1e9,
            baseline_window_id=self.baseline_window_id,
        )


def window_result_from_row(row: Mapping[str, Any]) -> WindowResult:
    """A closed window's figures from a row of ``window_results`` (column name -> value)."""

    def number(value: Any) -> float | None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return float(value)

    def per_domain(pattern: str) -> dict[str, float]:
        values = {d: number(row.get(pattern.format(d))) for d in DOMAINS}
        return {d: v for d, v in values.items() if v is not None}

    duration_s = float(row["duration_s"])
    energy = per_domain("energy_{}_j")
    tags = row.get("tags")
    return WindowResult(
        window_id=int(row["window_id"]),
        name=str(row["name"]),
        kind=str(row["kind"]),
        tags=json.loads(tags) if isinstance(tags, str) else dict(tags or {}),
        start_ns=int(row["start_ns"]),
        end_ns=int(row["end_ns"]),
        duration_s=duration_s,
        baseline_window_id=row.get("baseline_window_id"),
        energy_j=energy,
        dynamic_j=per_domain("dynamic_{}_j"),
        baseline_w=per_domain("baseline_{}_w"),
        mean_power_w={d: e / duration_s for d, e in energy.items()} if duration_s else {},
        utilisation={
            q: v
            for q, v in ((q, number(row.get(q))) for q in UTILISATION_QUANTITIES)
            if v is not None
        },
        coverage=number(row.get("min_coverage")),
        flags=list(row.get("flags") or []),
        interpolated=sorted(row.get("interpolated_domains") or []),
    )


def window_results(store: Store, window_ids: Sequence[int]) -> list[WindowResult]:
    """Figures of closed windows from the view (blocking: run in a worker thread)."""
    if not window_ids:
        return []
    columns, rows = store.query(
        "SELECT * FROM window_results_for(?) ORDER BY window_id", [list(window_ids)]
    )
    return [window_result_from_row(dict(zip(columns, row, strict=True))) for row in rows]


class WindowRegistry:
    """The daemon's open windows; opens, closes and lists them (from the event loop)."""

    def __init__(self, daemon: WindowHost) -> None:
        self.daemon = daemon
        self.store = daemon.store
        self.open: dict[int, OpenWindow] = {}
        self.auto_baseline_id: int | None = None
        self._baseline_lock = anyio.Lock()
        # A closed window's figures never change: GET /windows (a viewer polls it) computes
        # each one once.
        self._closed: dict[int, WindowResult] = {}

    # -- opening -----------------------------------------------------------------------
    async def open_window(
        self,
        name: str,
        tags: Mapping[str, Any] | None = None,
        *,
        kind: str = "window",
        baseline_window_id: int | None = None,
        baseline_s: float | None = None,
    ) -> OpenWindow:
        if not name or not isinstance(name, str):
            raise WindowError("A window needs a name (a non-empty string).")
        if kind not in ("window", "baseline"):
            raise WindowError(f"kind must be 'window' or 'baseline', not {kind!r}.")
        if baseline_window_id is not None and baseline_s is not None:
            raise WindowError("Give baseline_window_id or baseline_s, not both.")
        if baseline_s is not None:
            baseline_window_id = await self._auto_baseline(baseline_s)
        elif baseline_window_id is not None:
            await self._check_baseline(baseline_window_id)
        return await self._insert(name, dict(tags or {}), kind, baseline_window_id)

    async def _insert(
        self, name: str, tags: dict[str, Any], kind: str, baseline_window_id: int | None
    ) -> OpenWindow:
        await self._first_readings()
        # An edge read: the counters are read now and the window starts at that instant,
        # so its energy is their exact difference (sampling.py EdgeDesk).
        start_ns = self.daemon.edge_ns()
        window_id = await anyio.to_thread.run_sync(
            self.store.open_window,
            self.daemon.session_id,
            name,
            kind,
            tags,
            start_ns,
            baseline_window_id,
        )
        window = OpenWindow(window_id, name, kind, tags, start_ns, baseline_window_id)
        self.open[window.window_id] = window
        return window

    async def _first_readings(self) -> None:
        """A window opened as the daemon starts begins after every probe's first reading:
        before it a channel has no figure, and the window's coverage says so (a
        ``greenmon measure --baseline`` opened that early was flagged low_coverage in a CI
        run).  Once every probe has read, this costs nothing."""
        with anyio.move_on_after(HANDOFF_WAIT_MAX_S):
            while any(
                s.health.state in ("starting", "running") and s.health.last_t_ns is None
                for s in self.daemon.samplers
            ):
                await anyio.sleep(HANDOFF_POLL_S)

    async def _check_baseline(self, window_id: int) -> None:
        rows = await anyio.to_thread.run_sync(
            self.store.execute,
            "SELECT end_ns FROM windows WHERE window_id = ?",
            [window_id],
        )
        if not rows:
            raise WindowError(
                f"No window {window_id} to use as a baseline; open and close an idle window "
                "first (kind 'baseline'), or pass baseline_s to let the daemon take one."
            )
        if rows[0][0] is None:
            raise WindowError(
                f"Window {window_id} is still open; close it before using it as a baseline."
            )

    async def _auto_baseline(self, seconds: float) -> int:
        if not (isinstance(seconds, int | float) and 0 < seconds <= 3600):
            raise WindowError(f"baseline_s must be between 0 and 3600 seconds, not {seconds!r}.")
        async with self._baseline_lock:
            if self.auto_baseline_id is None:
                window = await self._insert("baseline", {"auto": True}, "baseline", None)
                await anyio.sleep(seconds)
                await self.close_window(window.window_id)
                self.auto_baseline_id = window.window_id
            return self.auto_baseline_id

    # -- closing -----------------------------------------------------------------------
    async def close_window(self, window_id: int) -> WindowResult:
        if window_id not in self.open:
            raise WindowError(
                f"Window {window_id} is not open in this daemon (closed already, or opened "
                "by another daemon session). `GET /windows` lists the open ones."
            )
        end_ns = self.daemon.edge_ns()
        window = self.open.pop(window_id, None)
        if window is None:
            raise WindowError(
                f"Window {window_id} is not open in this daemon (closed already, or opened "
                "by another daemon session). `GET /windows` lists the open ones."
            )
        await anyio.to_thread.run_sync(self.store.close_window, window_id, end_ns)
        await self.daemon.samples_through(end_ns)
        results = await anyio.to_thread.run_sync(window_results, self.store, [window_id])
        if not results:
            raise WindowError(f"Window {window_id} has no row in window_results.")
        self._remember(results)
        return results[0]

    def _remember(self, results: Sequence[WindowResult]) -> None:
        for result in results:
            self._closed[result.window_id] = result
        while len(self._closed) > CACHED_WINDOWS:
            del self._closed[min(self._closed)]

    async def close_open(self) -> None:
        """At daemon stop, while the probes still sample: close what is still open the way
        a user's close does, so the window's last seconds are measured."""
        for window_id in list(self.open):
            window = self.open[window_id]
            self.daemon.event(
                "warning", f"window {window_id} ({window.name}) closed by the daemon stopping"
            )
            await self.close_window(window_id)

    async def close_all(self) -> None:
        """Last resort once the probes have stopped (a stop hook that ran out of time): the
        window ends now and keeps what was measured; its coverage says what is missing."""
        end_ns = now_ns()
        for window_id in list(self.open):
            window = self.open.pop(window_id)
            # The writer has stopped by now: the event goes to the store directly.
            event = Event(
                end_ns, "warning", None,
                f"window {window_id} ({window.name}) closed by the daemon stopping",
            )  # fmt: skip
            await anyio.to_thread.run_sync(self.store.close_window, window_id, end_ns)
            await anyio.to_thread.run_sync(
                self.store.write, SampleBatch(), [event], self.daemon.session_id
            )

    # -- listing -----------------------------------------------------------------------
    async def listing(self, limit: int = RECENT_WINDOWS) -> WindowListing:
        """Open windows and the most recent closed ones of this session, with figures."""
        rows = await anyio.to_thread.run_sync(
            self.store.execute,
            """SELECT window_id FROM windows WHERE session_id = ? AND end_ns IS NOT NULL
               ORDER BY end_ns DESC LIMIT ?""",
            [self.daemon.session_id, limit],
        )
        ids = [int(r[0]) for r in rows]
        missing = [i for i in ids if i not in self._closed]
        self._remember(await anyio.to_thread.run_sync(window_results, self.store, missing))
        recent = [self._closed[i] for i in ids if i in self._closed]
        return WindowListing(
            session_id=self.daemon.session_id,
            open=[w.message() for w in sorted(self.open.values(), key=lambda w: w.start_ns)],
            recent=sorted(recent, key=lambda r: -r.end_ns),
            auto_baseline_window_id=self.auto_baseline_id,
        )


def registry_of(daemon: WindowHost) -> WindowRegistry | None:
    return daemon.windows


def windows_service() -> Callable[..., Any]:
    """A daemon service keeping named windows: ``services=[windows_service(), ...]``.

    List it before the API so ``daemon.windows`` exists when the API starts answering.
    """

    async def service(
        daemon: WindowHost, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        registry = WindowRegistry(daemon)
        daemon.windows = registry
        daemon.on_stop.append(registry.close_open)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await registry.close_all()

    return service
