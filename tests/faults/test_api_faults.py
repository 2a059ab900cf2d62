"""The local API under abuse, against a ``greenmon daemon`` in its own process.

What must be kept: probes hold their rate and every sample is stored (the daemon's summary
equals the database) while a client stalls on /stream, while requests flood in, and after
SQL that tries to write; a stalled client does not delay shutdown; a socket path taken by
another user's file is refused with one paragraph and the file is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from greenmon.api import ApiClient, DaemonUnreachable, QueryFailed, QueryRefused
from greenmon.api.messages import DaemonStatus, Snapshot
from greenmon.store import Store
from tests.fakes.rapl import standard_tree
from tests.faults.support import (
    assert_one_paragraph_error,
    cli_env,
    greenmon_cmd,
    stalled_stream_client,
)

pytestmark = pytest.mark.slow

RAPL_HZ = 200.0


@dataclass
class RunningDaemon:
    process: subprocess.Popen[str]
    db: Path
    socket_path: Path

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> tuple[dict[str, Any], float]:
        """Signal it; its JSON summary and how long it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signum)
        stdout, stderr = self.process.communicate(timeout=30)
        took_s = time.monotonic() - started
        assert self.process.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr
        return json.loads(stdout), took_s

    def assert_kept(self, summary: dict[str, Any], *, rate: bool = True) -> None:
        """Every sample taken is stored, and RAPL held its rate (generous tolerance)."""
        with Store.open(self.db, read_only=True) as store:
            _, rows = store.query("SELECT count(*) FROM samples")
        assert rows[0][0] == summary["samples_written"]
        if rate:
            assert rapl_hz(summary) >= 0.7 * RAPL_HZ, summary["probes"]


