"""Fixed-rate sampling and probe supervision.

Terms:
- *tick* k of a probe is due at ``t0 + k * period``: deadlines never drift, whatever each
  read costs.  After an overrun the loop skips to the next tick still in the future and
  counts the ticks it *missed*; it never bursts to catch up, which would bunch samples.
- *gap*: a tick with no sample because the read failed.  A failed read writes an event and
  the probe retries with exponential backoff in ticks (1, 2, 4, ... up to
  ``max_backoff_s``), so a flapping source does not flood the store.
- *health*: target and achieved rate, missed ticks, errors, last error, last values and
  tick jitter (how late a read started after its deadline), per probe.
- *hand-off*: every ``handoff_interval_s`` a sampler's buffered rows go to the writer.

One thread drives every blocking probe (``run_samplers``): it sleeps to the earliest
deadline of all of them, reads each probe that is due (fastest first), and sleeps again,
so the daemon wakes once per deadline, not once per probe thread.  A thread sleeping to a
deadline holds 1 kHz with p99 jitter near 0.2 ms, where asyncio's timers resolve about
1 ms.  Each probe keeps its own rate, tick numbering and backoff (``Sampler``).

A read that blocks would delay every probe sharing the thread, so two kinds of probe stay
off it: a probe that declares ``blocking_reads = True`` (EnergiBridge, whose read may
restart its child and wait seconds for a CSV header) gets a thread of its own, and async
probes (``async def read``: NETIO's HTTP reads, with their own request timeout) run as
tasks on the event loop.  A shared-thread read that overruns shows as missed ticks in the
health of the probes it delayed.

Readings go into a preallocated wide buffer per probe (``_Rows``: one row assignment per
read, no per-sample objects); at each hand-off the buffer becomes long columns (numpy) in a
``SampleBatch`` appended to the sampler's ``sink`` deque, which the writer drains when it
flushes (greenmon/store/writer.py).  A sample therefore reaches the file at most
``handoff_interval_s + flush_interval_s`` after it was read (plus the flush itself): that
is what a SIGKILL can lose.

*Edge reads*: a window, phase or round edge asks the shared thread for an immediate read
of every probe on it that can be read on demand (``EdgeDesk.ask``).  The thread serves the
request at once, between ticks (it owns the probes: no read ever runs on two threads),
reading the probes with energy counters first and back to back, then the others, and
stamps every row with one instant, the midpoint of the energy counters' reads, which it
returns as the edge.  The rows are
ordinary samples; a counter read at both edges of a window gives its energy as the exact
difference of the two (greenmon/energy.py).  Probes on other threads (EnergiBridge's
stream, NETIO's HTTP reads) cannot be asked: their windows interpolate, and say so.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import msgspec
import numpy as np
from anyio.streams.memory import MemoryObjectSendStream

from greenmon.api.messages import ProbeStatus, ProbeStatusDetail
from greenmon.clock import now_ns
from greenmon.probes.base import Channel, Probe, ProbeLost, Stamped, Values
from greenmon.sources import ENERGY_UNITS
from greenmon.store import Event, SampleBatch
from greenmon.update_periods import UpdatePeriods

JITTER_WINDOW = 4096
# The longest a sampler thread sleeps without looking at its stop flags (stop() also wakes
# it at once through a pipe, so this only bounds a lost wake-up).
STOP_SLICE_S = 5.0
# How often buffered rows go to the writer (part of the loss bound after a SIGKILL).  Each
# hand-off costs the sampling thread about 0.5 ms (columns built, update periods offered,
# the event loop woken): 0.5 s rather than 0.25 s saved 1-2 ms of CPU a second at default
# rates for a loss bound a quarter of a second longer.  A closing window asks
# for a hand-off at once, so no figure waits for it.
HANDOFF_INTERVAL_S = 0.5
# How long a wait for every sampler to read past an instant (a window's close, a unit's
# end: Daemon.samples_through) lasts: a few periods of the slowest probe, at least this
# long, at most the cap (a stalled probe is reported by coverage, not by a hung wait).
HANDOFF_WAIT_MIN_S = 1.0
HANDOFF_WAIT_MAX_S = 10.0
HANDOFF_POLL_S = 0.002
# How long an edge waits for the sampling thread to read (a read already under way
# finishes first).  Past it the edge is stamped when the wait ended and its counters are
# interpolated, as a probe that cannot be asked is.
EDGE_WAIT_MAX_S = 0.25


def next_tick(t0_ns: int, period_ns: int, done_tick: int, now_ns_: int) -> tuple[int, int]:
    """After finishing tick ``done_tick`` at ``now_ns_``: (next tick to run, ticks missed).

    The next tick is ``done_tick + 1`` if its deadline has not passed; otherwise the first
    tick whose deadline is still ahead, and every tick skipped over counts as missed.
    """
    candidate = done_tick + 1
    if t0_ns + candidate * period_ns >= now_ns_:
        return candidate, 0
    upcoming = (now_ns_ - t0_ns) // period_ns + 1
    return upcoming, upcoming - candidate


def backoff_ticks(consecutive_failures: int, period_ns: int, max_backoff_s: float) -> int:
    """How many ticks to wait before retrying after the n-th failure in a row (n >= 1).

    The first failure retries at the next tick; then 2, 4, 8 ... ticks, capped so that the
    wait never exceeds ``max_backoff_s`` (and is at least one tick).
    """
    wanted = 2 ** min(consecutive_failures - 1, 30)
    cap = max(1, int(max_backoff_s * 1e9 // period_ns))
    return int(min(wanted, cap))


@dataclass
class ProbeHealth:
    probe: str
    target_hz: float
    state: str = "starting"  # starting | running | unavailable | lost | stopped
    reason: str | None = None
    started_ns: int | None = None
    stopped_ns: int | None = None
    reads: int = 0
    samples: int = 0
    missed_ticks: int = 0
    errors: int = 0
    last_error: str | None = None
    last_t_ns: int | None = None
    # The newest read as the probe returned it, beside its channel names: the sampler
    # thread stores one reference per read, and the dict ``last_values`` is built only when
    # someone asks (status, the stream), a few times a second, not at every read.
    last_raw: tuple[Sequence[str], Values] | None = None
    jitter_ns: deque[int] = field(default_factory=lambda: deque(maxlen=JITTER_WINDOW))

    @property
    def last_values(self) -> dict[str, float | None]:
        last = self.last_raw  # read once: the sampler thread replaces it
        if last is None:
            return {}
        names, values = last
        return dict(zip(names, values, strict=False))

    @property
    def achieved_hz(self) -> float:
        if self.started_ns is None or self.reads == 0:
            return 0.0
        end_ns = self.stopped_ns or now_ns()
        elapsed_s = (end_ns - self.started_ns) / 1e9
        return self.reads / elapsed_s if elapsed_s > 0 else 0.0

    def jitter_percentile_us(self, q: float) -> float | None:
        if not self.jitter_ns:
            return None
        ordered = sorted(self.jitter_ns)
        index = min(len(ordered) - 1, int(q / 100.0 * len(ordered)))
        return ordered[index] / 1e3

    def summary(self) -> ProbeStatus:
        """The probe's health without counts of reads and samples, jitter percentiles or
        last values: cheap enough for every stream snapshot."""
        return ProbeStatus(
            probe=self.probe,
            state=self.state,
            reason=self.reason,
            target_hz=self.target_hz,
            achieved_hz=round(self.achieved_hz, 3),
            errors=self.errors,
            missed_ticks=self.missed_ticks,
            last_error=self.last_error,
        )

    def detail(self) -> ProbeStatusDetail:
        """The probe's health as ``GET /status`` shows it."""
        return ProbeStatusDetail(
            **msgspec.structs.asdict(self.summary()),
            reads=self.reads,
            samples=self.samples,
            jitter_p50_us=self.jitter_percentile_us(50),
            jitter_p99_us=self.jitter_percentile_us(99),
            last_t_ns=self.last_t_ns,
            # float(): a probe may read numpy scalars, which JSON does not know as numbers
            last_values={
                name: None if value is None else float(value)
                for name, value in self.last_values.items()
            },
        )


