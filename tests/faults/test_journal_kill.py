"""The sample journal across a SIGKILL: samples written to ``<db>.journal`` and not yet
loaded into DuckDB are loaded by the next open, each exactly once, and a closed window
keeps every sample it had (greenmon/store/journal.py; README, "What a crash can lose")."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import anyio
import duckdb
import pytest

from greenmon.api import ApiClient
from greenmon.api.messages import WindowResult
from greenmon.store import SampleBatch, Store, journal_path, read_frames
from greenmon.store.journal import to_arrow
from tests.fakes.rapl import standard_tree
from tests.faults.support import cli_env, greenmon_cmd, wait_for

pytestmark = pytest.mark.slow


def _raw_counts(db: Path, window: tuple[int, int]) -> tuple[int, int, int]:
    """Rows in samples, those inside the window, and the loaded journal sequence, read
    with DuckDB itself: ``Store.open`` would replay the journal first."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        ((total,),) = con.execute("SELECT count(*) FROM samples").fetchall()
        ((inside,),) = con.execute(
            "SELECT count(*) FROM samples WHERE t_ns BETWEEN ? AND ?", list(window)
        ).fetchall()
        rows = con.execute("SELECT loaded_seq FROM journal_loads").fetchall()
    finally:
        con.close()
    return int(total), int(inside), int(rows[0][0]) if rows else 0


def test_sigkill_between_a_journal_write_and_its_load_loses_nothing_written(
    tmp_path: Path,
) -> None:
    standard_tree(tmp_path / "powercap")
    config = tmp_path / "greenmon.toml"
    # No periodic load during the test: only the window's close loads the journal, so the
    # kill lands with frames written and not loaded.
    config.write_text(
        "[daemon]\nflush_interval_s = 0.5\njournal_load_interval_s = 3600\n"
        f'[probes.rapl]\nrate_hz = 100\nsysfs_root = "{tmp_path / "powercap"}"\n'
        "[probes.host]\nenabled = false\n[probes.nvml]\nenabled = false\n"
        "[probes.estimate]\nenabled = false\n[probes.energibridge]\nenabled = false\n"
    )
    db = tmp_path / "daemon.duckdb"
    journal = journal_path(db)
    socket_dir = Path(tempfile.mkdtemp(dir="/tmp"))
    socket_path = socket_dir / "d.sock"
    process = subprocess.Popen(
        greenmon_cmd("daemon", "--db", str(db), "--config", str(config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=cli_env(GREENMON_SOCKET=str(socket_path)),
    )
    closed: list[WindowResult] = []

    async def window() -> None:
        async with ApiClient(socket_path) as client:
            await anyio.sleep(0.5)
            opened = await client.open_window("before-the-kill")
            await anyio.sleep(1.0)
            closed.append(await client.close_window(opened.window_id))

    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "greenmon daemon started" in line, line + process.stderr.read()
        anyio.run(window)
        # frames written after the close's load, not loaded: what the kill must not lose
        wait_for(lambda: len(list(read_frames(journal))) >= 3, timeout_s=30)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert process.returncode == -signal.SIGKILL

    frames = list(read_frames(journal))
    edges = (closed[0].start_ns, closed[0].end_ns)
    total_before, window_before, loaded_seq = _raw_counts(db, edges)
    unloaded = [f for f in frames if f.seq > loaded_seq]
    assert len(unloaded) >= 3
    journal_rows = to_arrow(unloaded)
    assert window_before > 0  # the close loaded the window's samples before answering

    with Store.open(db, read_only=True) as store:  # any open replays the journal
        _, ((total,),) = store.query("SELECT count(*) FROM samples")
        store.con.register("journal_rows", journal_rows)  # on the connection, not a cursor
        ((found,),) = store.con.execute(
            "SELECT count(*) FROM journal_rows JOIN samples USING (channel_id, t_ns, value)"
        ).fetchall()
        _, duplicated = store.query(
            "SELECT channel_id, t_ns FROM samples GROUP BY ALL HAVING count(*) > 1"
        )
        _, ((inside,),) = store.query(
            "SELECT count(*) FROM samples WHERE t_ns BETWEEN ? AND ?", list(edges)
        )
        columns, rows = store.query("SELECT * FROM window_results")
    assert not journal.exists()
    assert total == total_before + journal_rows.num_rows  # every journal row, once
    assert found == journal_rows.num_rows
    assert duplicated == []
    assert inside == window_before  # the closed window lost and gained nothing
    stored = dict(zip(columns, rows[0], strict=True))
    assert stored["window_id"] == closed[0].window_id

    with Store.open(db) as store:  # a second open loads nothing again
        _, ((again,),) = store.query("SELECT count(*) FROM samples")
    assert again == total


def _batch(start_ns: int, rows: int) -> SampleBatch:
    batch = SampleBatch()
    for i in range(rows):
        batch.append_row(start_ns + i, [1], [float(i)])
    return batch


def test_a_kill_after_the_load_before_the_truncation_loads_nothing_twice(
    tmp_path: Path,
) -> None:
    db = tmp_path / "j.duckdb"
    store = Store.open(db)
    journal = store.attach_journal(sync=False)
    store.append_samples(_batch(0, 10), [], "s")
    store.append_samples(_batch(100, 5), [], "s")
    written = journal.path.read_bytes()
    assert store.load_journal() == 15
    assert journal.path.stat().st_size == 0
    # The kill landed between the load's commit and the truncation: the frames are back,
    # and one more, written after, was never loaded; a torn frame ends the file.
    store.append_samples(_batch(200, 3), [], "s")
    tail = journal.path.read_bytes()
    journal.path.write_bytes(written + tail + tail[:20])
    journal.close()
    store.close()

    with Store.open(db) as store:
        _, rows = store.query("SELECT t_ns FROM samples ORDER BY t_ns")
    assert [r[0] for r in rows] == [*range(10), *range(100, 105), *range(200, 203)]
    assert not journal.path.exists()


def test_a_clean_stop_loads_everything_and_removes_the_journal(tmp_path: Path) -> None:
    with Store.open(tmp_path / "c.duckdb") as store:
        journal = store.attach_journal(sync=False)
        store.append_samples(_batch(0, 7), [], "s")
        assert journal.path.stat().st_size > 0
        store.detach_journal()
        assert not journal.path.exists()
        _, ((count,),) = store.query("SELECT count(*) FROM samples")
    assert count == 7


def test_a_read_sees_samples_not_yet_loaded(tmp_path: Path) -> None:
    with Store.open(tmp_path / "r.duckdb") as store:
        journal = store.attach_journal(sync=False)
        store.append_samples(_batch(0, 4), [], "s")
        assert journal.pending_rows == 4
        _, ((count,),) = store.query("SELECT count(*) FROM samples")
        assert count == 4 and journal.pending_rows == 0
        store.detach_journal()


def test_journal_load_interval_must_not_be_negative(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[daemon]\njournal_load_interval_s = -1\n")
    result = subprocess.run(
        greenmon_cmd("daemon", "--db", str(tmp_path / "x.duckdb"), "--config", str(config)),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(),
        timeout=120,
    )
    assert result.returncode != 0
    assert "journal_load_interval_s" in result.stderr and "Traceback" not in result.stderr
