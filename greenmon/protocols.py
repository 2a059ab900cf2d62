"""Where the daemon, the experiment runner and the API meet: small typed protocols.

Each side names only what it uses of the other, so none needs the other's whole class (or
``Any``) and a change on one side that breaks the other is a type error, not a runtime one:

- ``RunnerHost``: what the runner needs from its daemon (greenmon/daemon.py ``Daemon``):
  the store, the configuration, the session, events, a flush of what the writer holds
  (greenmon/rounds.py reads a round's samples), and a place to attach itself.
- ``RunnerControl``: what the API (greenmon/api/) and ``greenmon run``
  (greenmon/commands/run.py) need from a runner (greenmon/runner.py ``ExperimentRunner``):
  submit, follow, pause, resume, cancel, and the live results.
- ``WindowHost``: what the named-windows registry (greenmon/windows.py) uses of its daemon.
- ``MetricsHost``: what the Prometheus collector (greenmon/metrics.py) reads of its daemon.
- ``PrecisionStore``, ``QualityStore``: what the stop rule (greenmon/rounds.py) and the
  quality scores (greenmon/quality.py) use of the store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from greenmon.api.messages import PlanSubmitted, Progress, ResultRow
    from greenmon.config import Config
    from greenmon.daemon import Daemon
    from greenmon.plan import Plan
    from greenmon.probes.base import Channel
    from greenmon.runner import ExperimentRunner, Submission
    from greenmon.sampling import Sampler
    from greenmon.store import Store
    from greenmon.windows import WindowRegistry


class RunnerControl(Protocol):
    """What the API and ``greenmon run`` use of the daemon's runner."""

    @property
    def current(self) -> Submission | None: ...

    @property
    def queue(self) -> list[Submission]: ...

    @property
    def busy(self) -> bool: ...

    async def submit(
        self,
        plan_toml: str,
        plan_path: str | None,
        *,
        force: bool = False,
        resume: bool = False,
        shard: str | None = None,
    ) -> PlanSubmitted: ...

    async def submit_plan(self, plan: Plan, *, force: bool, resume: bool) -> Submission: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def cancel(self, experiment_id: str | None = None) -> None: ...

    def progress(self) -> Progress: ...

    def summary_rows(self, experiment_id: str) -> list[ResultRow]: ...


class RunnerHost(Protocol):
    """What the runner uses of its daemon (read-only but for ``runner``, which the runner
    service sets so the API can find it)."""

    runner: RunnerControl | None

    @property
    def store(self) -> Store: ...

    @property
    def config(self) -> Config: ...

    @property
    def session_id(self) -> str: ...

    def event(self, level: str, message: str, probe: str | None = None) -> None: ...

    async def flush(self) -> None: ...

    async def samples_through(self, t_ns: int) -> None: ...

    def edge_ns(self) -> int: ...


class WindowHost(Protocol):
    """What the named-windows service uses of its daemon: it attaches its registry as
    ``windows`` and closes open windows from a stop hook."""

    windows: WindowRegistry | None
    on_stop: list[Callable[[], Awaitable[None]]]
    samplers: list[Sampler]

    @property
    def store(self) -> Store: ...

    @property
    def session_id(self) -> str: ...

    def event(self, level: str, message: str, probe: str | None = None) -> None: ...

    async def samples_through(self, t_ns: int) -> None: ...

    def edge_ns(self) -> int: ...


class MetricsHost(Protocol):
    """What the Prometheus collector reads of its daemon (in-memory state only)."""

    samplers: list[Sampler]
    channels: dict[int, tuple[str, Channel]]
    unavailable: dict[str, str]

    @property
    def windows(self) -> WindowRegistry | None: ...

    @property
    def store(self) -> Store: ...

    @property
    def session_id(self) -> str: ...

    def channel_values(self) -> list[tuple[int, int, float]]: ...

    def progress(self) -> Progress | None: ...


class PrecisionStore(Protocol):
    """What the stop rule of ``repetitions = "auto"`` reads of the store."""

    def materialise_unit_results(self, experiment_id: str) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]: ...

    def query(
        self, sql: str, params: Sequence[Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...


class QualityStore(Protocol):
    """What scoring a unit's answers writes to the store."""

    def set_request_quality(
        self, experiment_id: str, unit_id: int, attempt: int, rows: Sequence[Sequence[Any]]
    ) -> None: ...


if TYPE_CHECKING:
    # mypy proves here that each side is what the other needs (never run).
    def _daemon_is_a_runner_host(daemon: Daemon) -> RunnerHost:
        return daemon

    def _runner_is_runner_control(runner: ExperimentRunner) -> RunnerControl:
        return runner

    def _daemon_is_a_window_host(daemon: Daemon) -> WindowHost:
        return daemon

    def _daemon_is_a_metrics_host(daemon: Daemon) -> MetricsHost:
        return daemon

    def _store_is_a_precision_store(store: Store) -> PrecisionStore:
        return store

    def _store_is_a_quality_store(store: Store) -> QualityStore:
        return store
