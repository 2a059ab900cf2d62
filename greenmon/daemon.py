"""The daemon: one DuckDB file, one task group, every probe on one clock.

It composes the pieces: it opens the configured probes (a probe that cannot open is
reported unavailable with its reason and the others go on), registers their channels,
starts the store writer and one sampler per probe, refreshes the clock anchor every
minute, and runs *services* (the experiment runner, the local API) beside them.

Shutdown is orderly rather than cancelled: on SIGINT, SIGTERM, the end of ``duration_s``
or ``request_stop()``, samplers finish their tick and hand off what they hold, every send
stream closes, and the writer drains and flushes under a shielded scope before the
session is closed.  That order is what guarantees that no queued sample is lost.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from greenmon.api.messages import (
    ChannelRow,
    ProbeStatus,
    ProbeStatusDetail,
    Progress,
    Snapshot,
    Status,
    WriterStats,
)
from greenmon.clock import ClockAnchor, now_ns
from greenmon.config import Config, probe_module
from greenmon.hostinfo import host_info
from greenmon.probes.base import Channel, Probe, ProbeUnavailable
from greenmon.sampling import (
    HANDOFF_POLL_S,
    HANDOFF_WAIT_MAX_S,
    HANDOFF_WAIT_MIN_S,
    EdgeDesk,
    ProbeHealth,
    Sampler,
    run_samplers,
)
from greenmon.store import Event, FlushRequest, SampleBatch, Store, run_writer
from greenmon.update_periods import changed_enough

if TYPE_CHECKING:
    from greenmon.analysis.footprint import Pricing
    from greenmon.api.server import ApiOptions
    from greenmon.protocols import RunnerControl
    from greenmon.windows import WindowRegistry

Service = Callable[..., Coroutine[Any, Any, None]]
# A stop hook waits for samples (a window's close waits up to HANDOFF_WAIT_MAX_S): a stop
# never hangs longer than this on them.
STOP_HOOKS_MAX_S = 15.0
# how often detected sensor update periods are checked and stored.
UPDATE_PERIOD_STORE_S = 2.0


class DaemonSummary(msgspec.Struct, kw_only=True):
    """What a daemon session did, as it ends (``greenmon daemon`` prints it; ``--json``
    writes it as the API writes its messages)."""

    session_id: str
    duration_s: float
    samples_written: int
    probes: list[ProbeStatusDetail] = msgspec.field(default_factory=list)


class Daemon:
    def __init__(
        self,
        store: Store,
        config: Config,
        *,
        probes: Mapping[str, Probe] | None = None,
        services: list[Service] | None = None,
        handle_signals: bool = True,
        stream_buffer: int = 4096,
    ) -> None:
        """``probes`` overrides the configured ones (tests inject fakes here)."""
        self.store = store
        self.config = config
        self._injected = dict(probes) if probes is not None else None
        self.services = list(services or [])
        self.handle_signals = handle_signals
        self.stream_buffer = stream_buffer
        self.session_id = ""
        self.samplers: list[Sampler] = []
        # Edges (windows, phases, rounds) ask the sampling thread for a read here.
        self.edges = EdgeDesk()
        self.channels: dict[int, tuple[str, Channel]] = {}
        self.unavailable: dict[str, str] = {}
        # The channels that answer for their domain (the store's energy_sources view).
        self.energy_source_ids: frozenset[int] = frozenset()
        self._stop = anyio.Event()
        self._send: MemoryObjectSendStream[SampleBatch | Event | FlushRequest] | None = None
        # Events the stream cannot take (full, or closed once the daemon stops: a service's
        # shielded cleanup, such as the runner restoring hardware levels, raises events
        # after that).  The writer drains this beside the samplers' sinks; what arrives
        # after the writer ended is written once every service has finished (``run``).
        self._event_sink: deque[tuple[SampleBatch, list[Event]]] = deque()
        self._writer_done = False
        self.started = anyio.Event()
        # Set by the runner service (greenmon/runner.py); every composed daemon has one.
        self.runner: RunnerControl | None = None
        # Set by the windows service (greenmon/windows.py); the API and metrics read it.
        self.windows: WindowRegistry | None = None
        # Set by the API service (greenmon/api/server.py) once its socket listens.
        self.socket_path: Path | None = None
        # Run in order when the daemon stops, while the probes still sample and the writer
        # still writes: a service finishes what needs fresh samples here (windows.py closes
        # the windows still open, so their last seconds are measured, not lost).
        self.on_stop: list[Callable[[], Awaitable[None]]] = []
        # the update periods stored so far, per channel (update_periods.py).
        self._stored_periods_ns: dict[int, int] = {}

    # -- for services --------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def event(self, level: str, message: str, probe: str | None = None) -> None:
        """Queue an event for the store (from the event loop's thread); never dropped, and
        never written from the loop while the writer runs."""
        event = Event(now_ns(), level, probe, message)
        if self._writer_done:
            self.store.write(SampleBatch(), [event], self.session_id)
            return
        if self._send is not None:
            try:
                self._send.send_nowait(event)
                return
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass
        self._event_sink.append((SampleBatch(), [event]))

    async def _write_late_events(self) -> None:
        """Store the events raised after the writer ended (services' shielded cleanup)."""
        self._writer_done = True
        events = [event for _, batch in self._event_sink for event in batch]
        self._event_sink.clear()
        if events:
            await anyio.to_thread.run_sync(self.store.write, SampleBatch(), events, self.session_id)

    def library_event(self, level: str, message: str) -> None:
        """A library's log record or warning (greenmon/liblog.py), from any thread: written
        at once under the store's lock, since the writer's stream belongs to the loop."""
        if self.session_id:
            event = Event(now_ns(), level, None, message)
            self.store.write(SampleBatch(), [event], self.session_id)

    def edge_ns(self) -> int:
        """Mark an edge: every probe that can be read on demand is read now, on the
        sampling thread, and the instant of those reads (on the samples' clock) is
        returned for the window or phase to start or end at.  Blocks for the reads (tens
        to hundreds of µs; a read under way finishes first).  Without a sampling thread
        to ask, or past ``EDGE_WAIT_MAX_S``, the edge is now and its energy interpolated."""
        t_ns = self.edges.ask()
        return now_ns() if t_ns is None else t_ns

    async def flush(self) -> None:
        """Return once everything handed to the writer so far is in the database.

        a window's figures are read as it closes, not at the next periodic flush.
        """
        send = self._send
        if send is None:
            return
        request = FlushRequest()
        try:
            await send.send(request)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        await request.done.wait()

    async def samples_through(self, t_ns: int) -> None:
        """Return once every running sampler's samples up to ``t_ns`` are in the database:
        a window's figures are read as it closes, and a unit is recorded done
        only with its samples stored, so a SIGKILL after it cannot leave a done unit
        without them (README: what a crash can lose)."""
        samplers = [s for s in self.samplers if s.health.state == "running"]
        for sampler in samplers:
            sampler.request_handoff(t_ns)
        slowest_s = max((s.period_ns / 1e9 for s in samplers), default=0.0)
        wait_s = min(HANDOFF_WAIT_MAX_S, max(HANDOFF_WAIT_MIN_S, 4 * slowest_s))
        with anyio.move_on_after(wait_s):
            while any(
                s.health.state == "running" and (s.handed_off_t_ns or 0) < t_ns for s in samplers
            ):
                await anyio.sleep(HANDOFF_POLL_S)
        await self.flush()

    # -- what the daemon shows (GET /status, GET /stream, the TUI, metrics) -------------
    def _probe_healths(self) -> list[ProbeHealth]:
        """Every probe's health, the unavailable ones included."""
        return [s.health for s in self.samplers] + [
            ProbeHealth(probe=name, target_hz=0.0, state="unavailable", reason=reason)
            for name, reason in self.unavailable.items()
        ]

    def health(self) -> list[ProbeStatusDetail]:
        """Every probe's health in full (``GET /status``, the session's summary)."""
        return [health.detail() for health in self._probe_healths()]

    def health_summary(self) -> list[ProbeStatus]:
        """Every probe's health without jitter: cheap enough for every stream snapshot."""
        return [health.summary() for health in self._probe_healths()]

    def channel_table(self) -> list[ChannelRow]:
        """Every registered channel, with whether it answers for its domain."""
        return [
            ChannelRow(
                channel_id=channel_id,
                probe=probe,
                name=channel.name,
                unit=channel.unit,
                kind=channel.kind,
                domain=channel.domain,
                estimated=channel.estimated,
                energy_source=channel_id in self.energy_source_ids,
                metadata=dict(channel.metadata),
            )
            for channel_id, (probe, channel) in sorted(self.channels.items())
        ]

    def channel_values(self) -> list[tuple[int, int, float]]:
        """``[channel_id, t_ns, value]`` for the latest reading of every channel."""
        values: list[tuple[int, int, float]] = []
        for sampler in self.samplers:
            health = sampler.health
            # The sampler thread replaces last_values with a new dict: read it once.
            last, t_ns = health.last_values, health.last_t_ns
            if t_ns is None:
                continue
            for channel_id, channel in zip(sampler.channel_ids, sampler.channels, strict=True):
                value = last.get(channel.name)
                if value is not None:
                    values.append((channel_id, t_ns, value))
        return values

    def progress(self) -> Progress | None:
        """The runner's progress; None while it has not started."""
        return None if self.runner is None else self.runner.progress()

    def snapshot(self) -> Snapshot:
        """What the daemon is doing now: the one source of ``GET /stream`` (about four
        times a second, so cheap: latest values, health without jitter, progress)."""
        return Snapshot(
            t_ns=now_ns(),
            session_id=self.session_id,
            values=self.channel_values(),
            probes=self.health_summary(),
            progress=self.progress(),
        )

    def status(self) -> Status:
        """``GET /status``: a snapshot with full health, the channel table and the
        writer's flush timings."""
        return Status(
            t_ns=now_ns(),
            session_id=self.session_id,
            values=self.channel_values(),
            probes=self.health(),
            progress=self.progress(),
            writer=WriterStats(**self.store.flush_stats.as_dict()),
            channels=self.channel_table(),
            runner=self.runner is not None,
        )

    # -- start-up ----------------------------------------------------------------------
    def _create_probes(self) -> dict[str, tuple[Probe, float]]:
        created: dict[str, tuple[Probe, float]] = {}
        self.unavailable.update(self.config.broken)
        if self._injected is not None:
            for name, probe in self._injected.items():
                options = self.config.probes.get(name)
                rate = options.rate_hz if options and options.rate_hz else probe.default_rate_hz
                created[name] = (probe, rate)
            return created
        for name, options in self.config.enabled_probes().items():
            try:
                module = probe_module(name)
                probe = module.create(options)
            except Exception as error:
                self.unavailable[name] = f"{type(error).__name__}: {error}"
                continue
            created[name] = (probe, options.rate_hz or probe.default_rate_hz)
        return created

    def _open_probes(self, send: MemoryObjectSendStream[SampleBatch | Event]) -> list[Event]:
        events: list[Event] = []
        for name, (probe, rate_hz) in self._create_probes().items():
            try:
                channels = list(probe.open())
            except ProbeUnavailable as error:
                self.unavailable[name] = str(error)
                events.append(Event(now_ns(), "info", name, f"unavailable: {error}"))
                continue
            except Exception as error:
                self.unavailable[name] = f"open failed: {type(error).__name__}: {error}"
                events.append(Event(now_ns(), "error", name, self.unavailable[name]))
                continue
            # What a probe found at open that changes how its figures are used (amdsmi:
            # an energy counter that disagreed with power and is not used).
            for finding in getattr(probe, "findings", ()):
                events.append(Event(now_ns(), "warning", name, str(finding)))
            period_ns = round(1e9 / rate_hz)
            ids = self.store.register_channels(self.session_id, name, channels, period_ns)
            for channel_id, channel in zip(ids, channels, strict=True):
                self.channels[channel_id] = (name, channel)
            self.samplers.append(
                Sampler(
                    probe,
                    channels,
                    ids,
                    rate_hz,
                    send.clone(),
                    max_backoff_s=self.config.daemon.max_backoff_s,
                )
            )
            events.append(
                Event(now_ns(), "info", name, f"sampling {len(channels)} channels at {rate_hz} Hz")
            )
        rows = self.store.execute(
            "SELECT channel_id FROM energy_sources WHERE session_id = ?", [self.session_id]
        )
        self.energy_source_ids = frozenset(int(row[0]) for row in rows)
        return events

    def _restore_settings(self) -> list[Event]:
        from greenmon.hardware.journal import restore_journal

        return [
            Event(now_ns(), "info" if r.ok else "error", None, f"restore journal: {r.message}")
            for r in restore_journal(self.store)
        ]

    async def _anchor_loop(self) -> None:
        interval_s = self.config.daemon.anchor_interval_s
        while True:
            await anyio.sleep(interval_s)
            anchor = ClockAnchor.read()
            await anyio.to_thread.run_sync(
                self.store.record_anchor, self.session_id, anchor.t_ns, anchor.anchor_ns
            )

    def store_update_periods(self) -> None:
        """Store each channel's detected update period where it is new or moved
        by more than 10% (blocking: a worker thread), with an event for a new one."""
        changed: dict[int, tuple[int, int]] = {}
        for sampler in self.samplers:
            for channel_id, (period_ns, seen) in sampler.update_periods.estimates().items():
                if changed_enough(self._stored_periods_ns.get(channel_id), period_ns):
                    changed[channel_id] = (period_ns, seen)
        if not changed:
            return
        self.store.set_update_periods(changed)
        events: list[Event] = []
        for channel_id, (period_ns, _) in changed.items():
            if channel_id not in self._stored_periods_ns:
                probe, channel = self.channels[channel_id]
                message = (
                    f"{channel.name} updates every {period_ns / 1e6:.1f} ms "
                    "(detected from value changes)"
                )
                events.append(Event(now_ns(), "info", probe, message))
            self._stored_periods_ns[channel_id] = period_ns
        # written here, in this worker thread: the writer's stream belongs to the loop
        self.store.write(SampleBatch(), events, self.session_id)

    async def _update_period_loop(self) -> None:
        while True:
            await anyio.sleep(UPDATE_PERIOD_STORE_S)
            await anyio.to_thread.run_sync(self.store_update_periods)

    async def _watch_signals(self) -> None:
        # SIGHUP (a closed SSH terminal) stops like SIGTERM: orderly, resumable.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                self.event("info", f"received {signal.Signals(signum).name}, stopping")
                self.request_stop()
                return

    # -- the run -----------------------------------------------------------------------
    async def run(
        self,
        duration_s: float | None = None,
        *,
        task_status: TaskStatus[Daemon] = anyio.TASK_STATUS_IGNORED,
    ) -> DaemonSummary:
        await self._start_session()
        send, receive = anyio.create_memory_object_stream[SampleBatch | Event | FlushRequest](
            max_buffer_size=self.stream_buffer
        )
        self._send = send
        # hardware settings a crashed or killed run left changed are put back
        # before anything is measured (greenmon/hardware/journal.py; one cheap query when none).
        start_events = await anyio.to_thread.run_sync(self._restore_settings)
        # open() may block (a wattmeter request, EnergiBridge writing its header): off the loop.
        start_events += await anyio.to_thread.run_sync(self._open_probes, send)
        written = 0

        async def writer(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            nonlocal written
            written = await run_writer(
                self.store,
                self.session_id,
                receive,
                sinks=[*(sampler.sink for sampler in self.samplers), self._event_sink],
                flush_interval_s=self.config.daemon.flush_interval_s,
                journal_load_interval_s=self.config.daemon.journal_load_interval_s or None,
                task_status=task_status,
            )

        started_ns = now_ns()
        async with anyio.create_task_group() as group:
            await group.start(writer)
            for event in start_events:
                send.send_nowait(event)
            # one thread for every blocking probe, async probes on this loop (sampling.py)
            group.start_soon(run_samplers, self.samplers, self.edges)
            helpers = anyio.CancelScope()
            group.start_soon(self._run_helpers, helpers, task_status)
            try:
                with anyio.move_on_after(duration_s):
                    await self._stop.wait()
            finally:
                self._stop.set()
                await self._run_stop_hooks()
                for sampler in self.samplers:
                    sampler.stop()
                helpers.cancel()
                self._send = None
                send.close()
        # The task group ended: every service finished its cleanup, the writer too.
        return await self._end_session(started_ns, written)

    # The steps of run, in the order it takes them.
    async def _start_session(self) -> None:
        """Set the GIL switch interval and record the session (host, clock anchor, config)."""
        sys.setswitchinterval(self.config.daemon.gil_switch_interval_s)
        anchor = ClockAnchor.read()
        self.session_id = await anyio.to_thread.run_sync(
            lambda: self.store.start_session(
                host_info(), anchor.t_ns, anchor.anchor_ns, self.config.as_dict()
            )
        )

    async def _run_helpers(
        self, helpers: anyio.CancelScope, task_status: TaskStatus[Daemon]
    ) -> None:
        """The clock anchor, update periods, signals and services, until ``helpers`` is
        cancelled; the daemon counts as started once every service has started."""
        with helpers:
            async with anyio.create_task_group() as inner:
                inner.start_soon(self._anchor_loop)
                inner.start_soon(self._update_period_loop)
                if self.handle_signals:
                    inner.start_soon(self._watch_signals)
                for service in self.services:
                    await inner.start(service, self)
                self.started.set()
                task_status.started(self)
                await anyio.sleep_forever()

    async def _run_stop_hooks(self) -> None:
        """Every on_stop hook, shielded and bounded, while probes and writer still run."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_HOOKS_MAX_S):
            for hook in self.on_stop:
                try:
                    await hook()
                except Exception as exc:  # one hook failing must not lose the rest
                    self.event("error", f"while stopping: {exc!r}")

    async def _end_session(self, started_ns: int, written: int) -> DaemonSummary:
        """After the writer ended: late events, probes closed, the session's end recorded."""
        await self._write_late_events()
        ended_ns = now_ns()
        for sampler in self.samplers:
            with contextlib.suppress(Exception):
                sampler.probe.close()
        with contextlib.suppress(Exception):  # the periods of the last seconds
            await anyio.to_thread.run_sync(self.store_update_periods)
        await anyio.to_thread.run_sync(self.store.end_session, self.session_id, ended_ns)
        return DaemonSummary(
            session_id=self.session_id,
            duration_s=(ended_ns - started_ns) / 1e9,
            samples_written=written,
            probes=self.health(),
        )


def open_daemon_store(path: Path, config: Config) -> Store:
    """The database a daemon holds, with its bounded resources (DuckDB's memory
    limit and threads from ``[daemon]``); every daemon opens its file through here."""
    return Store.open(
        path,
        memory_limit=config.daemon.duckdb_memory_limit,
        threads=config.daemon.duckdb_threads,
    )


def _pricing(config: Config) -> Pricing | None:
    """The carbon intensity and price of the config's [report] table, for /metrics."""
    report = config.report
    if report.carbon_intensity_g_per_kwh is None and not report.carbon_intensity_file \
            and report.price_per_kwh is None:  # fmt: skip
        return None  # without it the daemon does not import pandas
    from greenmon.analysis.footprint import pricing

    return pricing(config.report, config.source)


def build_daemon(
    store: Store,
    config: Config,
    *,
    api: ApiOptions | None = None,
    probes: Mapping[str, Probe] | None = None,
    handle_signals: bool = True,
    runner_options: Mapping[str, Any] | None = None,
) -> Daemon:
    """The one daemon composition: probes, the writer, the experiment runner and the API.

    ``greenmon daemon``, ``greenmon run`` (when no daemon holds the file), ``greenmon tui``
    (when none runs) and the Python ``Monitor`` all start their daemon through here, so
    every daemon can be watched, queried and given plans the same way.  ``probes``
    replaces the configured probes (fakes of absent hardware in tests); ``runner_options``
    go to the runner (cache_dir, the fidelity reference, engine keyword arguments).
    Besides the runner and the API, every daemon keeps the user's named windows
    (greenmon/windows.py) and, when configured, serves Prometheus metrics.
    """
    from greenmon.api.server import ApiOptions, api_service
    from greenmon.metrics import metrics_service
    from greenmon.runner import runner_service
    from greenmon.windows import windows_service

    # Nothing a daemon does needs a file outside its database, and the API's SQL must not
    # reach one: DuckDB's own external-access switch, locked.
    store.confine()
    return Daemon(
        store,
        config,
        probes=probes,
        # In start order: the windows registry before the API that serves it; the metrics
        # listener (off unless [daemon] metrics_port is set) last.
        services=[
            runner_service(**dict(runner_options or {})),
            windows_service(),
            api_service(api or ApiOptions()),
            metrics_service(config.daemon, _pricing(config)),
        ],
        handle_signals=handle_signals,
    )
