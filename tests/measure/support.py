"""Known truth for windows: a fake powercap tree driven at a known power, and the
`greenmon` command as a person runs it (the installed console script, in a subprocess)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.fakes.engine import PoweredRapl

REPO = Path(__file__).resolve().parents[2]
IDLE_W = 5.0
BUSY_W = 20.0


def greenmon_command(*args: str) -> list[str]:
    """The installed ``greenmon`` script beside this Python (the venv's console script)."""
    script = Path(sys.executable).parent / "greenmon"
    found = str(script) if script.exists() else shutil.which("greenmon")
    assert found, "the greenmon console script is not installed in this environment"
    return [found, *args]


def cli_env(socket_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "GREENMON_SOCKET": str(socket_path), **extra}


class MarkedPower(PoweredRapl):
    """IDLE_W always, plus BUSY_W while ``marker`` exists (so a child process can raise the
    power a test integrates); ``busy_ns`` counts the time the extra power was on, exactly as
    the counter was advanced."""

    def __init__(self, root: Path, marker: Path, *, idle_w: float = IDLE_W) -> None:
        super().__init__(root, idle_w, marker=marker, marker_w=BUSY_W)
        self.marker: Path = marker


def write_config(directory: Path, powercap: Path, extra: str = "") -> Path:
    config = directory / "greenmon.toml"
    config.write_text(
        f"{extra}\n"
        # 100 Hz: a gap counts as uncovered past four periods (40 ms), which a loaded 2-core
        # machine can reach at 200 Hz; a counter's energy does not depend on the rate
        f'[probes.rapl]\nrate_hz = 100\nsysfs_root = "{powercap}"\n'
        "[probes.host]\nrate_hz = 20\n"
        # only the fake RAPL answers for cpu: the estimate, a GPU or EnergiBridge would
        # add channels where they exist
        "[probes.nvml]\nenabled = false\n[probes.estimate]\nenabled = false\n"
        "[probes.energibridge]\nenabled = false\n"
    )
    return config


def start_daemon(
    tmp_path: Path, socket_path: Path, config: Path, db: Path
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        greenmon_command("daemon", "--db", str(db), "--config", str(config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=cli_env(socket_path),
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "greenmon daemon started" in line, line + process.stderr.read()
    return process


def stop_daemon(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.terminate()
    try:
        stdout, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, _ = process.communicate()
    return stdout


def within(measured: float, truth: float, rel: float = 0.01, stale_j: float = 0.0) -> bool:
    """Within ``rel`` of the truth, plus ``stale_j``: the most the fake counter's own lateness
    can put an edge off (``PoweredRapl.stale_j``), so a loaded machine does not fail a test
    whose integration is right."""
    return abs(measured - truth) <= rel * abs(truth) + stale_j


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)
