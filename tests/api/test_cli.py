"""``greenmon status`` and ``greenmon sql`` with and without a daemon serving its API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from greenmon.api import ApiOptions
from greenmon.cli import main
from greenmon.config import parse_config
from greenmon.tui.embedded import BackgroundDaemon
from tests.api.fakes import short_socket_dir
from tests.fakes.probes import CountingProbe


def test_status_and_sql_go_through_the_daemon(
    background: tuple[BackgroundDaemon, Path], db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, path = background
    at = ["--socket", str(path), "--db", str(db_path)]
    assert main(["status", *at]) == 0
    out = capsys.readouterr().out
    assert f"session {daemon.daemon.session_id}" in out  # type: ignore[union-attr]
    assert "counting" in out and "runner: idle, waiting for a plan" in out
    # the file is held read-write by the daemon, yet sql answers through the API
    assert main(["sql", *at, "--json", "SELECT name FROM channels"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "counting.reads"}]
    assert main(["sql", *at, "DROP TABLE samples"]) == 2
    assert "Query refused" in capsys.readouterr().err


def test_a_socket_of_another_file_is_refused_not_reported(
    background: tuple[BackgroundDaemon, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _daemon, path = background
    other = tmp_path / "other.duckdb"
    assert main(["status", "--socket", str(path), "--db", str(other)]) == 2
    err = capsys.readouterr().err
    assert "holds" in err and str(other) in err


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
