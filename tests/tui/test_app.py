"""The TUI driven by Textual's pilot against the daemon `greenmon daemon` composes, with fake
hardware probes and plans on the fake engine."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from textual.widgets import ContentSwitcher, DataTable, Input, Static

from greenmon.api import ApiClient
from greenmon.tui.app import GreenmonApp
from tests.api.fakes import FakePowerProbe, fake_plan, running_daemon, short_socket_dir

pytestmark = pytest.mark.anyio

SIZE = (140, 40)
NO_HOST = "[probes.host]\nenabled = false\n"


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with short_socket_dir() as path:
        yield path / "d.sock"


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
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
    probes = {"fakepower": FakePowerProbe()}
    async with running_daemon(db_path, sock_path, probes, config_text=NO_HOST):
        client = ApiClient(sock_path)
        app = GreenmonApp(client)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            await until(lambda: app.connected)
            submitted = await client.submit(fake_plan("grid", repetitions=2), None)
            await until(lambda: table_rows(app, "#grid") != [], timeout_s=60)
            assert table_rows(app, "#grid")[0][0] == "tiny"
            await until(lambda: all("2/2 done" in c for c in table_rows(app, "#grid")[0][1:]),
                        timeout_s=60)  # fmt: skip
            await until(lambda: len(table_rows(app, "#results")) == 2, timeout_s=30)
            assert {r[0] for r in table_rows(app, "#results")} == {"fake/cpu", "fake2/cpu"}
            # the finished experiment is listed from the file, with its counts
            await until(lambda: table_rows(app, "#experiments") != [], timeout_s=30)
            await until(lambda: table_rows(app, "#experiments")[0][2] == "done", timeout_s=30)
            row = table_rows(app, "#experiments")[0]
            assert row[0] == submitted.experiment_id and row[3] == "4" and row[5] == "4"


async def test_the_unit_panel_grows_to_show_the_unit_and_phase(
    db_path: Path, sock_path: Path
) -> None:
    """The panel first shows one line (idle); once a plan runs, its unit and phase lines
    must be visible, not clipped to the first line's height (seen by hand in tmux)."""
    probes = {"fakepower": FakePowerProbe()}
    async with running_daemon(db_path, sock_path, probes, config_text=NO_HOST):
        client = ApiClient(sock_path)
        app = GreenmonApp(client)
        async with app.run_test(size=SIZE) as pilot:
            await until(lambda: app.connected and "idle" in text_of(app, "#unit"))
            await pilot.pause(1.5)  # drawn and laid out with the one idle line
            await client.submit(fake_plan("shown", repetitions=20, cooldown_s=0.5), None)

            def unit_and_phase_visible() -> bool:
                lines = text_of(app, "#unit").splitlines()
                height = app.query_one("#unit", Static).content_region.height
                return any(line.startswith("phase ") for line in lines) and height >= len(lines)

            await until(unit_and_phase_visible, timeout_s=30)
            await client.cancel()


async def test_pause_resume_and_cancel_reach_the_daemon(db_path: Path, sock_path: Path) -> None:
    probes = {"fakepower": FakePowerProbe()}
    async with running_daemon(db_path, sock_path, probes, config_text=NO_HOST):
        client = ApiClient(sock_path)
        app = GreenmonApp(client)

        def status() -> str:
            return str(app.model.progress.status if app.model.progress else None)

        async with app.run_test(size=SIZE) as pilot:
            await until(lambda: app.connected)
            await client.submit(fake_plan("steered", repetitions=20, cooldown_s=0.5), None)
            await until(lambda: status() == "running", timeout_s=30)
            await pilot.press("p")
            await until(lambda: status() == "paused")
            await pilot.press("r")
            await until(lambda: status() == "running")
            await pilot.press("c")  # the first press only asks
            await pilot.pause(0.3)
            assert status() == "running"
            await pilot.press("c")
            await until(lambda: status() == "cancelled", timeout_s=30)


