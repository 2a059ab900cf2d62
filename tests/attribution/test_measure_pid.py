"""`greenmon measure --pid` as a person runs it: a running process's attributed energy.

A fake RAPL package at a constant power, one process that keeps a core busy and a second
that keeps about half a core busy.  The test reads /proc itself (the machine's busy time
and the first process's CPU time, every few tens of milliseconds), so the figure it checks
against - power x each interval's length x the process's share of busy CPU time in it - is
computed apart from greenmon's.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenmon.attribution import machine_busy_ticks
from tests.fakes.rapl import PoweredRapl
from tests.measure.support import cli_env, greenmon_command, write_config

pytestmark = [pytest.mark.slow]
POWER_W = 30.0
SPIN = "while True: pass"
# About half a core: spin 10 ms, sleep 10 ms.
HALF = """
import time
while True:
    end = time.monotonic() + 0.01
    while time.monotonic() < end:
        pass
    time.sleep(0.01)
"""


def _ticks(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    fields = raw[raw.rfind(b")") + 2 :].split()
    return sum(int(f) for f in fields[11:15])


@pytest.fixture
def power(tmp_path: Path) -> Iterator[PoweredRapl]:
    source = PoweredRapl(tmp_path / "powercap", POWER_W).start()
    yield source
    source.stop()


@pytest.fixture
def loads() -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    busy = subprocess.Popen([sys.executable, "-c", SPIN])
    half = subprocess.Popen([sys.executable, "-c", HALF])
    yield busy, half
    for process in (busy, half):
        process.kill()
        process.wait()


def test_measure_pid_gives_power_times_duration_times_cpu_share(
    tmp_path: Path, power: PoweredRapl, loads: tuple[subprocess.Popen[bytes], ...]
) -> None:
    busy = loads[0]
    config = write_config(tmp_path, power.tree.root)
    readings: list[tuple[int, int, int]] = []
    stop = threading.Event()

    def read_proc() -> None:
        while not stop.wait(0.1):
            readings.append((time.monotonic_ns(), machine_busy_ticks(), _ticks(busy.pid)))

    reader = threading.Thread(target=read_proc, daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            greenmon_command(
                "measure",
                "--pid",
                str(busy.pid),
                "--duration",
                "4",
                "--json",
                "--db",
                str(tmp_path / "m.duckdb"),
                "--config",
                str(config),
            ),
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=cli_env(tmp_path / "none.sock"),
            timeout=300,
        )
    finally:
        stop.set()
        reader.join()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stderr)
    assert report["pid"] == busy.pid
    run = report["runs"][0]
    assert "attributed" in run["attribution"]["flags"]
    assert run["attribution"]["method"]["cpu"] == "busy CPU time share"

    inside = [r for r in readings if run["start_ns"] <= r[0] <= run["end_ns"]]
    assert len(inside) > 20
    # Each interval's energy (constant power) times the process's share of the machine's
    # busy ticks in it; a process's ticks that /proc/stat has not yet counted as busy are
    # carried to the next interval rather than lost.
    expected_j = 0.0
    carry = 0
    for (t0, b0, p0), (t1, b1, p1) in itertools.pairwise(inside):
        mine = p1 - p0 + carry
        used = min(mine, b1 - b0)
        carry = mine - used
        if b1 > b0:
            expected_j += POWER_W * (t1 - t0) / 1e9 * used / (b1 - b0)
    expected_j *= (run["end_ns"] - run["start_ns"]) / (inside[-1][0] - inside[0][0])
    share = (inside[-1][2] - inside[0][2]) / (inside[-1][1] - inside[0][1])
    # The busy process holds one core of the machine's busy time, the other about half.
    assert 0.0 < share < 0.9, share
    attributed = run["attributed_cpu_j"]
    assert abs(attributed - expected_j) <= 0.05 * expected_j, (attributed, expected_j, share)
    assert run["duration_s"] >= 3.9
    # The machine's energy is measured over the window; the process's is a part of it.
    assert attributed < run["energy_j"]["cpu"]
    assert run["energy_j"]["cpu"] == pytest.approx(POWER_W * run["duration_s"], rel=0.05)


def test_measure_pid_of_no_process_is_one_clear_paragraph(tmp_path: Path) -> None:
    done = subprocess.run(
        greenmon_command("measure", "--pid", "999999999", "--db", str(tmp_path / "m.duckdb")),
        capture_output=True, text=True, cwd=tmp_path, env=cli_env(tmp_path / "none.sock"),
        timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "No process 999999999 runs here" in done.stderr
    assert "Traceback" not in done.stderr


def test_measure_command_attributes_the_command_tree(tmp_path: Path, power: PoweredRapl) -> None:
    config = write_config(tmp_path, power.tree.root)
    done = subprocess.run(
        greenmon_command(
            "measure",
            "--json",
            "--db",
            str(tmp_path / "m.duckdb"),
            "--config",
            str(config),
            "--",
            sys.executable,
            "-c",
            "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass",
        ),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(tmp_path / "none.sock"),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stderr)["runs"][0]
    assert 0 < run["attributed_cpu_j"] <= run["energy_j"]["cpu"]
    # Its share of busy CPU time: how much depends on what else the machine runs.
    assert 0 < run["attribution"]["cpu_time_share"] <= 1
    assert os.path.basename(json.loads(done.stderr)["command"][0]).startswith("python")
