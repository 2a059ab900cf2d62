"""README's shell examples for `greenmon measure` and windows over the API, run as they are
written (bash, the installed `greenmon` on PATH); the Python example runs in test_monitor.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from greenmon.store import Store
from tests.measure.support import (
    IDLE_W,
    REPO,
    MarkedPower,
    cli_env,
    start_daemon,
    stop_daemon,
    within,
    write_config,
)

pytestmark = pytest.mark.slow


def readme_block(heading: str) -> str:
    """The first ```sh block after ``heading`` in README.md."""
    section = (REPO / "README.md").read_text().split(heading + "\n", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"README's {heading!r} section has no sh block"
    return match.group(1)


def shell_env(socket_path: Path) -> dict[str, str]:
    """The environment of a person who installed greenmon: its script first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return cli_env(socket_path) | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.timeout(600)
def test_readme_measure_examples_run(tmp_path: Path, short_dir: Path) -> None:
    lines = readme_block("### `greenmon measure -- CMD`").strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("greenmon measure ") for line in lines)
    bench = tmp_path / "bench.sh"  # the second example's own script: here, one that returns
    bench.write_text("#!/bin/sh\nexit 0\n")
    bench.chmod(0o755)
    for line in lines:
        done = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=shell_env(short_dir / "d.sock"),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, (line, done.stderr)
        assert "Traceback" not in done.stderr, line
        if "--json" not in line:
            assert "Energy stats for" in done.stderr, (line, done.stderr)
            assert re.search(r"energy[ _]cpu", done.stderr), (line, done.stderr)
    report = json.loads((tmp_path / "energy.json").read_text())
    assert report["exit_status"] == 0 and report["runs"][0]["energy_j"]["cpu"] > 0
    with Store.open(tmp_path / "greenmon.duckdb", read_only=True) as store:
        _, rows = store.query(
            "SELECT count(*) FROM window_results WHERE tags->>'model' = 'tiny' AND kind = 'window'"
        )
    assert rows == [(10,)]  # --repeat 10 --tag model=tiny


@pytest.mark.timeout(300)
def test_readme_api_example_runs(
    tmp_path: Path, short_dir: Path, marked_power: MarkedPower
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("README's API example uses curl, which is not installed here")
    block = readme_block("### Over the API")
    socket_path = short_dir / "d.sock"
    config = write_config(tmp_path, marked_power.tree.root)
    # the database the README's commands default to: ./greenmon.duckdb
    daemon = start_daemon(tmp_path, socket_path, config, tmp_path / "greenmon.duckdb")
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path,
            env=shell_env(socket_path), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        stop_daemon(daemon)
    assert done.returncode == 0, done.stderr
    # curl prints each answer without a newline: the two JSON answers, then the table
    decoder = json.JSONDecoder()
    closed, end = decoder.raw_decode(done.stdout)
    listing, end = decoder.raw_decode(done.stdout, end)
    assert closed["name"] == "load-test" and closed["tags"] == {"users": 50}
    assert closed["flags"] == [], closed
    # known truth: the fake RAPL tree idles at IDLE_W for the window's whole duration
    assert closed["duration_s"] >= 2.0
    assert within(
        closed["energy_j"]["cpu"], IDLE_W * closed["duration_s"], stale_j=marked_power.stale_j()
    )
    assert listing["open"] == [] and listing["recent"][0]["window_id"] == closed["window_id"]
    table = done.stdout[end:].strip().splitlines()  # greenmon sql's: header, rule, rows
    assert table[0].split()[0] == "name" and table[2].startswith("load-test"), table
    with Store.open(tmp_path / "greenmon.duckdb", read_only=True) as store:
        _, rows = store.query("SELECT energy_cpu_j FROM window_results")
    assert rows == [(pytest.approx(closed["energy_j"]["cpu"], rel=1e-9),)]
