"""Windows over the API of a `greenmon daemon` process, against a known power."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from greenmon.api import ApiClient, ApiError
from greenmon.api.messages import WindowResult
from greenmon.store import Store
from greenmon.views import MIN_COVERAGE
from greenmon.windows import window_result_from_row
from tests.measure.support import (
    BUSY_W,
    IDLE_W,
    MarkedPower,
    start_daemon,
    stop_daemon,
    within,
    write_config,
)

WINDOW_S = 2.0


def test_windows_over_the_api_get_the_energy_put_in(
    tmp_path: Path, short_dir: Path, marked_power: MarkedPower
) -> None:
    socket_path = short_dir / "d.sock"
    db = tmp_path / "windows.duckdb"
    process = start_daemon(
        tmp_path, socket_path, write_config(tmp_path, marked_power.tree.root), db
    )
    returned: dict[str, Any] = {}

    async def scenario() -> None:
        async with ApiClient(socket_path) as client:
            await anyio.sleep(0.5)  # let the probes collect before the first edge
            # Windows of seconds: the fake counter is advanced by a thread that a loaded
            # machine may delay by tens of milliseconds, which must stay under 1%.
            idle = await client.open_window("idle", kind="baseline")
            await anyio.sleep(WINDOW_S)
            returned["idle"] = await client.close_window(idle.window_id)

            opened = await client.open_window(
                "busy", {"batch": 8}, baseline_window_id=idle.window_id
            )
            listing = await client.windows()
            assert [w.name for w in listing.open] == ["busy"]
            busy_before = marked_power.busy_ns
            marked_power.marker.touch()
            await anyio.sleep(WINDOW_S)
            marked_power.marker.unlink()
            await anyio.sleep(0.1)
            returned["busy"] = await client.close_window(opened.window_id)
            returned["busy_s"] = (marked_power.busy_ns - busy_before) / 1e9

            # the daemon takes the baseline itself when asked, once per session
            auto = await client.open_window("auto", baseline_s=WINDOW_S)
            assert auto.baseline_window_id is not None
            await anyio.sleep(WINDOW_S)
            returned["auto"] = await client.close_window(auto.window_id)

            with pytest.raises(ApiError, match="not open"):
                await client.close_window(opened.window_id)
            with pytest.raises(ApiError, match="name"):
                await client.open_window("")
            returned["listing"] = await client.windows()

    try:
        anyio.run(scenario)
    finally:
        stop_daemon(process)

    idle, busy, auto = returned["idle"], returned["busy"], returned["auto"]
    assert all(isinstance(w, WindowResult) for w in (idle, busy, auto))
    stale_j = marked_power.stale_j()
    assert within(idle.energy_j["cpu"], IDLE_W * idle.duration_s, stale_j=stale_j)
    truth_j = IDLE_W * busy.duration_s + BUSY_W * returned["busy_s"]
    assert returned["busy_s"] > 0.9 * WINDOW_S
    assert within(busy.energy_j["cpu"], truth_j, stale_j=stale_j), (busy.energy_j, truth_j)
    assert within(
        busy.dynamic_j["cpu"], BUSY_W * returned["busy_s"], stale_j=2 * stale_j
    ), busy.dynamic_j
    assert within(busy.baseline_w["cpu"], IDLE_W, stale_j=stale_j / idle.duration_s)
    assert busy.tags == {"batch": 8} and busy.flags == []
    # the product's own threshold for low_coverage (a loaded machine delays samplers)
    assert busy.coverage is not None and busy.coverage > MIN_COVERAGE
    assert abs(auto.dynamic_j["cpu"]) < 0.01 * auto.energy_j["cpu"] + 2 * stale_j
    assert "cpu_percent" in busy.utilisation

    recent = returned["listing"].recent
    assert returned["listing"].open == []
    assert [w.name for w in recent] == ["auto", "baseline", "busy", "idle"]

    # What the close returned is what DuckDB gives afterwards: the close waited for the
    # samples up to the window's end.
    with Store.open(db, read_only=True) as store:
        columns, rows = store.query("SELECT * FROM window_results WHERE name = 'busy'")
    stored = window_result_from_row(dict(zip(columns, rows[0], strict=True)))
    assert stored.energy_j["cpu"] == pytest.approx(busy.energy_j["cpu"], rel=1e-9)
    assert stored.dynamic_j["cpu"] == pytest.approx(busy.dynamic_j["cpu"], rel=1e-9)
    assert stored.coverage == busy.coverage


def test_a_window_still_open_when_the_daemon_stops_is_kept(
    tmp_path: Path, short_dir: Path, marked_power: MarkedPower
) -> None:
    socket_path = short_dir / "d.sock"
    db = tmp_path / "windows.duckdb"
    process = start_daemon(
        tmp_path, socket_path, write_config(tmp_path, marked_power.tree.root), db
    )

    async def open_one() -> None:
        async with ApiClient(socket_path) as client:
            await client.open_window("left-open")

    try:
        anyio.run(open_one)
        time.sleep(0.5)
    finally:
        stop_daemon(process)
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            "SELECT duration_s, energy_cpu_j, min_coverage FROM window_results"
        )
        _, events = store.query("SELECT message FROM events WHERE message LIKE 'window%'")
    # Closed while the probes still sampled: measured to its end, like a user's close.
    assert len(rows) == 1 and rows[0][0] > 0.4
    assert rows[0][2] is not None and rows[0][2] > MIN_COVERAGE, rows
    assert within(rows[0][1], IDLE_W * rows[0][0], rel=0.02, stale_j=marked_power.stale_j())
    assert [m for (m,) in events] == ["window 1 (left-open) closed by the daemon stopping"]
