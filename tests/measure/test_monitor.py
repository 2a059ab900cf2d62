"""The Python API through the public import, in-process and attached, against a known power;
and README's example, run as it is written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenmon.monitor import Monitor, Window
from greenmon.store import Store
from tests.measure.support import (
    BUSY_W,
    IDLE_W,
    REPO,
    MarkedPower,
    cli_env,
    start_daemon,
    stop_daemon,
    within,
    write_config,
)

WINDOW_S = 2.0


def _busy_window(m: Monitor, power: MarkedPower) -> tuple[Window, float]:
    """A window during which the power is raised by BUSY_W; (window, seconds busy)."""
    busy_before = power.busy_ns
    with m.window("prefill", batch=8) as w:
        power.marker.touch()
        time.sleep(WINDOW_S)
        power.marker.unlink()
    return w, (power.busy_ns - busy_before) / 1e9


def test_monitor_in_process_measures_the_power_put_in(
    tmp_path: Path, short_dir: Path, marked_power: MarkedPower, monkeypatch: pytest.MonkeyPatch
) -> None:
    from greenmon import Monitor as PublicMonitor

    assert PublicMonitor is Monitor  # the public, lazy import
    monkeypatch.setenv("GREENMON_SOCKET", str(short_dir / "d.sock"))
    db = tmp_path / "monitor.duckdb"
    with Monitor(db=db, config=write_config(tmp_path, marked_power.tree.root)) as m:
        assert not m.attached
        time.sleep(0.3)
        baseline = m.take_baseline(WINDOW_S)
        w, busy_s = _busy_window(m, marked_power)
        m.begin_window("decode", step=1)
        time.sleep(0.5)
        decode = m.end_window("decode")
        listing = m.windows()
    stale_j = marked_power.stale_j()
    assert within(baseline.mean_power_w["cpu"], IDLE_W, stale_j=stale_j / baseline.duration_s)
    assert within(w.energy_j["cpu"], IDLE_W * w.duration_s + BUSY_W * busy_s, stale_j=stale_j)
    assert within(w.dynamic_j["cpu"], BUSY_W * busy_s, stale_j=2 * stale_j)
    assert w.flags == []
    assert decode.tags == {"step": 1} and decode.baseline_window_id == baseline.window_id
    assert [r.name for r in listing.recent] == ["decode", "prefill", "baseline"]
    # the same figures in DuckDB afterwards
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            "SELECT energy_cpu_j, tags FROM window_results WHERE name = 'prefill'"
        )
    assert rows[0][0] == pytest.approx(w.energy_j["cpu"], rel=1e-9)
    assert json.loads(rows[0][1]) == {"batch": 8}


def test_monitor_attaches_to_a_running_daemon(
    tmp_path: Path, short_dir: Path, marked_power: MarkedPower, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket_path = short_dir / "d.sock"
    monkeypatch.setenv("GREENMON_SOCKET", str(socket_path))
    db = tmp_path / "attached.duckdb"
    daemon = start_daemon(tmp_path, socket_path, write_config(tmp_path, marked_power.tree.root), db)
    try:
        with Monitor(db=db) as m:
            assert m.attached
            w, busy_s = _busy_window(m, marked_power)
        with pytest.raises(Exception, match="holds"):
            Monitor(db=tmp_path / "other.duckdb").start()
    finally:
        stop_daemon(daemon)
    assert within(
        w.energy_j["cpu"], IDLE_W * w.duration_s + BUSY_W * busy_s, stale_j=marked_power.stale_j()
    )


def _readme_python_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("### From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's '### From Python' section has no python block"
    return match.group(1)


def test_readme_python_example_runs(tmp_path: Path, short_dir: Path) -> None:
    code = _readme_python_example()
    assert len(code.strip().splitlines()) <= 12
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=cli_env(short_dir / "d.sock"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "flags" in result.stdout
    with Store.open(tmp_path / "windows.duckdb", read_only=True) as store:
        _, rows = store.query("SELECT name, kind FROM window_results ORDER BY window_id")
    assert rows == [("baseline", "baseline"), ("prefill", "window"), ("decode", "window")]


def test_greenmon_import_stays_light() -> None:
    code = "import sys, greenmon; print('aiohttp' in sys.modules, 'duckdb' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(Path("/x"))
    )
    assert result.stdout.split() == ["False", "False"], result.stderr
