"""The stream's snapshots: what the daemon shows, and the hub that hands out the newest.

*snapshot*: what ``GET /stream`` sends about 4 times a second, one JSON object per line
(NDJSON): the latest value of every channel, cheap probe health and runner progress,
built by ``Daemon.snapshot()`` (greenmon/daemon.py), which ``GET /status`` uses too.
The stream is *lossy*: one task builds and serialises each snapshot once, and every
client's writer sends only the newest one when its previous write has completed.  A
stalled client therefore holds at most one snapshot plus its socket buffers, and never
slows a probe, the writer or another client.

The functions below name the daemon's own methods for callers that import them from
``greenmon.api`` (metrics, the ``run`` progress line).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from greenmon.api.messages import ChannelRow, ProbeStatus, Progress, Snapshot
    from greenmon.daemon import Daemon

STREAM_HZ = 4.0
# A client whose single write has not completed in this long is disconnected, which
# frees the buffers it pins; a healthy viewer drains a snapshot in microseconds.
STREAM_WRITE_TIMEOUT_S = 30.0


def snapshot(daemon: Daemon) -> Snapshot:
    return daemon.snapshot()


def probe_summary(daemon: Daemon) -> list[ProbeStatus]:
    """Health without jitter percentiles: cheap enough for every stream snapshot."""
    return daemon.health_summary()


def channel_table(daemon: Daemon) -> list[ChannelRow]:
    return daemon.channel_table()


def channel_values(daemon: Daemon) -> list[tuple[int, int, float]]:
    """``[channel_id, t_ns, value]`` for the latest reading of every channel."""
    return daemon.channel_values()


def runner_progress(daemon: Daemon) -> Progress | None:
    return daemon.progress()


class SnapshotHub:
    """The newest serialised snapshot, and a way to wait for a newer one."""

    def __init__(self) -> None:
        self.version = 0
        self.data = b""
        self.clients = 0
        self.closed = False
        self._changed = anyio.Event()

    def publish(self, data: bytes) -> None:
        self.version += 1
        self.data = data
        self._changed.set()
        self._changed = anyio.Event()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def newer_than(self, version: int) -> tuple[int, bytes] | None:
        while self.version <= version and not self.closed:
            await self._changed.wait()
        return None if self.closed else (self.version, self.data)
