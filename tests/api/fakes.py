"""Fakes for API and TUI tests: a power probe (fake hardware), a plan for the fake engine,
and the daemon `greenmon daemon` composes, running in the test's task group on a short
Unix socket path."""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import anyio

from greenmon.api import ApiOptions
from greenmon.config import parse_config
from greenmon.daemon import Daemon, build_daemon
from greenmon.probes.base import Channel, Probe, Values
from greenmon.store import Store
from tests.support import plans


def fake_plan(name: str = "p", repetitions: int = 2, cooldown_s: float = 0.2) -> str:
    """A plan the real runner runs on the fake engine (tests/fakes/engine.py): it generates
    without a model, so a plan's units pass in well under a second each."""
    return plans.fake_plan(
        name, prompts=2, max_new_tokens=4, repetitions=repetitions, seed=5, warmup_requests=0,
        cooldown_s=(cooldown_s, 0.0),
    )


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
    config_text: str = "",
    options: ApiOptions | None = None,
) -> AsyncIterator[Daemon]:
    """The daemon `greenmon daemon` composes (build_daemon), with fake hardware probes.

    The runner is the real one, without the torch fidelity reference (the fake engine's
    outputs are not a model's), as ``greenmon run`` would run it with the same option.
    """
    store = Store.open(db_path)
    daemon = build_daemon(
        store,
        parse_config(config_text),
        api=options or ApiOptions(socket_path=socket_path),
        probes=probes,
        handle_signals=False,
        runner_options={"reference": None},
    )
    try:
        async with anyio.create_task_group() as group:
            await group.start(daemon.run)
            try:
                yield daemon
            finally:
                daemon.request_stop()
    finally:
        store.close()
