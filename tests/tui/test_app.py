"""The TUI driven by Textual's pilot against a daemon with fake probes and a fake runner."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from textual.widgets import DataTable, Input, Static

from greenmon.api import ApiClient
from greenmon.tui.app import GreenmonApp
from tests.api.fakes import FakePowerProbe, FakeRunner, running_daemon, short_socket_dir

pytestmark = pytest.mark.anyio

SIZE = (140, 40)
NO_HOST = "[probes.host]\nenabled = false\n"


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with short_socket_dir() as path:
        yield path / "d.sock"


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    with anyio.fail_after(timeout_s):
        while not condition():
            await anyio.sleep(0.05)


def text_of(app: GreenmonApp, selector: str) -> str:
    return str(app.query_one(selector, Static).content)


def table_rows(app: GreenmonApp, selector: str) -> list[list[str]]:
    table = app.query_one(selector, DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def test_values_change_as_samples_arrive(db_path: Path, sock_path: Path) -> None:
    probes = {"fakepower": FakePowerProbe()}
    async with running_daemon(db_path, sock_path, probes, config_text=NO_HOST):
        app = GreenmonApp(ApiClient(sock_path), where=str(sock_path))
        async with app.run_test(size=SIZE) as pilot:
            await until(lambda: app.model.snapshots >= 2 and app.connected)
            first = text_of(app, "#power-now")
            assert "CPU package" in first and "GPU" in first and "estimated" in first
            await until(lambda: text_of(app, "#power-now") != first)
            # the wrapping RAPL-like counter gives ~25 W (timing jitter aside), and its
            # wrap shows no negative or huge spike
            series = {label: ws for label, _, ws in app.model.chart_series()}
            cpu = next(ws for label, ws in series.items() if label.startswith("CPU package"))
            assert all(0.0 < w < 100.0 for w in cpu)
            assert 20.0 < statistics.median(cpu) < 30.0
            assert "CPU" in text_of(app, "#gauges")
            await pilot.press("q")
    assert app.return_value is not None and "keeps running" in app.return_value


async def test_grid_and_results_advance_as_units_finish(db_path: Path, sock_path: Path) -> None:
    runner = FakeRunner()
    probes = {"fakepower": FakePowerProbe()}
    async with running_daemon(db_path, sock_path, probes, runner=runner, config_text=NO_HOST):
        app = GreenmonApp(ApiClient(sock_path))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            await until(lambda: table_rows(app, "#grid") != [])
            assert table_rows(app, "#grid")[0] == ["tiny-gpt2", "0/2 done ▶ running", "0/2 done"]
            assert table_rows(app, "#results") == []
            runner.finish_unit()
            runner.finish_unit(failed=True)
            await until(lambda: table_rows(app, "#grid")[0][2] == "0/2 done 1 failed")
            assert table_rows(app, "#grid")[0][1] == "1/2 done"
            await until(lambda: len(table_rows(app, "#results")) == 1)
            assert table_rows(app, "#results")[0][0] == "torch/cpu"
            assert "unit 3/8" in text_of(app, "#unit")


async def test_pause_resume_and_cancel_reach_the_daemon(db_path: Path, sock_path: Path) -> None:
    runner = FakeRunner()
    probes = {"fakepower": FakePowerProbe()}
    async with running_daemon(db_path, sock_path, probes, runner=runner, config_text=NO_HOST):
        app = GreenmonApp(ApiClient(sock_path))
        async with app.run_test(size=SIZE) as pilot:
            await until(lambda: app.connected)
            await pilot.press("p")
            await until(lambda: runner.calls == ["pause"])
            await pilot.press("r")
            await pilot.press("c")  # the first press only asks
            await until(lambda: runner.calls == ["pause", "resume"])
            await pilot.pause(0.1)
            assert runner.calls == ["pause", "resume"]
            await pilot.press("c")
            await until(lambda: runner.calls == ["pause", "resume", "cancel"])


async def test_sql_console_shows_rows_and_refuses_a_write(db_path: Path, sock_path: Path) -> None:
    probes = {"fakepower": FakePowerProbe()}
    async with running_daemon(db_path, sock_path, probes, config_text=NO_HOST):
        app = GreenmonApp(ApiClient(sock_path))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            sql_input = app.query_one("#sql-input", Input)
            assert sql_input.has_focus
            sql_input.value = "SELECT name, unit FROM channels ORDER BY channel_id"
            await pilot.press("enter")
            await until(lambda: "rows" in text_of(app, "#sql-status"))
            assert table_rows(app, "#sql-table")[0] == ["package-0.energy_uj", "uJ"]
            assert text_of(app, "#sql-status") == "5 rows"
            sql_input.value = "DROP TABLE samples"
            await pilot.press("enter")
            await until(lambda: "refused" in text_of(app, "#sql-status"))
            assert "read-only" in text_of(app, "#sql-status")


async def test_connection_loss_is_shown_and_the_tui_reconnects(
    db_path: Path, sock_path: Path
) -> None:
    probes = {"fakepower": FakePowerProbe()}
    app = GreenmonApp(ApiClient(sock_path), reconnect_s=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: not app.connected and app.disconnects >= 1)
        assert "connection lost" in text_of(app, "#banner")
        async with running_daemon(db_path, sock_path, probes, config_text=NO_HOST):
            await until(lambda: app.connected and app.model.snapshots > 0)
            assert "connection lost" not in text_of(app, "#banner")
        await until(lambda: not app.connected)
        assert "connection lost" in text_of(app, "#banner")
        async with running_daemon(
            db_path, sock_path, {"fakepower": FakePowerProbe()}, config_text=NO_HOST
        ):
            await until(lambda: app.connected)
        await pilot.press("q")