def rapl_hz(summary: dict[str, Any]) -> float:
    return float(next(p for p in summary["probes"] if p["probe"] == "rapl")["achieved_hz"])


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gmf-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(tmp_path: Path, sock_dir: Path) -> Iterator[RunningDaemon]:
    standard_tree(tmp_path / "powercap")
    config = tmp_path / "greenmon.toml"
    config.write_text(
        f'[probes.rapl]\nrate_hz = {RAPL_HZ}\nsysfs_root = "{tmp_path / "powercap"}"\n'
        "[probes.host]\nrate_hz = 10\n"
        "[probes.nvml]\nenabled = false\n[probes.estimate]\nenabled = false\n"
    )
    db = tmp_path / "daemon.duckdb"
    socket_path = sock_dir / "daemon.sock"
    process = subprocess.Popen(
        greenmon_cmd("daemon", "--db", str(db), "--config", str(config), "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=cli_env(GREENMON_SOCKET=str(socket_path)),
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "greenmon daemon started" in line, line + process.stderr.read()
    try:
        yield RunningDaemon(process, db, socket_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_stream_client_that_never_reads_stalls_nothing(daemon: RunningDaemon) -> None:
    stalled = [stalled_stream_client(daemon.socket_path) for _ in range(3)]
    answered: list[DaemonStatus] = []
    snapshots: list[Snapshot] = []

    async def use_the_daemon() -> None:
        async with ApiClient(daemon.socket_path, timeout_s=5.0) as client:
            async for snapshot in client.stream():
                snapshots.append(snapshot)
                if len(snapshots) >= 6:  # about 1.5 s at 4 Hz
                    break
            for _ in range(10):
                # within the client's 5 s timeout, or ApiClient raises
                answered.append(await client.status())

    try:
        anyio.run(use_the_daemon)
        summary, _ = daemon.stop()  # within communicate's timeout: stalled clients kept none
    finally:
        for client in stalled:
            client.close()
    assert len({s.t_ns for s in snapshots}) == 6  # a healthy viewer got fresh snapshots
    # How fast status answers and the daemon stops beside stalled clients are figures in
    # bench/shutdown.py, not assertions here.
    assert len(answered) == 10
    daemon.assert_kept(summary)


def test_a_flood_of_requests_is_answered_and_the_probes_hold_their_rate(
    daemon: RunningDaemon,
) -> None:
    statuses: list[int] = []

    async def flood() -> None:
        connector = aiohttp.UnixConnector(path=str(daemon.socket_path), limit=64)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(i: int) -> None:
                kind = i % 5
                if kind == 0:
                    request = session.get("http://greenmon/status")
                elif kind == 1:
                    request = session.get("http://greenmon/events?limit=50")
                elif kind == 2:
                    request = session.post(
                        "http://greenmon/sql", json={"sql": "SELECT count(*) FROM samples"}
                    )
                elif kind == 3:
                    request = session.post("http://greenmon/sql", data=b"{not json")
                else:
                    request = session.get("http://greenmon/no-such-endpoint")
                async with request as response:
                    await response.read()
                    statuses.append(response.status)

            async with anyio.create_task_group() as group:
                for i in range(500):
                    group.start_soon(one, i)

        # Connections opened and dropped at once, and one request never finished.
        half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        half.connect(str(daemon.socket_path))
        half.sendall(b"GET /status HTTP/1.1\r\nHost: gre")
        for _ in range(200):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dropped:
                dropped.connect(str(daemon.socket_path))
        # The daemon still answers once it has worked through the dropped connections (on a
        # loaded machine the listen backlog can be full for a moment: retry, don't race).
        status: DaemonStatus | None = None
        for _ in range(100):
            try:
                async with ApiClient(daemon.socket_path, timeout_s=5.0) as client:
                    status = await client.status()
                break
            except DaemonUnreachable:
                await anyio.sleep(0.1)
        assert status is not None and status.pid == daemon.process.pid
        half.close()

    anyio.run(flood)
    assert len(statuses) == 500
    counts = {code: statuses.count(code) for code in set(statuses)}
    assert counts == {200: 300, 400: 100, 404: 100}, counts
    summary, _ = daemon.stop()
    daemon.assert_kept(summary, rate=False)
    # Sampler threads hand their batches over through a deque the writer drains, so a loop
    # busy with hundreds of requests does not hold them up (it did through the loop).
    assert rapl_hz(summary) >= 0.7 * RAPL_HZ, f"RAPL fell to {rapl_hz(summary):.0f} Hz"


WRITES = [
    "INSERT INTO samples VALUES (1, 1, 1.0)",
    "DELETE FROM samples",
    "UPDATE units SET status = 'done'",
    "DROP TABLE samples",
    "CREATE TABLE stolen AS SELECT * FROM samples",
    "ALTER TABLE samples ADD COLUMN x INTEGER",
    "COPY samples TO '{out}/copy.csv'",
    "COPY (SELECT 1) TO '{out}/select.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{out}/export'",
    "ATTACH '{out}/attached.duckdb' AS other",
    "INSTALL httpfs",
    "SET threads = 1",
    "PRAGMA enable_profiling",
    "CHECKPOINT",
    "BEGIN TRANSACTION",
    "SELECT 1; DELETE FROM samples",
    "SELECT nextval('channel_id_seq')",
    "EXPLAIN ANALYZE DELETE FROM samples",
]


def test_sql_that_tries_to_write_is_refused_and_changes_nothing(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    outcomes: dict[str, str] = {}

    async def attempt() -> None:
        async with ApiClient(daemon.socket_path, timeout_s=10.0) as client:
            for sql in WRITES:
                try:
                    await client.sql(sql.format(out=out))
                except (QueryRefused, QueryFailed) as error:
                    outcomes[sql] = type(error).__name__
                else:
                    outcomes[sql] = "ran"
            # the daemon still answers reads afterwards
            result = await client.sql("SELECT count(*) FROM channels")
            # host 15 (10 system; greenmon's own tree, the background and the hypervisor's
            # steal; greenmon's own CPU time, process and sampling thread) + rapl 3
            assert result.rows[0][0] == 18

    anyio.run(attempt)
    assert "ran" not in outcomes.values(), outcomes
    assert list(out.iterdir()) == []  # no file written by COPY, EXPORT or ATTACH
    summary, _ = daemon.stop()
    daemon.assert_kept(summary)  # DELETE deleted nothing
    with Store.open(daemon.db, read_only=True) as store:
        _, tables = store.query("SELECT table_name FROM duckdb_tables() ORDER BY 1")
        _, columns = store.query("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'samples'")
        _, units = store.query("SELECT count(*) FROM units")
    assert "stolen" not in {t for (t,) in tables} and "samples" in {t for (t,) in tables}
    assert columns == [(3,)]
    assert units == [(0,)]


def test_a_socket_path_taken_by_another_users_file_is_refused(
    tmp_path: Path, sock_dir: Path
) -> None:
    taken = sock_dir / "daemon.sock"
    taken.write_text("someone else's\n")
    os.chown(taken, 65534, 65534)  # nobody
    before = (taken.stat().st_uid, taken.stat().st_mode, taken.read_text())
    config = tmp_path / "greenmon.toml"
    config.write_text("[probes.nvml]\nenabled = false\n[probes.estimate]\nenabled = false\n")
    result = subprocess.run(
        greenmon_cmd(
            "daemon", "--db", str(tmp_path / "d.duckdb"), "--config", str(config),
            "--duration", "5",
        ),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(GREENMON_SOCKET=str(taken)),
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert_one_paragraph_error(result.stderr, "belongs to another user", "uid 65534")
    assert (taken.stat().st_uid, taken.stat().st_mode, taken.read_text()) == before