class _EventThrottle:
    """Repeated identical failures become one event per second with a repeat count."""

    def __init__(self, interval_ns: int = 1_000_000_000) -> None:
        self.interval_ns = interval_ns
        self.last_message: str | None = None
        self.last_emit_ns = 0
        self.suppressed = 0

    def offer(self, t_ns: int, message: str) -> str | None:
        if message == self.last_message and t_ns - self.last_emit_ns < self.interval_ns:
            self.suppressed += 1
            return None
        text = message
        if self.suppressed and message == self.last_message:
            text = f"{message} (and {self.suppressed} more times in the last second)"
        self.last_message, self.last_emit_ns, self.suppressed = message, t_ns, 0
        return text


class _Rows:
    """One probe's readings in a preallocated wide buffer: ``t_ns[i]`` and
    ``values[i, channel]`` (NaN where a channel had no value).  A read costs one row
    assignment; the long (channel, t_ns, value) columns the store wants are cut out with
    numpy at each hand-off, and the buffer is reused.  It grows (doubling) only if a
    hand-off is late."""

    def __init__(self, channel_ids: Sequence[int], capacity: int) -> None:
        self.ids = np.asarray(channel_ids, dtype=np.int32)
        self.t_ns = np.empty(max(1, capacity), dtype=np.int64)
        self.values = np.empty((max(1, capacity), len(self.ids)), dtype=np.float64)
        self.rows = 0

    def append(self, t_ns: int, values: Values) -> None:
        if self.rows == len(self.t_ns):
            self.t_ns = np.resize(self.t_ns, 2 * self.rows)
            self.values = np.resize(self.values, (2 * self.rows, len(self.ids)))
        self.t_ns[self.rows] = t_ns
        # numpy stores None as NaN in a float array: "no value this time"
        self.values[self.rows] = values
        self.rows += 1

    def take(self) -> SampleBatch:
        """The rows since the last take, in long form, finite values only."""
        rows, self.rows = self.rows, 0
        if rows == 0 or len(self.ids) == 0:
            return SampleBatch()
        wide = self.values[:rows]
        keep = np.isfinite(wide).ravel()
        return SampleBatch.from_columns(
            np.tile(self.ids, rows)[keep],
            np.repeat(self.t_ns[:rows], len(self.ids))[keep],
            wide.ravel()[keep],
        )


