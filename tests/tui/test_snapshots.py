"""Snapshots pinning the TUI's main views at a fixed size, from fixed fake data.

The link below has the API client's shape and answers from constants, so every frame is
the same on every run: no clocks, no live probes.  Update with ``--snapshot-update``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from greenmon.api import QueryRefused, SqlResult
from greenmon.api.messages import (
    ControlReply,
    DaemonEvent,
    DaemonStatus,
    ExperimentRow,
    ResultRow,
    Snapshot,
    WindowListing,
    decode,
)
from greenmon.tui.app import GreenmonApp

SIZE = (140, 40)
S = 1_000_000_000
CHANNELS = [
    {"channel_id": 1, "probe": "rapl", "name": "package-0.energy_uj", "unit": "uJ",
     "kind": "counter", "domain": "cpu", "estimated": False, "metadata": {"counter_range": 2**32},
     "energy_source": True},
    {"channel_id": 2, "probe": "rapl", "name": "dram.energy_uj", "unit": "uJ",
     "kind": "counter", "domain": "dram", "estimated": False, "metadata": {},
     "energy_source": True},
    {"channel_id": 3, "probe": "estimate", "name": "gpu0.power_w", "unit": "W",
     "kind": "gauge", "domain": "gpu", "estimated": True, "metadata": {"estimated": True},
     "energy_source": True},
    {"channel_id": 4, "probe": "host", "name": "cpu.percent", "unit": "%",
     "kind": "gauge", "domain": None, "estimated": False, "metadata": {}},
    {"channel_id": 5, "probe": "host", "name": "ram.percent", "unit": "%",
     "kind": "gauge", "domain": None, "estimated": False, "metadata": {}},
]  # fmt: skip
PROBES = [
    {"probe": "rapl", "state": "running", "reason": None, "target_hz": 50.0,
     "achieved_hz": 49.98, "errors": 0, "missed_ticks": 0, "last_error": None},
    {"probe": "host", "state": "running", "reason": None, "target_hz": 10.0,
     "achieved_hz": 10.0, "errors": 2, "missed_ticks": 3, "last_error": "OSError: busy"},
    {"probe": "nvml", "state": "unavailable", "reason": "no NVIDIA driver (libnvidia-ml.so)",
     "target_hz": 0.0, "achieved_hz": 0.0, "errors": 0, "missed_ticks": 0, "last_error": None},
]  # fmt: skip
SNAPSHOTS = 120  # 60 s at 2 Hz


def cell(model: str, configuration: str, done: int, failed: int, running: int) -> dict[str, Any]:
    return {"model": model, "configuration": configuration, "done": done, "failed": failed,
            "running": running, "total": 2}  # fmt: skip


def result(configuration: str, flags: list[str]) -> dict[str, Any]:
    return {"configuration": configuration, "units": 1, "median_energy_j": 110.0,
            "median_duration_s": 5.0, "median_j_per_token": 0.51, "flags": flags}  # fmt: skip


def progress() -> dict[str, Any]:
    """A plan of 8 units, 3 finished (one failed), the 4th in its idle baseline."""
    return {
        "status": "running", "experiment_id": "exp-0001", "plan_name": "fake-plan",
        "unit_index": 4, "units_total": 8,
        "unit": {"model": "codeparrot-small", "engine": "onnx", "provider": "cpu",
                 "configuration": "onnx/cpu", "repetition": 1},
        "phase": "cooldown_before", "phase_remaining_s": 12.0,
        "request_index": 3, "requests_total": 10, "eta_s": 420.0,
        "grid": [
            cell("tiny-gpt2", "torch/cpu", 1, 0, 0), cell("tiny-gpt2", "onnx/cpu", 1, 0, 0),
            cell("codeparrot-small", "torch/cpu", 0, 1, 0),
            cell("codeparrot-small", "onnx/cpu", 0, 0, 1),
        ],
        "results": [result("torch/cpu", []), result("onnx/cpu", ["low coverage"])],
        "last_error": None,
        "queue": [{"experiment_id": "exp-0002", "plan_name": "next-plan", "units_total": 4,
                   "units_done": 0, "resumed": False, "outcome": None}],
        "finished": [],
    }  # fmt: skip


WINDOWS = {
    "open": [{"window_id": 3, "name": "prefill", "kind": "window", "tags": {"batch": 8},
              "start_ns": 996 * S, "elapsed_s": 4.25}],
    "recent": [{"window_id": 2, "name": "load-test", "kind": "window", "start_ns": 980 * S,
                "end_ns": 992_500_000_000, "duration_s": 12.5,
                "energy_j": {"cpu": 250.0, "dram": 20.5}, "flags": ["estimated"]}],
}  # fmt: skip
EXPERIMENTS = [
    {"experiment_id": "exp-0001", "plan_name": "fake-plan", "status": "running",
     "units_total": 8, "units_done": 2, "units_failed": 1},
    {"experiment_id": "exp-0000", "plan_name": "earlier", "status": "done",
     "units_total": 4, "units_done": 4, "units_failed": 0},
]  # fmt: skip


def snapshot_at(index: int) -> dict[str, Any]:
    t_ns = 1000 * S + index * S // 2
    # the package counter integrates 20 W, then 30 W while measuring, plus a ripple
    energy_j = sum(20.0 + 10.0 * (i >= 60) + 2 * math.sin(i / 5) for i in range(index)) * 0.5
    energy_uj = (energy_j * 1e6) % 2**32
    phase = "cooldown_before" if index < 60 else "measure"
    return {
        "t_ns": t_ns,
        "values": [
            [1, t_ns, energy_uj],
            [2, t_ns, index * 3.0 * 0.5e6],
            [3, t_ns, 35.0 + 5 * math.cos(index / 7)],
            [4, t_ns, 62.5],
            [5, t_ns, 41.0],
        ],
        "probes": PROBES,
        "progress": {**progress(), "phase": phase},
    }


class FixedLink:
    def __init__(self) -> None:
        self.closed = False

    # The link answers what the API client would: the wire's JSON decoded into messages.
    async def status(self) -> DaemonStatus:
        status = {
            "t_ns": 1000 * S,
            "pid": 4242,
            "session_id": "5e55104d00000000",
            "started_ns": 1000 * S,
            "db_path": "/data/greenmon.duckdb",
            "socket_path": "/run/user/1000/greenmon/daemon.sock",
            "channels": CHANNELS,
            "probes": PROBES,
            "progress": progress(),
        }
        return decode(status, DaemonStatus)

    async def stream(self) -> AsyncIterator[Snapshot]:
        for index in range(SNAPSHOTS):
            yield decode(snapshot_at(index), Snapshot)
        await anyio.sleep_forever()

    async def events(self, limit: int = 100) -> list[DaemonEvent]:
        events = [
            {"t_ns": 1000 * S, "level": "info", "probe": "rapl", "message": "sampling 2 channels at 50 Hz"},
            {"t_ns": 1001 * S, "level": "info", "probe": "nvml", "message": "unavailable: no NVIDIA driver"},
            {"t_ns": 1030 * S, "level": "warning", "probe": "host", "message": "read failed, gap left: OSError: busy"},
        ]  # fmt: skip
        return decode(events, list[DaemonEvent])

    async def sql(self, query: str, limit: int | None = None) -> SqlResult:
        if query.lstrip().upper().startswith("DROP"):
            raise QueryRefused("DROP statements are refused: the daemon's SQL is read-only.")
        return SqlResult(
            ["probe", "name", "unit"], [[c["probe"], c["name"], c["unit"]] for c in CHANNELS]
        )

    async def pause(self) -> ControlReply:
        return ControlReply()

    async def resume(self) -> ControlReply:
        return ControlReply()

    async def cancel(self, experiment_id: str | None = None) -> ControlReply:
        return ControlReply()

    async def experiments(self) -> list[ExperimentRow]:
        return decode(EXPERIMENTS, list[ExperimentRow])

    async def experiment_results(self, experiment_id: str) -> list[ResultRow]:
        return [decode(result("torch/cpu", []), ResultRow)]

    async def windows(self, limit: int = 20) -> WindowListing:
        return decode(WINDOWS, WindowListing)

    async def close(self) -> None:
        self.closed = True


def make_app() -> GreenmonApp:
    # events_every_s long: the one poll at mount is all the snapshot needs
    return GreenmonApp(
        FixedLink(), where="/run/user/1000/greenmon/daemon.sock", events_every_s=3600
    )


async def settle(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, GreenmonApp)
    with anyio.fail_after(10):
        while (
            app.model.snapshots < SNAPSHOTS
            or app.query_one("#events").row_count < 3  # type: ignore[attr-defined]
            or app.query_one("#experiments").row_count < 3  # type: ignore[attr-defined]
            or "prefill" not in str(app.query_one("#windows").content)  # type: ignore[attr-defined]
            or app.draw_pending
        ):
            await pilot.pause(0.05)
    await pilot.pause()


def test_live_view(snap_compare: Any) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=settle)


def test_plan_view(snap_compare: Any) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("2")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=before)


class FreshFileLink(FixedLink):
    """A daemon whose file lists no experiment yet: the first plan has just started (the
    file's list is polled now and then, the running plan comes with every snapshot)."""

    async def experiments(self) -> list[ExperimentRow]:
        return []


def test_plan_view_during_a_run_shows_the_grid_and_the_running_experiment(
    snap_compare: Any,
) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, GreenmonApp)
        with anyio.fail_after(10):
            while app.model.snapshots < SNAPSHOTS or app.draw_pending:
                await pilot.pause(0.05)
        await pilot.press("2")
        await pilot.pause()
        experiments = app.query_one("#experiments", DataTable)
        # the running plan, then the queued one, though the file lists neither yet
        assert [experiments.get_row_at(i)[0] for i in range(experiments.row_count)] == [
            "exp-0001", "exp-0002"]  # fmt: skip
        grid = app.query_one("#grid", DataTable)
        # the grid takes the height of its rows (header + 2 models), not a share of the
        # screen
        assert grid.row_count == 2 and grid.size.height <= grid.row_count + 2

    app = GreenmonApp(FreshFileLink(), where="/run/user/1000/greenmon/daemon.sock",
                      events_every_s=3600)  # fmt: skip
    assert snap_compare(app, terminal_size=SIZE, run_before=before)


def test_health_view(snap_compare: Any) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("3")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=before)


def test_sql_view(snap_compare: Any) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("4")
        sql_input = pilot.app.query_one("#sql-input", Input)
        sql_input.cursor_blink = False
        sql_input.value = "SELECT probe, name, unit FROM channels"
        await pilot.press("enter")
        await pilot.pause(0.2)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=before)