async def test_escape_leaves_the_sql_input_and_view_keys_work_again(
    db_path: Path, sock_path: Path
) -> None:
    async with running_daemon(db_path, sock_path, {"fakepower": FakePowerProbe()}):
        app = GreenmonApp(ApiClient(sock_path))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            sql_input = app.query_one("#sql-input", Input)
            assert sql_input.has_focus
            await pilot.press("1", "2")  # typed into the query, not taken as view keys
            assert sql_input.value == "12"
            assert app.query_one("#views", ContentSwitcher).current == "sql"
            await pilot.press("escape", "2")
            assert not sql_input.has_focus
            assert app.query_one("#views", ContentSwitcher).current == "plan"


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
        await until(lambda: not app.connected)
        await pilot.press("q")
    # quit after the daemon went away: the TUI does not claim it keeps running
    assert app.return_value is not None and "no daemon answers" in app.return_value


async def test_named_windows_and_a_served_unit_are_listed_beside_the_current_unit(
    db_path: Path, sock_path: Path
) -> None:
    async with running_daemon(db_path, sock_path, {"fakepower": FakePowerProbe()}):
        client = ApiClient(sock_path)
        app = GreenmonApp(client, windows_every_s=0.2)
        async with app.run_test(size=SIZE):
            await until(lambda: app.connected)
            opened = await client.open_window("prefill", {"batch": 8})
            await until(lambda: "▶ prefill" in text_of(app, "#windows"))
            await client.close_window(opened.window_id)
            await until(lambda: "prefill  " in text_of(app, "#windows")
                        and "▶ prefill" not in text_of(app, "#windows"))  # fmt: skip


async def test_a_served_units_load_is_one_line_of_the_unit_panel() -> None:
    from greenmon.api.messages import Progress, decode
    from greenmon.tui.model import unit_lines

    progress = {
        "status": "running", "experiment_id": "e", "plan_name": "p", "unit_index": 1,
        "units_total": 2, "unit": {"model": "tiny", "configuration": "http/llama",
                                   "repetition": 1},
        "phase": "measure", "requests_total": 8, "request_index": 3,
        "serving": {"requests_in_flight": 4, "requests_done": 3, "tokens_per_s": 12.5,
                    "latency_p50_s": 0.8, "latency_p90_s": 1.2, "ttft_p50_s": 0.1},
    }  # fmt: skip
    lines = unit_lines(decode(progress, Progress))
    line = next(line for line in lines if line.startswith("served"))
    assert line == (
        "served: 4 in flight, 3 done, 12.5 tok/s, latency p50 0.80s p90 1.20s, TTFT p50 0.10s"
    )


async def test_a_draw_that_fires_while_the_app_closes_draws_nothing(sock_path: Path) -> None:
    """A draw timer or worker can fire once the screen is torn down (seen in CI): it must
    draw nothing rather than fail on widgets that are gone."""
    app = GreenmonApp(ApiClient(sock_path))
    assert app._current_view() is None  # no screen: as while closing
    app._stale = True
    app._draw_visible()
    app._draw_timer()
    app._update_static("unit", "text")
    app._set_connected(False, error="gone")


async def test_the_chart_is_redrawn_only_when_a_sample_or_phase_is_new(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart is most of a draw's cost: past its period it is drawn again
    only if the newest sample or the phases changed (no daemon answers here)."""
    from greenmon.tui.app import PowerChart

    app = GreenmonApp(ApiClient(sock_path))
    async with app.run_test(size=SIZE):
        chart = app.query_one("#live-chart", PowerChart)
        drawn: list[int | None] = []
        draw = chart.draw
        monkeypatch.setattr(
            chart, "draw", lambda model: (drawn.append(model.latest_ns), draw(model))
        )

        def period_passed_and_draw() -> None:
            app._chart_drawn_s = 1.0  # long ago: the chart's period has passed
            app._draw_live()

        for _ in range(3):
            period_passed_and_draw()
        assert drawn == []  # drawn once at mount; nothing new since
        app.model.latest_ns = 123  # a newer sample
        period_passed_and_draw()
        period_passed_and_draw()
        assert drawn == [123]
