"""The daemon's local API: socket permissions, read-only SQL, plan control, a lossy stream."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from greenmon.api import (
    ApiClient,
    ApiError,
    ApiOptions,
    DaemonUnreachable,
    QueryRefused,
    check_read_only,
    find_daemon,
    prepare_socket_path,
    socket_path_for,
)
from greenmon.api.messages import ControlReply, DaemonStatus, Progress
from greenmon.errors import PlanError
from greenmon.probes.base import Channel
from tests.api.fakes import FakePowerProbe, fake_plan, running_daemon, short_socket_dir
from tests.fakes.probes import CountingProbe

pytestmark = pytest.mark.anyio


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_socket_dir() as path:
        yield path


async def test_socket_is_owner_only_and_removed_on_stop(db_path: Path, sock_dir: Path) -> None:
    path = sock_dir / "run" / "d.sock"
    async with running_daemon(db_path, path, {"counting": CountingProbe()}):
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        with pytest.raises(ApiError, match="already serves"):
            prepare_socket_path(path)
    assert not path.exists()


async def test_a_stale_socket_of_ours_is_replaced(db_path: Path, sock_dir: Path) -> None:
    path = sock_dir / "d.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, no one listens
    async with (
        running_daemon(db_path, path, {"counting": CountingProbe()}),
        ApiClient(path) as client,
    ):
        status = await client.status()
    assert status.probes[0].probe == "counting"


def test_a_path_that_is_not_a_socket_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "d.sock"
    path.write_text("not a socket")
    with pytest.raises(ApiError, match="not a socket"):
        prepare_socket_path(path)


async def test_status_reports_session_probes_channels_and_progress(
    db_path: Path, sock_dir: Path
) -> None:
    path = sock_dir / "d.sock"
    async with (
        running_daemon(db_path, path, {"fakepower": FakePowerProbe()}) as daemon,
        ApiClient(path) as client,
    ):
        status = await client.status()
        assert status.session_id == daemon.session_id
        assert status.db_path == str(db_path.resolve())
        names = {c.name: c for c in status.channels}
        assert names["gpu0.power_w"].estimated is True
        assert names["package-0.energy_uj"].metadata["counter_range"] == 2**32
        # every daemon has a runner; it idles until a plan arrives
        assert status.progress is not None and status.progress.status == "idle"
        assert status.progress.experiment_id is None and status.progress.queue == []
        # events reach the store with the writer's next flush
        with anyio.fail_after(5):
            while not any("sampling 5 channels" in e.message for e in await client.events(5)):
                await anyio.sleep(0.1)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO events VALUES ('x', 1, 'info', NULL, 'forged')",
        "UPDATE events SET message = 'x'",
        "DELETE FROM samples",
        "DROP TABLE samples",
        "CREATE TABLE t (a INTEGER)",
        "ATTACH '/tmp/other.duckdb' AS other",
        "COPY samples TO '/tmp/samples.csv'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET threads = 1",
        "EXPORT DATABASE '/tmp/out'",
        "PRAGMA enable_profiling",
        "EXPLAIN ANALYZE DELETE FROM samples",
        "SELECT 1; DROP TABLE samples",
    ],
)
def test_writes_are_refused_before_they_run(sql: str) -> None:
    with pytest.raises(QueryRefused):
        check_read_only(sql)


@pytest.mark.parametrize(
    "sql", ["SELECT 1", "FROM samples", "DESCRIBE samples", "EXPLAIN SELECT 1", "SHOW TABLES"]
)
def test_reads_are_allowed(sql: str) -> None:
    assert check_read_only(sql)


async def test_sql_reads_rows_refuses_writes_and_limits_rows(db_path: Path, sock_dir: Path) -> None:
    path = sock_dir / "d.sock"
    async with (
        running_daemon(db_path, path, {"counting": CountingProbe()}),
        ApiClient(path) as client,
    ):
        result = await client.sql("SELECT name, unit FROM channels ORDER BY channel_id")
        assert result.columns == ["name", "unit"]
        assert result.rows == [["counting.reads", "1"]]
        for sql in (
            "INSERT INTO events VALUES ('x', 1, 'info', NULL, 'x')",
            "DROP TABLE samples",
            "ATTACH '/tmp/x.duckdb'",
            "COPY samples TO '/tmp/x.csv'",
            "INSTALL httpfs",
        ):
            with pytest.raises(QueryRefused, match="read-only"):
                await client.sql(sql)
        # a side effect hidden in a SELECT still cannot write: READ ONLY transaction
        with pytest.raises(ApiError, match="read-only mode"):
            await client.sql("SELECT nextval('channel_id_seq')")
        limited = await client.sql("SELECT * FROM range(100)", limit=10)
        assert len(limited.rows) == 10 and limited.truncated
        count = await client.sql("SELECT count(*) FROM channels")
        assert count.rows == [[1]]


async def until_progress(client: ApiClient, key: str, value: Any) -> Progress:
    with anyio.fail_after(60):
        while True:
            progress = (await client.status()).progress
            if progress is not None and getattr(progress, key) == value:
                return progress
            await anyio.sleep(0.05)


def progress_of(reply: ControlReply | DaemonStatus) -> Progress:
    assert reply.progress is not None
    return reply.progress


async def test_plans_queue_and_pause_resume_cancel_reach_the_runner(
    db_path: Path, sock_dir: Path
) -> None:
    path = sock_dir / "d.sock"
    async with (
        running_daemon(db_path, path, {"counting": CountingProbe()}),
        ApiClient(path) as client,
    ):
        first = await client.submit(fake_plan("first", repetitions=20, cooldown_s=0.3), None)
        assert first.resumed is False and first.units_total == 40
        with pytest.raises(PlanError, match=r"no 'configurations' key"):
            await client.submit("name = 'bad'\nmodels = []\n", None)
        with pytest.raises(PlanError, match="already running"):
            await client.submit(fake_plan("first", repetitions=20, cooldown_s=0.3), None)
        second = await client.submit(fake_plan("second"), "/plans/second.toml")
        assert second.queued_behind == [first.experiment_id]
        await until_progress(client, "status", "running")
        queue = progress_of(await client.status()).queue
        assert [q.experiment_id for q in queue] == [second.experiment_id]

        assert progress_of(await client.pause()).status == "paused"
        assert progress_of(await client.resume()).status == "running"
        # A queued plan is cancelled without touching the running one.
        await client.cancel(second.experiment_id)
        progress = progress_of(await client.status())
        assert progress.queue == [] and progress.experiment_id == first.experiment_id
        await client.cancel()
        finished = await until_progress(client, "status", "cancelled")
        outcomes = {f.experiment_id: f.outcome for f in finished.finished}
        assert outcomes == {
            second.experiment_id: "cancelled",
            first.experiment_id: "cancelled",
        }
        rows = (await client.sql("SELECT name, status FROM experiments ORDER BY name")).rows
        assert rows == [["first", "cancelled"], ["second", "cancelled"]]
        listed = {e.plan_name: e for e in await client.experiments()}
        assert listed["first"].units_total == 40


async def test_stream_sends_newer_values(db_path: Path, sock_dir: Path) -> None:
    path = sock_dir / "d.sock"
    async with (
        running_daemon(db_path, path, {"counting": CountingProbe()}),
        ApiClient(path) as client,
    ):
        seen: list[float] = []
        async for snap in client.stream():
            seen += [value for _, _, value in snap.values]
            if len(seen) >= 3:
                break
    assert seen[-1] > seen[0]


class BulkyProbe:
    """Many channels read once a second, so that every stream snapshot is large (~8 KB)."""

    name = "bulky"
    default_rate_hz = 1.0

    def open(self) -> list[Channel]:
        return [Channel(f"sensor{i:04d}.value_w", "W", "gauge") for i in range(250)]

    def read(self) -> list[float]:
        return [1.0] * 250

    def close(self) -> None:
        pass


async def _achieved_hz(daemon_probe: CountingProbe, seconds: float) -> float:
    start = daemon_probe.reads
    await anyio.sleep(seconds)
    return (daemon_probe.reads - start) / seconds


async def test_a_stalled_stream_client_does_not_slow_the_probes(
    db_path: Path, sock_dir: Path
) -> None:
    path = sock_dir / "d.sock"
    probe = CountingProbe()
    # Big snapshots at 50 Hz (~400 KB/s) fill the stalled client's socket buffers at once.
    options = ApiOptions(socket_path=path, stream_hz=50.0)
    async with running_daemon(
        db_path, path, {"counting": probe, "bulky": BulkyProbe()}, options=options
    ) as daemon:
        await anyio.sleep(0.3)
        baseline_hz = await _achieved_hz(probe, 1.0)
        # A client that asks for the stream and never reads: its socket buffers fill.
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(str(path))
        stalled.sendall(b"GET /stream HTTP/1.1\r\nHost: greenmon\r\n\r\n")
        try:
            with_stalled_hz = await _achieved_hz(probe, 1.0)
            # Another client still receives fresh snapshots meanwhile.
            async with ApiClient(path) as client:
                firsts: list[float] = []
                counting_id = min(daemon.channels)
                async for snap in client.stream():
                    firsts.append(next(v for c, _, v in snap.values if c == counting_id))
                    if firsts[-1] > firsts[0]:
                        break
        finally:
            stalled.close()
        health = next(h for h in daemon.health() if h.probe == "counting")
    target_hz = CountingProbe.default_rate_hz
    assert baseline_hz > 0.9 * target_hz
    assert with_stalled_hz > 0.9 * target_hz
    assert abs(with_stalled_hz - baseline_hz) < 0.1 * target_hz
    assert health.achieved_hz > 0.9 * target_hz


async def test_client_without_daemon_raises_unreachable(sock_dir: Path) -> None:
    async with ApiClient(sock_dir / "none.sock") as client:
        with pytest.raises(DaemonUnreachable):
            await client.status()


def test_find_daemon_without_daemon(sock_dir: Path, tmp_path: Path) -> None:
    assert find_daemon(tmp_path / "a.duckdb", sock_dir / "none.sock") is None
    assert find_daemon(tmp_path / "a.duckdb") is None


def test_each_database_file_has_its_own_socket(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("GREENMON_SOCKET", raising=False)
    first, second = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    assert socket_path_for(first) != socket_path_for(second)
    monkeypatch.chdir(tmp_path)
    assert socket_path_for("a.duckdb") == socket_path_for(first)
    assert len(str(socket_path_for(tmp_path / ("x" * 200) / "c.duckdb"))) < 100


async def test_a_daemon_holding_another_file_is_never_the_answer(
    db_path: Path, sock_dir: Path, tmp_path: Path
) -> None:
    path = sock_dir / "d.sock"
    async with running_daemon(db_path, path, {"counting": CountingProbe()}):
        with pytest.raises(ApiError, match="holds"):
            await anyio.to_thread.run_sync(find_daemon, tmp_path / "other.duckdb", path)
        client = await anyio.to_thread.run_sync(find_daemon, db_path, path)
        assert client is not None


def test_socket_owned_by_another_user_is_refused(sock_dir: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to create a file owned by another user")
    path = sock_dir / "d.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.close()
    os.chown(path, 65534, 65534)
    with pytest.raises(ApiError, match="another user"):
        prepare_socket_path(path)
