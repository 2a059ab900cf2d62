"""A daemon serving its API from a background thread (``greenmon measure``, ``Monitor``,
``greenmon tui``, bench/).

When no daemon holds the database, these start one in-process: the daemon gets its own
event loop in a thread (an anyio blocking portal), so the caller's own work never delays
the daemon's hand-offs or flushes on a shared loop, and the caller still talks to it only
through the API socket, exactly as it would to a separate process.  The daemon is composed
as ``greenmon daemon`` composes its own (greenmon/daemon.py ``build_daemon``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from greenmon.api.server import ApiOptions
from greenmon.config import Config
from greenmon.daemon import Daemon, DaemonSummary, build_daemon, open_daemon_store
from greenmon.probes.base import Probe
from greenmon.store import Store


class BackgroundDaemon:
    """``start()`` returns once probes sample and the API listens; ``stop()`` is orderly."""

    def __init__(
        self,
        db_path: Path,
        config: Config,
        api: ApiOptions,
        *,
        probes: Mapping[str, Probe] | None = None,
    ) -> None:
        self.db_path = db_path
        self.probes = probes
        self.config = config
        self.api = api
        self.daemon: Daemon | None = None
        self._store: Store | None = None
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._future: Future[Any] | None = None

    def start(self) -> Daemon:
        self._store = open_daemon_store(self.db_path, self.config)
        self.daemon = build_daemon(
            self._store,
            self.config,
            api=self.api,
            probes=self.probes,
            # Signals belong to the main thread, where the caller handles them.
            handle_signals=False,
        )
        self._portal_cm = start_blocking_portal("asyncio")
        self._portal = self._portal_cm.__enter__()
        try:
            self._future, _ = self._portal.start_task(self.daemon.run)
        except BaseException:
            self._close()
            raise
        return self.daemon

    def stop(self, timeout_s: float = 30.0) -> DaemonSummary | None:
        summary: DaemonSummary | None = None
        try:
            if self._portal is not None and self.daemon is not None and self._future is not None:
                self._portal.call(self.daemon.request_stop)
                summary = self._future.result(timeout=timeout_s)
        finally:
            self._close()
        return summary

    def _close(self) -> None:
        if self._portal_cm is not None:
            self._portal_cm.__exit__(None, None, None)
            self._portal_cm = None
            self._portal = None
        if self._store is not None:
            self._store.close()
            self._store = None
