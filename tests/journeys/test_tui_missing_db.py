"""`greenmon tui --db PATH` on a file that does not exist: a clear paragraph, nothing
created (a mistyped path once became a new database, directories included)."""

from __future__ import annotations

from pathlib import Path

from tests.journeys.test_journeys import greenmon


def test_tui_on_a_missing_database_says_so_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir" / "x.duckdb"
    done = greenmon("tui", "--db", str(missing), cwd=tmp_path, check=False)
    assert done.returncode != 0
    assert f"{missing} does not exist" in done.stderr and "--new" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "nonexistent").exists()
