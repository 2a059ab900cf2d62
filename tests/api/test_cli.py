"""``greenmon status`` and ``greenmon sql`` with and without a daemon serving its API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from greenmon.api import ApiOptions, submit_plan
from greenmon.cli import main
from greenmon.config import parse_config
from greenmon.tui.embedded import BackgroundDaemon
from tests.api.fakes import FakeRunner, short_socket_dir
from tests.fakes.probes import CountingProbe


def test_status_and_sql_go_through_the_daemon(
    background: tuple[BackgroundDaemon, Path], db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, path = background
    assert main(["status", "--socket", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"session {daemon.daemon.session_id}" in out  # type: ignore[union-attr]
    assert "counting" in out and "runner: none" in out
    # the file is held read-write by the daemon, yet sql answers through the API
    assert main(["sql", "--socket", str(path), "--json", "SELECT name FROM channels"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "counting.reads"}]
    assert main(["sql", "--socket", str(path), "DROP TABLE samples"]) == 2
    assert "Query refused" in capsys.readouterr().err


def test_submit_plan_reaches_the_runner(
    background: tuple[BackgroundDaemon, Path], tmp_path: Path
) -> None:
    daemon, path = background
    runner = FakeRunner()
    daemon.daemon.runner = runner  # type: ignore[union-attr]
    plan = tmp_path / "plan.toml"
    plan.write_text("name = 'p'\n")
    assert submit_plan(plan, True, socket_path=path) == "exp-0001"
    assert runner.submitted == [("name = 'p'\n", str(plan.resolve()), True)]


def test_status_without_daemon_reads_the_file(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with short_socket_dir() as directory:
        path = directory / "d.sock"
        daemon = BackgroundDaemon(
            db_path, parse_config(""), ApiOptions(socket_path=path),
            probes={"counting": CountingProbe()},
        )  # fmt: skip
        daemon.start()
        daemon.stop()
        assert main(["status", "--socket", str(path), "--db", str(db_path)]) == 0
        out = capsys.readouterr().out
        assert "no daemon runs" in out and "last session" in out
        assert "no experiment recorded yet" in out
        assert main(["status", "--socket", str(path), "--db", str(db_path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["daemon"] is None and report["session"]["channels"] == 1
