"""Fakes for API and TUI tests: a runner with the runner's interface, a power probe, and a
daemon running them in the test's task group on a short Unix socket path."""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio

from greenmon.api import ApiOptions, api_service
from greenmon.config import parse_config
from greenmon.daemon import Daemon
from greenmon.errors import PlanError
from greenmon.probes.base import Channel, Probe, Values
from greenmon.store import Store

MODELS = ("tiny-gpt2", "codeparrot-small")
CONFIGURATIONS = ("torch/cpu", "onnx/cpu")
REPETITIONS = 2


class FakeRunner:
    """The runner's interface over fixed data; tests move it on with ``finish_unit()``."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.submitted: list[tuple[str, str | None, bool]] = []
        self.status = "running"
        self.units = [
            (model, configuration, repetition)
            for repetition in range(1, REPETITIONS + 1)
            for model in MODELS
            for configuration in CONFIGURATIONS
        ]
        self.finished = 0
        self.failed_units: set[int] = set()
        self.lock = threading.Lock()

    # -- test controls --------------------------------------------------------------------
    def finish_unit(self, failed: bool = False) -> None:
        with self.lock:
            if failed:
                self.failed_units.add(self.finished)
            self.finished += 1
            if self.finished >= len(self.units):
                self.status = "done"

    # -- the runner's interface -----------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        with self.lock:
            current = self.finished if self.finished < len(self.units) else None
            grid = []
            for model in MODELS:
                for configuration in CONFIGURATIONS:
                    indices = [
                        i for i, u in enumerate(self.units) if u[:2] == (model, configuration)
                    ]
                    done = sum(1 for i in indices if i < self.finished)
                    failed = sum(1 for i in indices if i in self.failed_units)
                    running = sum(1 for i in indices if i == current and self.status != "done")
                    grid.append(
                        {
                            "model": model,
                            "configuration": configuration,
                            "done": done - failed,
                            "failed": failed,
                            "running": running,
                            "total": len(indices),
                        }
                    )
            results = []
            for configuration in CONFIGURATIONS:
                finished = [
                    i
                    for i, u in enumerate(self.units)
                    if u[1] == configuration and i < self.finished and i not in self.failed_units
                ]
                if finished:
                    n = len(finished)
                    results.append(
                        {
                            "configuration": configuration,
                            "units": n,
                            "median_energy_j": 100.0 + 10 * n,
                            "median_duration_s": 4.0 + n,
                            "median_j_per_token": 0.5 + 0.01 * n,
                            "flags": ["low coverage"] if configuration == "onnx/cpu" else [],
                        }
                    )
            unit = None
            if current is not None:
                model, configuration, repetition = self.units[current]
                engine, provider = configuration.split("/")
                unit = {
                    "model": model,
                    "engine": engine,
                    "provider": provider,
                    "configuration": configuration,
                    "repetition": repetition,
                }
            return {
                "status": self.status,
                "experiment_id": "exp-0001",
                "plan_name": "fake-plan",
                "unit_index": (current or 0) + 1 if current is not None else len(self.units),
                "units_total": len(self.units),
                "unit": unit,
                "phase": "cooldown_before" if unit else None,
                "phase_remaining_s": 12.0 if unit else None,
                "request_index": 3 if unit else None,
                "requests_total": 10 if unit else None,
                "eta_s": 600.0 - 60 * self.finished,
                "grid": grid,
                "results": results,
            }

    async def submit(self, plan_toml: str, plan_path: str | None, *, force: bool = False) -> str:
        if "bad" in plan_toml:
            raise PlanError("models must not be empty (plan line 1)")
        self.submitted.append((plan_toml, plan_path, force))
        return f"exp-{len(self.submitted):04d}"

    def pause(self) -> None:
        self.calls.append("pause")
        self.status = "paused"

    def resume(self) -> None:
        self.calls.append("resume")
        self.status = "running"

    def cancel(self) -> None:
        self.calls.append("cancel")
        self.status = "cancelling"


class FakePowerProbe:
    """A RAPL-like package counter (wrapping), a DRAM power gauge, an estimated GPU
    power gauge and host utilisation gauges; values follow the read count."""

    name: ClassVar[str] = "fakepower"
    default_rate_hz: ClassVar[float] = 20.0
    COUNTER_RANGE_UJ = 2**32

    POWER_W = 25.0

    def __init__(self) -> None:
        self.reads = 0
        self.t0_ns = time.monotonic_ns()

    def open(self) -> Sequence[Channel]:
        return [
            Channel(
                "package-0.energy_uj",
                "uJ",
                "counter",
                domain="cpu",
                metadata={"counter_range": self.COUNTER_RANGE_UJ},
            ),
            Channel("dram.power_mw", "mW", "gauge", domain="dram"),
            Channel("gpu0.power_w", "W", "gauge", domain="gpu", metadata={"estimated": True}),
            Channel("cpu.percent", "%", "gauge"),
            Channel("ram.percent", "%", "gauge"),
        ]

    def read(self) -> Values:
        self.reads += 1
        # The counter follows time, not reads, so late reads under load still give 25 W;
        # it starts 0.2 s short of its range and so wraps early in every test.
        elapsed_s = (time.monotonic_ns() - self.t0_ns) / 1e9
        energy_uj = self.COUNTER_RANGE_UJ - 5_000_000 + self.POWER_W * 1e6 * elapsed_s
        wobble = math.sin(self.reads / 10)
        return [
            float(energy_uj % self.COUNTER_RANGE_UJ),
            3000.0 + 500 * wobble,
            40.0 + 5 * wobble,
            50.0 + 20 * wobble,
            42.0,
        ]

    def close(self) -> None:
        pass


@contextlib.contextmanager
def short_socket_dir() -> Iterator[Path]:
    """A directory under /tmp: pytest's tmp_path can exceed a Unix socket's 108 chars."""
    path = Path(tempfile.mkdtemp(prefix="gm-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_daemon(
    db_path: Path,
    socket_path: Path,
    probes: Mapping[str, Probe],
    *,
    runner: Any = None,
    config_text: str = "",
    options: ApiOptions | None = None,
) -> AsyncIterator[Daemon]:
    store = Store.open(db_path)
    api_options = options or ApiOptions(socket_path=socket_path)
    daemon = Daemon(
        store,
        parse_config(config_text),
        probes=probes,
        services=[api_service(api_options)],
        handle_signals=False,
    )
    if runner is not None:
        daemon.runner = runner  # type: ignore[attr-defined]
    try:
        async with anyio.create_task_group() as group:
            await group.start(daemon.run)
            try:
                yield daemon
            finally:
                daemon.request_stop()
    finally:
        store.close()
