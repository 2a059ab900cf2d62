"""The Python API: measure windows of your own code.

```python
from greenmon import Monitor

with Monitor(db="runs.duckdb") as m:
    with m.window("prefill", batch=8) as w:
        ...  # the work to measure
    print(w.energy_j["cpu"], w.duration_s, w.flags)
```

A Monitor attaches to the daemon that holds the database (through its API socket) or, when
none runs, starts one in a background thread, composed as ``greenmon daemon`` composes
its own (greenmon/daemon.py ``build_daemon``), and talks to it through the same API.
Either way, a window's figures come back the moment it closes and are the same as the
view ``window_results`` gives in DuckDB afterwards.  ``begin_window(name)`` /
``end_window(name)`` serve code that
cannot nest a ``with``.

``Monitor(pid=PID)`` also attributes each window's energy to the process tree of PID (its
share of the machine's busy CPU time in each sampling interval, greenmon/attribution.py):
``w.attribution.attributed_j["cpu"]`` beside the machine's ``w.energy_j["cpu"]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from greenmon.api.messages import WindowListing, WindowResult
from greenmon.attribution import (
    METHOD_GPU_UTILISATION,
    CpuShareSampler,
    GpuShareSampler,
    ProcessAttribution,
    attribute_cpu_time,
    attribute_shares,
    domain_energy_j,
    power_series_from_rows,
    power_series_sql,
)
from greenmon.errors import GreenmonError

if TYPE_CHECKING:
    from greenmon.api.client import ApiClient
    from greenmon.background import BackgroundDaemon
    from greenmon.config import Config

T = TypeVar("T")
# A close waits for the samples up to the window's end (a few periods of the slowest
# probe); a window opened with baseline_s waits for that idle window first.
CLIENT_TIMEOUT_S = 3900.0


class MonitorError(GreenmonError):
    title = "Monitor"


class Window:
    """A window opened by a Monitor; its figures are readable once it has closed."""

    def __init__(self, window_id: int, name: str, tags: Mapping[str, Any], start_ns: int) -> None:
        self.window_id = window_id
        self.name = name
        self.tags = dict(tags)
        self.start_ns = start_ns
        self.result: WindowResult | None = None
        # Set when the Monitor attributes windows to a process tree (Monitor(pid=...)).
        self.attribution: ProcessAttribution | None = None
        self.sampler: CpuShareSampler | None = None

    def _closed(self) -> WindowResult:
        if self.result is None:
            raise MonitorError(
                f"Window {self.name!r} is still open: its figures exist once it closes (leave "
                "the `with` block, or call end_window)."
            )
        return self.result

    @property
    def energy_j(self) -> dict[str, float]:
        """Energy per domain (cpu, dram, gpu, wall, global = cpu + gpu) in joules."""
        return self._closed().energy_j

    @property
    def dynamic_j(self) -> dict[str, float]:
        """Energy above the baseline window's mean power, per domain (empty: no baseline)."""
        return self._closed().dynamic_j

    @property
    def mean_power_w(self) -> dict[str, float]:
        return self._closed().mean_power_w

    @property
    def duration_s(self) -> float:
        return self._closed().duration_s

    @property
    def coverage(self) -> float | None:
        return self._closed().coverage

    @property
    def interpolated(self) -> list[str]:
        """Domains whose energy is interpolated at the edges (a stream that cannot be read
        on demand); every other domain's counters were read at both edges."""
        return self._closed().interpolated

    @property
    def flags(self) -> list[str]:
        """Validity flags (short_window, low_coverage, counter_wrap, estimated, ...)."""
        return self._closed().flags

    def __repr__(self) -> str:
        state = "open" if self.result is None else f"{self.result.duration_s:.3f} s"
        return f"<Window {self.window_id} {self.name!r} {state}>"