@dataclass
class _EdgeAsk:
    done: threading.Event = field(default_factory=threading.Event)
    t_ns: int | None = None


class EdgeDesk:
    """Where edges ask the shared sampling thread for an immediate read (any thread may
    ask; only the sampling thread serves).  ``ask`` returns the edge's instant on the
    samples' clock, or None when no thread serves (no blocking probe) or it did not
    answer within the wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_EdgeAsk] = []
        self._wake: Callable[[], None] | None = None
        self.served = 0

    @property
    def serving(self) -> bool:
        return self._wake is not None

    def ask(self, timeout_s: float = EDGE_WAIT_MAX_S) -> int | None:
        wake = self._wake
        if wake is None:
            return None
        request = _EdgeAsk()
        with self._lock:
            self._pending.append(request)
        wake()
        request.done.wait(timeout_s)
        return request.t_ns

    def _take(self) -> list[_EdgeAsk]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _attach(self, wake: Callable[[], None] | None) -> None:
        self._wake = wake
        if wake is None:  # the thread is leaving: nobody waits for it
            for request in self._take():
                request.done.set()

    def serve(self, samplers: Sequence[Sampler]) -> None:
        """On the sampling thread: read every running sampler now, answer the askers.

        Asks that arrived together share one read.  Probes with energy counters are read
        first, back to back, and the midpoint of those reads is the edge; the rest (the
        host's CPU counters and gauges) are read right after, tens of µs later, and every
        row is stamped at the edge, so each counter has a sample at the edge's instant.
        """
        pending = self._take()
        if not pending:
            return
        ready = [s for s in samplers if s.edge_readable]
        first = [s for s in ready if s.has_counters] or ready
        t_before_ns = time.monotonic_ns()
        results = [(s, s._edge_read()) for s in first]
        t_after_ns = time.monotonic_ns()
        edge_ns = (t_before_ns + t_after_ns) // 2
        results += [(s, s._edge_read()) for s in ready if s not in first]
        for sampler, result in results:
            if result is not None:
                sampler._record(edge_ns, result)
        self.served += 1
        for request in pending:
            request.t_ns = edge_ns
            request.done.set()


class Sampler:
    """One opened probe's schedule, health and buffer.  ``run_samplers`` drives it."""

    def __init__(
        self,
        probe: Probe,
        channels: Sequence[Channel],
        channel_ids: Sequence[int],
        rate_hz: float,
        send: MemoryObjectSendStream[SampleBatch | Event],
        *,
        max_backoff_s: float = 30.0,
        handoff_interval_s: float = HANDOFF_INTERVAL_S,
        on_values: Callable[[str, int, dict[str, float | None]], None] | None = None,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.probe = probe
        self.channels = list(channels)
        self.channel_ids = list(channel_ids)
        self.period_ns = round(1e9 / rate_hz)
        self.send = send
        self.max_backoff_s = max_backoff_s
        self.handoff_interval_ns = int(handoff_interval_s * 1e9)
        self.health = ProbeHealth(probe=probe.name, target_hz=rate_hz)
        self.on_values = on_values
        self._stop = threading.Event()
        # Set by the thread that drives this sampler: stop() wakes it through this.
        self._wake: Callable[[], None] | None = None
        # Room for two hand-offs' worth of rows: the buffer is reused, never reallocated
        # while the writer keeps up.
        self._rows = _Rows(self.channel_ids, int(2 * rate_hz * handoff_interval_s) + 8)
        self._pending_events: list[Event] = []
        # Thread samplers hand their batches over here; the writer drains it (store/writer.py).
        self.sink: deque[tuple[SampleBatch, list[Event]]] = deque()
        self._throttle = _EventThrottle()
        self.update_periods = UpdatePeriods(self.channels, self.channel_ids)
        self._names = [c.name for c in self.channels]
        # a closing window asks for the samples up to its end now
        # (request_handoff), not at the next hand-off; handed_off_t_ns says how far the
        # samples handed to the writer reach.
        self._handoff_after_ns: int | None = None
        self.handed_off_t_ns: int | None = None
        # Schedule state: tick k is due at t0 + k * period.
        self._t0_ns = 0
        self._tick = 0
        self._consecutive = 0
        self.deadline_ns = 0

    def stop(self) -> None:
        """Ask the loop to finish its current tick, hand off what it holds, and return."""
        self._stop.set()
        if self._wake is not None:
            self._wake()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(getattr(self.probe, "read", None))

    @property
    def dedicated_thread(self) -> bool:
        """A blocking probe whose read may take long gets a thread of its own."""
        return bool(getattr(self.probe, "blocking_reads", False))

    @property
    def has_counters(self) -> bool:
        """Whether the probe has energy counters (which edges read first, together)."""
        return any(c.kind == "counter" and c.unit in ENERGY_UNITS for c in self.channels)

    @property
    def edge_readable(self) -> bool:
        """Whether an edge may read this probe now: running, not backing off a failure."""
        return self.health.state == "running" and self._consecutive == 0

    def _edge_read(self) -> Values | None:
        """One read for an edge (on the sampling thread), outside the tick schedule; a
        failure leaves the edge to interpolation and the next tick to report it."""
        try:
            result = self.probe.read()
        except Exception:
            return None
        if isinstance(result, Stamped) or len(result) != len(self.channel_ids):
            return None
        return result

    # -- one tick ------------------------------------------------------------------
    def _start(self, t0_ns: int) -> None:
        self._t0_ns, self._tick, self._consecutive = t0_ns, 0, 0
        self.deadline_ns = t0_ns
        self.health.started_ns = t0_ns
        self.health.state = "running"

    def _record(self, t_ns: int, values: Values) -> None:
        self._rows.append(t_ns, values)
        self.health.last_t_ns = t_ns
        self.health.last_raw = (self._names, values)

    def _accept(self, result: Values | Stamped, t_before_ns: int, t_after_ns: int) -> None:
        self.health.reads += 1
        if isinstance(result, Stamped):
            for t_ns, values in result.rows:
                self._record(t_ns, values)
        else:
            if len(result) != len(self.channel_ids):
                raise ValueError(
                    f"probe {self.probe.name} returned {len(result)} values for "
                    f"{len(self.channel_ids)} channels"
                )
            self._record((t_before_ns + t_after_ns) // 2, result)

    def _begin_tick(self) -> int:
        """The read starts now: record how late it is; returns the start time."""
        t_before_ns = time.monotonic_ns()
        self.health.jitter_ns.append(t_before_ns - self.deadline_ns)
        return t_before_ns

    def _end_tick(
        self, result: Values | Stamped | None, error: Exception | None, t_before_ns: int
    ) -> None:
        """Account for one tick's outcome and move to the next deadline."""
        if error is None:
            try:
                self._accept(result, t_before_ns, time.monotonic_ns())  # type: ignore[arg-type]
            except Exception as bad:
                error = bad
        if error is None:
            self._consecutive = 0
            self._tick, missed = next_tick(
                self._t0_ns, self.period_ns, self._tick, time.monotonic_ns()
            )
        else:
            self._consecutive += 1
            self._tick, missed = self._after_failure(
                error, self._consecutive, self._t0_ns, self._tick
            )
        self.health.missed_ticks += missed
        self.deadline_ns = self._t0_ns + self._tick * self.period_ns

    def _step(self) -> bool:
        """Read once (blocking probes); False when the probe is lost for good."""
        t_before_ns = self._begin_tick()
        try:
            result = self.probe.read()
        except ProbeLost as lost:
            self._lose(lost)
            return False
        except Exception as error:
            self._end_tick(None, error, t_before_ns)
            return True
        self._end_tick(result, None, t_before_ns)  # type: ignore[arg-type]
        return True

    def _event(self, level: str, message: str, *, throttle: bool = False) -> None:
        t_ns = now_ns()
        text = self._throttle.offer(t_ns, message) if throttle else message
        if text is not None:
            self._pending_events.append(Event(t_ns, level, self.probe.name, text))

    def _after_failure(
        self, error: BaseException, consecutive: int, t0_ns: int, tick: int
    ) -> tuple[int, int]:
        """Record a failed read; the tick to retry at (after backoff) and ticks missed."""
        self._fail(error, consecutive)
        wait = backoff_ticks(consecutive, self.period_ns, self.max_backoff_s)
        next_, missed = next_tick(t0_ns, self.period_ns, tick + wait - 1, now_ns())
        return next_, missed + wait - 1

    def _fail(self, error: BaseException, consecutive: int) -> None:
        self.health.errors += 1
        self.health.last_error = f"{type(error).__name__}: {error}"
        self._event("warning", f"read failed, gap left: {self.health.last_error}", throttle=True)

    # -- hand-off to the writer -------------------------------------------------------
    def _take_pending(self) -> tuple[SampleBatch, list[Event]]:
        rows = self._rows.rows  # update periods from the rows handed off
        self.update_periods.offer(self._rows.t_ns[:rows], self._rows.values[:rows])
        batch = self._rows.take()
        self.health.samples += len(batch)
        events, self._pending_events = self._pending_events, []
        return batch, events

    def request_handoff(self, after_ns: int) -> None:
        """Hand off as soon as a sample at or after ``after_ns`` has been read, so that
        a window's figures are read the moment it closes."""
        self._handoff_after_ns = after_ns
        if self._wake is not None:
            self._wake()

    def _handoff_due(self) -> bool:
        after_ns, last_ns = self._handoff_after_ns, self.health.last_t_ns
        return after_ns is not None and last_ns is not None and last_ns >= after_ns

    def _handoff_from_thread(self) -> None:
        # A deque append is atomic and wakes nobody: the writer drains ``sink`` when it
        # flushes.  Handing off through the event loop instead (from_thread.run_sync)
        # costs a loop wake-up and a thread wait per hand-off.
        last_ns = self.health.last_t_ns
        # Nothing read since the last hand-off (a probe slower than the hand-off interval):
        # the update periods and the columns would cost about 250 us for nothing.
        if self._rows.rows or self._pending_events:
            batch, events = self._take_pending()
            if len(batch) or events:
                self.sink.append((batch, events))
        self.handed_off_t_ns = last_ns
        if self._handoff_due():
            self._handoff_after_ns = None

    # -- the async loop (probes whose read is a coroutine) --------------------------------
    async def _async_loop(self) -> None:
        self._start(now_ns())
        last_handoff_ns = self._t0_ns
        try:
            while not self._stop.is_set():
                delay_ns = self.deadline_ns - now_ns()
                if delay_ns > 0:
                    await anyio.sleep(delay_ns / 1e9)
                    if self._stop.is_set():
                        break
                t_before_ns = self._begin_tick()
                try:
                    result = await self.probe.read()  # type: ignore[misc]
                except ProbeLost as lost:
                    self._lose(lost)
                    break
                except Exception as error:
                    self._end_tick(None, error, t_before_ns)
                else:
                    self._end_tick(result, None, t_before_ns)
                # Async probes are slow (a few Hz): the same sink as the threads, so the
                # writer has one way in for samples.
                if (
                    now_ns() - last_handoff_ns >= self.handoff_interval_ns
                    or self._pending_events
                    or self._handoff_due()
                ):
                    self._handoff_from_thread()
                    last_handoff_ns = now_ns()
        finally:
            self._finish()
            self._handoff_from_thread()
            with anyio.CancelScope(shield=True):
                # An async probe's sessions belong to this loop: release them here, since
                # the daemon's later close() is synchronous (probes/netio.py).
                aclose = getattr(self.probe, "aclose", None)
                if aclose is not None:
                    await aclose()

    def _lose(self, lost: ProbeLost) -> None:
        self.health.state = "lost"
        self.health.reason = str(lost)
        self.health.errors += 1
        self.health.last_error = str(lost)
        self._event("error", f"probe lost, stopped; the others go on: {lost}")

    def _finish(self) -> None:
        self.health.stopped_ns = now_ns()
        # A source that refreshes slower than it is polled (the NETIO wattmeter) detects
        # its real period; record it with the session's events.
        refresh_s = getattr(self.probe, "refresh_period_s", None)
        if isinstance(refresh_s, float):
            self._event(
                "info", f"source refresh period, detected from value changes: {refresh_s:.3f} s"
            )
        if self.health.state == "running":
            self.health.state = "stopped"

    async def run(self, limiter: anyio.CapacityLimiter | None = None) -> None:
        """Sample this probe alone until ``stop()`` (``run_samplers`` with one sampler)."""
        await run_samplers([self])


class _Waker:
    """A sleep until a deadline that ``wake()`` can cut short: ``select`` on a pipe.  One
    wake-up per deadline, where sleeping in short slices to notice a stop flag cost a
    wake-up every slice (20 a second for a 1 Hz probe); ``select``'s timeout has
    microsecond resolution, as ``time.sleep``'s."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when ``wake()`` cut it short."""
        ready, _, _ = select.select([self._read_fd], [], [], seconds)
        if ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._read_fd, 512)
            return True
        return False

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write_fd, b"x")

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def drive(samplers: Sequence[Sampler], desk: EdgeDesk | None = None) -> None:
    """One thread's loop over blocking samplers: sleep to the earliest deadline, read
    whatever is due (fastest probe first), hand off every ``handoff_interval_s``, and
    serve the edge reads asked at ``desk`` the moment they are asked.

    Returns when every sampler has been stopped or lost; each one finishes and hands off
    what it holds as it leaves.
    """
    waker = _Waker()
    t0_ns = time.monotonic_ns()
    for sampler in samplers:
        sampler._wake = waker.wake
        sampler._start(t0_ns)
    # Fastest first: when deadlines coincide, the probe with the least slack reads first.
    active = sorted(samplers, key=lambda s: s.period_ns)
    handoff_ns = min(s.handoff_interval_ns for s in samplers)
    next_handoff_ns = t0_ns + handoff_ns
    if desk is not None:
        desk._attach(waker.wake)
    # Stop flags and hand-off requests are looked at only when something may have set
    # them: stop() and request_handoff() wake the thread through the pipe, and a read that
    # loses its probe stops it from this thread.  The rest of the loop is per deadline.
    flags_may_have_changed = True
    try:
        while active:
            if flags_may_have_changed:
                flags_may_have_changed = False
                if desk is not None:
                    desk.serve(active)
                if any(s.stopping for s in active):
                    for sampler in [s for s in active if s.stopping]:
                        _leave(sampler)
                    active = [s for s in active if not s.stopping]
                    continue
                for sampler in active:
                    if sampler._handoff_due():  # a closing window waits for it
                        sampler._handoff_from_thread()
            due_ns = min(s.deadline_ns for s in active)
            delay_ns = due_ns - time.monotonic_ns()
            if delay_ns > 0:
                slice_s = delay_ns / 1e9
                flags_may_have_changed = waker.sleep(min(slice_s, STOP_SLICE_S))
                flags_may_have_changed |= slice_s > STOP_SLICE_S  # a lost wake-up
                continue
            for sampler in active:
                if sampler.deadline_ns <= time.monotonic_ns() and not sampler._step():
                    sampler.stop()  # lost: it leaves at the top of the loop
                    flags_may_have_changed = True
            now = time.monotonic_ns()
            if now >= next_handoff_ns:
                for sampler in active:
                    sampler._handoff_from_thread()
                next_handoff_ns = now + handoff_ns
            elif any(s._handoff_after_ns is not None for s in active):
                # A closing window asked for the samples up to its end: the read just
                # made may be the one it waits for.
                flags_may_have_changed = True
    finally:
        if desk is not None:
            desk._attach(None)
        for sampler in active:
            _leave(sampler)
        for sampler in samplers:
            sampler._wake = None
        waker.close()


def _leave(sampler: Sampler) -> None:
    sampler._finish()
    sampler._handoff_from_thread()


async def _run_thread(
    samplers: Sequence[Sampler], limiter: anyio.CapacityLimiter, desk: EdgeDesk | None = None
) -> None:
    try:
        # abandon_on_cancel=False: on cancellation we wait for the thread, which sees the
        # stop flags set by the daemon and hands off what it holds.
        await anyio.to_thread.run_sync(
            drive, samplers, desk, limiter=limiter, abandon_on_cancel=False
        )
    finally:
        for sampler in samplers:
            sampler.send.close()


async def _run_async(sampler: Sampler) -> None:
    try:
        await sampler._async_loop()
    finally:
        sampler.send.close()


async def run_samplers(samplers: Sequence[Sampler], desk: EdgeDesk | None = None) -> None:
    """Sample until every sampler is stopped: blocking probes on one shared thread (those
    declaring ``blocking_reads`` on a thread each), async probes as tasks on this loop.
    Each sampler's send stream is closed when it is done.  The shared thread serves the
    edge reads asked at ``desk``."""
    shared = [s for s in samplers if not s.is_async and not s.dedicated_thread]
    own = [s for s in samplers if not s.is_async and s.dedicated_thread]
    threads = [shared] if shared else []
    threads += [[s] for s in own]
    # A limiter of our own: the threads live as long as the daemon and must not take
    # tokens from anyio's default pool, which the writer and services use.
    limiter = anyio.CapacityLimiter(max(1, len(threads)))
    async with anyio.create_task_group() as group:
        for members in threads:
            group.start_soon(_run_thread, members, limiter, desk if members is shared else None)
        for sampler in samplers:
            if sampler.is_async:
                group.start_soon(_run_async, sampler)
