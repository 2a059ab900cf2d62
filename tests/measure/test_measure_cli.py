"""`greenmon measure -- CMD` as a person runs it, against a known power.

The child raises the fake RAPL tree's power by creating a marker file while it works, so
the energy put in is known: IDLE_W for the window's whole duration plus BUSY_W for the
time the marker existed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.measure.support import (
    BUSY_W,
    IDLE_W,
    MarkedPower,
    cli_env,
    greenmon_command,
    start_daemon,
    stop_daemon,
    wait_until,
    within,
    write_config,
)

# The child: mark itself busy for BUSY_S seconds, then exit with the status it is given.
CHILD = """
import sys, time
from pathlib import Path
marker = Path(sys.argv[1])
marker.touch()
time.sleep(float(sys.argv[2]))
marker.unlink()
sys.exit(int(sys.argv[3]))
"""
BUSY_S = 2.0


def _measure(
    tmp_path: Path, socket_path: Path, power: MarkedPower, *options: str, status: int = 0
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    config = write_config(tmp_path, power.tree.root)
    report = tmp_path / "report.json"
    child = [sys.executable, "-c", CHILD, str(power.marker), str(BUSY_S), str(status)]
    result = subprocess.run(
        greenmon_command(
            "measure",
            "--db",
            str(tmp_path / "m.duckdb"),
            "--config",
            str(config),
            "--json",
            "-o",
            str(report),
            *options,
            "--",
            *child,
        ),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(socket_path),
        timeout=300,
    )
    assert report.exists(), result.stderr
    return result, json.loads(report.read_text())


def _truth_j(runs: list[dict[str, Any]], busy_ns: int) -> float:
    return IDLE_W * sum(r["duration_s"] for r in runs) + BUSY_W * busy_ns / 1e9


def test_measure_in_process_with_a_baseline(
    tmp_path: Path, short_dir: Path, marked_power: MarkedPower
) -> None:
    result, report = _measure(tmp_path, short_dir / "d.sock", marked_power, "--baseline", "1.5")
    assert result.returncode == 0, result.stderr
    (run,) = report["runs"]
    stale_j = marked_power.stale_j()
    assert within(run["energy_j"]["cpu"], _truth_j([run], marked_power.busy_ns), stale_j=stale_j)
    assert within(
        run["dynamic_j"]["cpu"], BUSY_W * marked_power.busy_ns / 1e9, stale_j=2 * stale_j
    )
    assert within(report["baseline"]["mean_power_w"]["cpu"], IDLE_W, stale_j=stale_j / 1.5)
    assert run["duration_s"] >= BUSY_S and report["flags"] == []
    assert run["tags"]["command"][-1] == "0"


def test_measure_repeats_under_a_running_daemon_and_keeps_the_exit_status(
    tmp_path: Path, short_dir: Path, marked_power: MarkedPower
) -> None:
    socket_path = short_dir / "d.sock"
    config = write_config(tmp_path, marked_power.tree.root)
    daemon = start_daemon(tmp_path, socket_path, config, tmp_path / "m.duckdb")
    try:
        result, report = _measure(
            tmp_path, socket_path, marked_power, "--repeat", "3", "--cooldown", "0.2"
        )
        assert result.returncode == 0, result.stderr
        runs = report["runs"]
        assert [r["tags"]["repetition"] for r in runs] == [0, 1, 2]
        total_j = sum(r["energy_j"]["cpu"] for r in runs)
        assert within(
            total_j,
            _truth_j(runs, marked_power.busy_ns),
            stale_j=len(runs) * marked_power.stale_j(),
        )
        summary = report["summary"]["figures"]["energy_cpu_j"]
        assert summary["ci_low"] <= summary["median"] <= summary["ci_high"]
        assert report["summary"]["interval"] == "95% percentile bootstrap"

        failed, report = _measure(tmp_path, socket_path, marked_power, status=3)
        assert failed.returncode == 3
        assert report["exit_status"] == 3 and len(report["runs"]) == 1
    finally:
        stop_daemon(daemon)


def test_measure_forwards_sigterm_to_the_command(tmp_path: Path, short_dir: Path) -> None:
    ready = tmp_path / "ready"
    child = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    config = write_config(tmp_path, tmp_path / "no-powercap")
    report = tmp_path / "report.json"
    process = subprocess.Popen(
        greenmon_command(
            "measure",
            "--db",
            str(tmp_path / "m.duckdb"),
            "--config",
            str(config),
            "--json",
            "-o",
            str(report),
            "--",
            sys.executable,
            "-c",
            child,
        ),
        cwd=tmp_path,
        env=cli_env(short_dir / "d.sock"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(ready.exists, timeout_s=120)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 7, stderr
    data = json.loads(report.read_text())
    assert data["exit_status"] == 7 and len(data["runs"]) == 1
    # no energy source here (the powercap tree does not exist): said, not hidden
    assert "no_energy_source" in data["flags"]