class Monitor:
    """Named measurement windows over a greenmon daemon (attached or in-process).

    ``db``: the database (default, as for the CLI: $GREENMON_DB, the config's, or
    ./greenmon.duckdb); its daemon is attached to when one holds it; ``config``: a TOML
    file (or Config) for an in-process daemon's probes; ``socket``: the API socket
    (default: the one derived from the database's path); ``pid``: attribute each window's
    energy to this process and its descendants; ``proc_root``: where /proc is (tests);
    ``nvml``: the NVML module for GPU attribution (default: pynvml when it initialises).
    """

    def __init__(
        self,
        db: str | Path | None = None,
        *,
        config: str | Path | Config | None = None,
        socket: str | Path | None = None,
        pid: int | None = None,
        proc_root: str | Path = "/proc",
        nvml: Any = None,
    ) -> None:
        self.pid = pid
        self.nvml = nvml
        self.proc_root = Path(proc_root)
        self._db = db
        self._config_arg = config
        self._socket_arg = socket
        self.db_path: Path | None = None
        self.socket_path: Path | None = None
        self.attached = False
        self.default_baseline_id: int | None = None
        self._background: BackgroundDaemon | None = None
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._client: ApiClient | None = None
        self._open: dict[str, Window] = {}

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Monitor:
        from greenmon.api.client import ApiClient, find_daemon
        from greenmon.api.server import ApiOptions
        from greenmon.api.sockets import resolve_socket_path
        from greenmon.config import Config, load_config, resolve_db

        config = (
            self._config_arg
            if isinstance(self._config_arg, Config)
            else load_config(self._config_arg)
        )
        self.db_path = resolve_db(str(self._db) if self._db else None, config.daemon.db)
        self.socket_path = resolve_socket_path(self._socket_arg, self.db_path)
        self._portal_cm = start_blocking_portal("asyncio")
        self._portal = self._portal_cm.__enter__()
        try:
            # The daemon of this database (its socket is derived from the file's path); one
            # found at an overriding socket that holds another file is an error there.
            found = find_daemon(self.db_path, self._socket_arg)
            if found is not None:
                self._client = ApiClient(self.socket_path, timeout_s=CLIENT_TIMEOUT_S)
                self.attached = True
            else:
                from greenmon.background import BackgroundDaemon

                self._background = BackgroundDaemon(
                    self.db_path, config, ApiOptions(socket_path=self.socket_path)
                )
                self._background.start()
                self._client = ApiClient(self.socket_path, timeout_s=CLIENT_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """End open windows, detach, and stop an in-process daemon (an attached one runs on)."""
        try:
            for name in list(self._open):
                with contextlib.suppress(GreenmonError):
                    self.end_window(name)
            if self._client is not None and self._portal is not None:
                with contextlib.suppress(Exception):
                    self._portal.call(self._client.close)
        finally:
            self._client = None
            if self._portal_cm is not None:
                self._portal_cm.__exit__(None, None, None)
                self._portal_cm = self._portal = None
            if self._background is not None:
                self._background.stop()
                self._background = None

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self._portal is None or self._client is None:
            raise MonitorError("The Monitor is not started: use `with Monitor(...) as m:`.")

        async def call() -> T:
            return await fn(*args, **kwargs)

        return self._portal.call(call)

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            raise MonitorError("The Monitor is not started: use `with Monitor(...) as m:`.")
        return self._client

    # -- windows -----------------------------------------------------------------------
    def open_window(
        self,
        name: str,
        tags: Mapping[str, Any] | None = None,
        *,
        kind: str = "window",
        baseline: int | WindowResult | None = None,
    ) -> Window:
        """Open a window now; ``baseline`` (a window id or result) defaults to the one
        ``take_baseline`` took."""
        baseline_id = baseline.window_id if isinstance(baseline, WindowResult) else baseline
        if baseline_id is None and kind == "window":
            baseline_id = self.default_baseline_id
        # The sampler starts before the window opens and stops after it closes, so its
        # readings bracket the window and every instant of it is attributed.
        sampler = None
        if self.pid is not None and kind == "window":
            sampler = CpuShareSampler([self.pid], proc_root=self.proc_root)
            nvml = self._nvml()
            if nvml is not None:
                sampler.attach_gpu(nvml)
            sampler.start()
        opened = self._call(
            self.client.open_window, name, dict(tags or {}), kind=kind,
            baseline_window_id=baseline_id,
        )  # fmt: skip
        window = Window(opened.window_id, name, tags or {}, opened.start_ns)
        window.sampler = sampler
        return window

    def close_window(self, window: Window) -> WindowResult:
        result = self._call(self.client.close_window, window.window_id)
        window.result = result
        if window.sampler is not None:
            gpu = window.sampler.gpu
            readings = window.sampler.stop()
            window.sampler = None
            window.attribution = self._attribute(
                window.window_id, readings, (result.start_ns, result.end_ns), gpu
            )
        return result

    def _nvml(self) -> Any:
        """The NVML module for per-process GPU utilisation, initialised; None without."""
        if self.nvml is None:
            try:
                import pynvml

                pynvml.nvmlInit()
            except Exception:  # no library, no driver, no GPU: the GPU is not attributed
                return None
            self.nvml = pynvml
        return self.nvml

    def _attribute(
        self,
        window_id: int,
        readings: list[Any],
        span_ns: tuple[int, int],
        gpu: GpuShareSampler | None = None,
    ) -> ProcessAttribution:
        """The window's energy per domain, read back from the store interval by interval,
        split by the tree's share of busy CPU time."""
        rows: list[list[Any]] = []
        page = 10_000
        while True:
            got = self._call(
                self.client.sql, power_series_sql(window_id, offset=len(rows), limit=page), page
            )
            rows += got.rows
            if len(got.rows) < page:
                break
        series = power_series_from_rows(rows)
        energy_of = {
            domain: (lambda lo, hi, s=channels: domain_energy_j(s, lo, hi))
            for domain, channels in series.items()
            if domain in ("cpu", "dram")
        }
        result = attribute_cpu_time(readings, energy_of, span_ns)
        if gpu is not None and gpu.any_samples and series.get("gpu"):
            # by the tree's share of the GPUs' per-process SM utilisation
            energy = partial(domain_energy_j, series["gpu"])
            result.attributed_j["gpu"] = attribute_shares(gpu.intervals, energy, span_ns)
            result.machine_j["gpu"] = energy(*span_ns)
            result.method["gpu"] = METHOD_GPU_UTILISATION
        return result

    @contextlib.contextmanager
    def window(
        self, name: str, *, baseline: int | WindowResult | None = None, **tags: Any
    ) -> Iterator[Window]:
        """``with m.window("prefill", batch=8) as w: ...``; then ``w.energy_j["cpu"]``."""
        window = self.open_window(name, tags, baseline=baseline)
        try:
            yield window
        finally:
            # Closed also when the body raises: what was measured is kept.
            self.close_window(window)

    def begin_window(
        self, name: str, *, baseline: int | WindowResult | None = None, **tags: Any
    ) -> Window:
        """Open a window known by its name until ``end_window(name)``."""
        if name in self._open:
            raise MonitorError(f"A window named {name!r} is already open; end it first.")
        window = self.open_window(name, tags, baseline=baseline)
        self._open[name] = window
        return window

    def end_window(self, name: str) -> WindowResult:
        window = self._open.pop(name, None)
        if window is None:
            raise MonitorError(
                f"No window named {name!r} is open (open: {', '.join(self._open) or 'none'})."
            )
        return self.close_window(window)

    def take_baseline(self, seconds: float, name: str = "baseline") -> WindowResult:
        """An idle window of ``seconds`` now; later windows subtract its mean power."""
        import time

        window = self.open_window(name, {}, kind="baseline")
        time.sleep(seconds)
        result = self.close_window(window)
        self.default_baseline_id = result.window_id
        return result

    def windows(self, limit: int = 20) -> WindowListing:
        """Open windows and the last ``limit`` closed ones of the daemon's session."""
        return self._call(self.client.windows, limit)
