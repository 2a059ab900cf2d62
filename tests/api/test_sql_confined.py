"""SQL stays inside the database: through the API and `greenmon sql` on a file no daemon
holds, no query reads, lists or writes a file outside it (greenmon.store.confine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import duckdb
import pytest

from greenmon.api import ApiClient, QueryFailed, QueryRefused
from greenmon.cli import main
from greenmon.store import Store, is_confined
from greenmon.tui.embedded import BackgroundDaemon
from tests.api.fakes import short_socket_dir


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """Files outside the database that no query may reach."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the-secret-line\n")
    (outside / "secret.csv").write_text("a,b\nthe-secret-line,1\n")
    duckdb.connect().execute(
        f"COPY (SELECT 'the-secret-line' AS a) TO '{outside}/secret.parquet' (FORMAT parquet)"
    )
    (outside / "other.duckdb").touch()
    return outside


def escapes(outside: Path) -> list[str]:
    """One query per way DuckDB can reach a file or change the rules."""
    return [
        f"SELECT * FROM read_text('{outside}/secret.txt')",
        "SELECT * FROM read_text('/etc/hostname')",
        f"SELECT * FROM read_csv('{outside}/secret.csv')",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM '{outside}/secret.csv'",
        f"SELECT * FROM read_parquet('{outside}/secret.parquet')",
        f"SELECT * FROM glob('{outside}/*')",
        "SELECT * FROM glob('/root/*')",
        f"COPY samples TO '{outside}/copied.csv'",
        f"SELECT 1 FROM (SELECT 1) t, read_blob('{outside}/secret.txt')",
        f"ATTACH '{outside}/other.duckdb' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET threads = 1",
    ]


def test_the_api_refuses_every_file_and_setting_escape(
    background: tuple[BackgroundDaemon, Path], secret: Path
) -> None:
    _, path = background
    outcomes: dict[str, str] = {}

    async def attempt() -> None:
        async with ApiClient(path, timeout_s=10.0) as client:
            for sql in escapes(secret):
                try:
                    result = await client.sql(sql)
                except QueryRefused as error:
                    outcomes[sql] = str(error)
                except QueryFailed as error:
                    outcomes[sql] = f"failed: {error}"
                else:
                    outcomes[sql] = f"ran: {result.rows}"
            # reads of the database itself still work, including table functions on it
            count = await client.sql("SELECT count(*) FROM range(10)")
            assert count.rows == [[10]]
            names = await client.sql("SELECT name FROM channels")
            assert names.rows == [["counting.reads"]]

    anyio.run(attempt)
    for sql, outcome in outcomes.items():
        assert not outcome.startswith(("ran", "failed")), (sql, outcome)
        assert "the-secret-line" not in outcome and "root:" not in outcome
    # table functions get DuckDB's own refusal, with greenmon's explanation around it
    read = outcomes[f"SELECT * FROM read_text('{secret}/secret.txt')"]
    assert "Reading, listing or writing files is refused" in read
    assert "file system operations are disabled" in read
    assert "greenmon export" in read
    assert sorted(p.name for p in secret.iterdir()) == [
        "other.duckdb", "secret.csv", "secret.parquet", "secret.txt"
    ]  # fmt: skip


def test_greenmon_sql_through_a_daemon_refuses_with_one_paragraph(
    background: tuple[BackgroundDaemon, Path],
    secret: Path,
    db_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, path = background
    for sql in escapes(secret):
        assert main(["sql", "--socket", str(path), "--db", str(db_path), sql]) == 2, sql
        captured = capsys.readouterr()
        assert captured.out == "", sql
        assert captured.err.startswith("greenmon: Query refused: "), (sql, captured.err)
        assert "Traceback" not in captured.err


def _no_daemon_env(sock_dir: Path) -> dict[str, str]:
    return {**os.environ, "GREENMON_SOCKET": str(sock_dir / "none.sock")}


def test_greenmon_sql_on_a_file_no_daemon_holds_is_confined_unless_asked(
    db_path: Path, secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Store.open(db_path).close()
    with short_socket_dir() as directory:
        os.environ["GREENMON_SOCKET"] = str(directory / "none.sock")
        try:
            for sql in escapes(secret):
                assert main(["sql", "--db", str(db_path), sql]) == 2, sql
                captured = capsys.readouterr()
                assert captured.err.startswith("greenmon: Query refused: "), (sql, captured.err)
                assert "--allow-file-access" in captured.err
                assert "the-secret-line" not in captured.out + captured.err
            assert not (secret / "copied.csv").exists()
            # asked explicitly, the same query reads the file
            query = f"SELECT content FROM read_text('{secret}/secret.txt')"
            assert main(["sql", "--db", str(db_path), "--allow-file-access", "--json",
                         query]) == 0  # fmt: skip
            rows = json.loads(capsys.readouterr().out)
            assert rows[0]["content"] == "the-secret-line\n"
        finally:
            del os.environ["GREENMON_SOCKET"]


def test_as_a_separate_process_the_refusal_has_no_traceback(
    db_path: Path, secret: Path
) -> None:
    Store.open(db_path).close()
    with short_socket_dir() as directory:
        done = subprocess.run(
            [sys.executable, "-m", "greenmon.cli", "sql", "--db", str(db_path),
             "SELECT * FROM read_csv('/etc/passwd')"],
            capture_output=True, text=True, env=_no_daemon_env(directory), timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "root:" not in done.stdout
    assert "Query refused" in done.stderr and "/etc/passwd" in done.stderr


def test_a_confined_store_still_writes_checkpoints_and_exports_elsewhere(
    db_path: Path, tmp_path: Path
) -> None:
    from greenmon.store import SampleBatch

    with Store.open(db_path) as store:
        store.confine()
        store.confine()  # idempotent
        assert is_confined(store.con)
        batch = SampleBatch()
        for i in range(1000):
            batch.append_row(i, [1], [float(i)])
        store.write(batch, [], "s")
        store.execute("CHECKPOINT")
        _, rows = store.query("SELECT count(*) FROM samples")
        assert rows == [(1000,)]
    # a fresh, unconfined opening (greenmon export) may write files again
    with Store.open(db_path, read_only=True) as store:
        assert not is_confined(store.con)
        store.con.execute(f"COPY (SELECT 1) TO '{tmp_path}/ok.csv'")
    assert (tmp_path / "ok.csv").exists()
