"""The writer task: the one consumer of the samplers' batches, flushing them to the store."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import duckdb
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from greenmon.errors import StoreError
from greenmon.store.batches import Event, FlushRequest, SampleBatch
from greenmon.store.journal import LOAD_ROWS

if TYPE_CHECKING:
    from greenmon.store import Store


def _explain_write_error(path: Path, error: duckdb.Error | OSError, samples: int) -> StoreError:
    """A failed flush (full disk, file gone read-only) as a message a person can act on."""
    # A failed COMMIT is followed by a failed ROLLBACK, whose error hides the cause.
    cause: BaseException = error
    while isinstance(cause.__context__, duckdb.Error):
        cause = cause.__context__
    return StoreError(
        f"Could not write to {path}: {str(cause).splitlines()[0]}. The last {samples} "
        "samples were not stored; everything flushed before is kept and readable. Free "
        "space on that disk (or make it writable) and start again, or pass --db with a "
        "file elsewhere."
    )


async def run_writer(
    store: Store,
    session_id: str,
    receive: MemoryObjectReceiveStream[SampleBatch | Event | FlushRequest],
    *,
    sinks: Sequence[deque[tuple[SampleBatch, list[Event]]]] = (),
    flush_interval_s: float = 0.5,
    max_batch_rows: int = 100_000,
    journal_load_interval_s: float | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> int:
    """The only writer of samples: consume batches and events, flush in transactions.

    Samples come from ``receive`` (async probes, events) and from ``sinks``, the deques
    that sampler threads append to without waking the loop; both are drained at each flush.
    Flushes when ``max_batch_rows`` samples are pending or ``flush_interval_s`` has passed
    since the last flush.  Ends when every sender has closed the stream; the final flush
    (and a drain of anything still queued when cancelled) runs shielded, so SIGINT or
    SIGTERM loses nothing that reached the stream.  Returns the number of samples written.

    With ``journal_load_interval_s``, a flush appends the samples to the store's journal
    (greenmon/store/journal.py), durable without a DuckDB commit, and the journal is loaded
    into DuckDB every ``journal_load_interval_s``, at every flush request (before it is
    answered: a unit's or a window's end), and as the writer ends.  Without it each flush
    is one DuckDB transaction.
    """
    state = _WriterState(store, session_id, sinks)
    if journal_load_interval_s is not None:
        try:
            await anyio.to_thread.run_sync(store.attach_journal)
        except (duckdb.Error, OSError) as error:
            raise _explain_write_error(store.path, error, 0) from None
        state.load_interval_s = journal_load_interval_s
        state.loaded_at = anyio.current_time()
    task_status.started()
    try:
        while True:
            deadline = anyio.current_time() + flush_interval_s
            ended = False
            while len(state.pending) < max_batch_rows and not state.flush_requests:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    break
                with anyio.move_on_after(remaining):
                    try:
                        state.take(await receive.receive())
                    except anyio.EndOfStream:
                        ended = True
                        break
            state.drain_sinks()
            await state.flush()
            await state.load(force=bool(state.flush_requests))
            for request in state.flush_requests:
                request.done.set()
            state.flush_requests.clear()
            if ended:
                break
    finally:
        # Drain before closing: items already in the stream's buffer are measurements.
        with anyio.CancelScope(shield=True):
            while True:
                try:
                    state.take(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
            receive.close()
            state.drain_sinks()
            await state.flush()
            if state.load_interval_s is not None:
                try:
                    await anyio.to_thread.run_sync(store.detach_journal)
                except duckdb.Error as error:
                    raise _explain_write_error(store.path, error, 0) from None
            for request in state.flush_requests:
                request.done.set()
    return state.written


class _WriterState:
    """What run_writer holds between flushes: the samples and events not yet written,
    the flush requests to answer after the next flush, and the samples written so far."""

    def __init__(
        self,
        store: Store,
        session_id: str,
        sinks: Sequence[deque[tuple[SampleBatch, list[Event]]]],
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.sinks = sinks
        self.pending = SampleBatch()
        self.pending_events: list[Event] = []
        self.flush_requests: list[FlushRequest] = []
        self.written = 0
        # The journal's load interval (None: no journal) and the last load's time.
        self.load_interval_s: float | None = None
        self.loaded_at = 0.0

    async def flush(self) -> None:
        """Write what is pending in one transaction (off the loop); nothing when empty."""
        if not len(self.pending) and not self.pending_events:
            return
        batch, events = self.pending, self.pending_events
        self.pending, self.pending_events = SampleBatch(), []
        write = self.store.write if self.load_interval_s is None else self.store.append_samples
        try:
            await anyio.to_thread.run_sync(write, batch, events, self.session_id)
        except (duckdb.Error, OSError) as error:
            raise _explain_write_error(self.store.path, error, len(batch)) from None
        self.written += len(batch)

    async def load(self, *, force: bool) -> None:
        """Load the journal into DuckDB when forced or its interval has passed."""
        if self.load_interval_s is None:
            return
        now = anyio.current_time()
        journal = self.store.journal
        full = journal is not None and journal.pending_rows >= LOAD_ROWS
        if not force and not full and now - self.loaded_at < self.load_interval_s:
            return
        self.loaded_at = now
        try:
            await anyio.to_thread.run_sync(self.store.load_journal)
        except duckdb.Error as error:
            raise _explain_write_error(self.store.path, error, 0) from None

    def take(self, item: SampleBatch | Event | FlushRequest) -> None:
        if isinstance(item, FlushRequest):
            self.flush_requests.append(item)
        elif isinstance(item, Event):
            self.pending_events.append(item)
        else:
            self.pending.extend(item)

    def drain_sinks(self) -> None:
        for sink in self.sinks:
            while sink:
                batch, events = sink.popleft()
                self.pending.extend(batch)
                self.pending_events.extend(events)
