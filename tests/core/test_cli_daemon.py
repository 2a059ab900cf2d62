"""``greenmon daemon`` and ``greenmon sql`` as a user runs them, in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenmon.store import Store
from tests.fakes.rapl import standard_tree

REPO = Path(__file__).resolve().parents[2]


def greenmon_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "greenmon.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture
def running_daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    standard_tree(tmp_path / "powercap")
    config = tmp_path / "greenmon.toml"
    config.write_text(
        f'[probes.rapl]\nrate_hz = 200\nsysfs_root = "{tmp_path / "powercap"}"\n'
        "[probes.host]\nrate_hz = 20\n"
        # only the two probes this test counts: the others would add channels where
        # their hardware exists (a GPU, EnergiBridge) or always (the estimate)
        "[probes.nvml]\nenabled = false\n[probes.estimate]\nenabled = false\n"
    )
    db = tmp_path / "daemon.duckdb"
    process = subprocess.Popen(
        greenmon_cmd("daemon", "--db", str(db), "--config", str(config), "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=_env(),
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "greenmon daemon started" in line, line + process.stderr.read()
    yield process, db
    if process.poll() is None:
        process.kill()
        process.wait()


def test_sigterm_loses_no_queued_sample(running_daemon: tuple[subprocess.Popen[str], Path]) -> None:
    process, db = running_daemon
    time.sleep(1.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    summary = json.loads(stdout)
    read_by_probe = {
        p["probe"]: p["samples"] for p in summary["probes"] if p["state"] != "unavailable"
    }
    assert read_by_probe["rapl"] > 100 * 3  # 3 channels at 200 Hz for over a second
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            "SELECT c.probe, count(*) FROM samples s JOIN channels c USING (channel_id) GROUP BY 1"
        )
        _, events = store.query("SELECT message FROM events WHERE message LIKE 'received SIGTERM%'")
    assert dict(rows) == read_by_probe
    assert summary["samples_written"] == sum(read_by_probe.values())
    assert events


def test_sql_on_a_file_held_by_a_daemon_goes_through_its_api(
    running_daemon: tuple[subprocess.Popen[str], Path],
) -> None:
    _, db = running_daemon
    result = subprocess.run(
        greenmon_cmd("sql", "--db", str(db), "--json", "SELECT count(*) AS n FROM channels"),
        capture_output=True, text=True, env=_env(),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["n"] > 0
    assert "Traceback" not in result.stderr


def test_sql_reads_a_stopped_database(running_daemon: tuple[subprocess.Popen[str], Path]) -> None:
    process, db = running_daemon
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    result = subprocess.run(
        greenmon_cmd(
            "sql",
            "--db",
            str(db),
            "--json",
            "SELECT probe, count(*) AS n FROM channels GROUP BY probe ORDER BY probe",
        ),
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert result.returncode == 0, result.stderr
    # host: 10 system channels, greenmon's own tree, the background, the steal,
    # and greenmon's own CPU time (process and sampling thread: the observer's cost)
    assert json.loads(result.stdout) == [{"probe": "host", "n": 15}, {"probe": "rapl", "n": 3}]
    refused = subprocess.run(
        greenmon_cmd("sql", "--db", str(db), "DELETE FROM samples"),
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert refused.returncode == 2 and "read-only" in refused.stderr


def test_core_modules_import_no_heavy_library() -> None:
    code = (
        "import sys, greenmon.daemon, greenmon.store, greenmon.sampling, greenmon.energy, "
        "greenmon.config, greenmon.cli\n"
        "heavy = {'torch', 'transformers', 'onnxruntime', 'openvino', 'textual', 'optimum'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
