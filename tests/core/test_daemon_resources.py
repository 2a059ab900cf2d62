"""The daemon's DuckDB connection is bounded as its config says.

The daemon is started as a person starts it (``greenmon daemon`` in a subprocess), and
its connection's settings are read through its own API by ``greenmon sql``: a read-only
connection of our own would show DuckDB's defaults, not the daemon's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from greenmon.store import FLUSH_WINDOW, Event, FlushStats, SampleBatch, Store
from tests.fakes.rapl import standard_tree

REPO = Path(__file__).resolve().parents[2]
SETTINGS_SQL = (
    "SELECT current_setting('memory_limit') AS memory_limit, "
    "current_setting('threads') AS threads, current_setting('temp_directory') AS temp"
)


def test_store_open_applies_the_bounds_and_a_temp_directory_beside_the_file(
    tmp_path: Path,
) -> None:
    db = tmp_path / "bounded.duckdb"
    with Store.open(db, memory_limit="96MiB", threads=1) as store:
        _, rows = store.query(SETTINGS_SQL)
    assert rows == [("96.0 MiB", 1, str(tmp_path / "bounded.duckdb.tmp"))]
    with Store.open(db, read_only=True) as store:  # commands that read keep DuckDB's own
        _, rows = store.query(SETTINGS_SQL)
    assert rows[0][0] != "96.0 MiB"


def test_each_flush_of_samples_is_timed_and_the_window_stays_bounded(tmp_path: Path) -> None:
    with Store.open(tmp_path / "timed.duckdb") as store:
        batch = SampleBatch()
        for t_ns in range(100):
            batch.append_row(t_ns, [1, 2], [1.0, 2.0])
        store.write(batch, [], "s")
        store.write(SampleBatch(), [Event(5, "info", None, "events alone are no flush")], "s")
        writer = store.flush_stats.as_dict()
    assert (writer["flushes"], writer["rows"], writer["recent_rows_mean"]) == (1, 200, 200.0)
    assert writer["recent_ms_p50"] is not None and writer["recent_ms_p50"] > 0
    stats = FlushStats()
    for n in range(FLUSH_WINDOW * 3):
        stats.record(n, 1_000_000)
    assert stats.flushes == FLUSH_WINDOW * 3 and len(stats.recent_ns) == FLUSH_WINDOW
    assert stats.as_dict()["recent_ms_p99"] == 1.0


def test_the_daemon_connection_has_the_configured_memory_limit_and_threads(
    tmp_path: Path,
) -> None:
    standard_tree(tmp_path / "powercap")
    config = tmp_path / "greenmon.toml"
    config.write_text(
        '[daemon]\nduckdb_memory_limit = "96MiB"\nduckdb_threads = 1\n'
        f'[probes.rapl]\nrate_hz = 20\nsysfs_root = "{tmp_path / "powercap"}"\n'
        "[probes.host]\nenabled = false\n[probes.nvml]\nenabled = false\n"
        "[probes.estimate]\nenabled = false\n"
    )
    db = tmp_path / "daemon.duckdb"
    # A short socket path of this test's own, so it never meets another daemon.
    socket_dir = tempfile.mkdtemp(prefix="gm-")
    env = {**os.environ, "PYTHONPATH": str(REPO), "GREENMON_SOCKET": f"{socket_dir}/d.sock"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "greenmon.cli", "daemon", "--db", str(db), "--config",
         str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert daemon.stderr is not None
        line = daemon.stderr.readline()
        assert "greenmon daemon started" in line, line + daemon.stderr.read()
        result = subprocess.run(
            [sys.executable, "-m", "greenmon.cli", "sql", "--db", str(db), "--json",
             SETTINGS_SQL],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [
            {"memory_limit": "96.0 MiB", "threads": 1, "temp": str(db) + ".tmp"}
        ]
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
        assert daemon.returncode == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(socket_dir, ignore_errors=True)
