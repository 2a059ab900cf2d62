"""`greenmon helper` runs as root, so it loads as little as it can: a helper process that
has served RAPL reads and a settings change has neither DuckDB nor aiohttp mapped (its
/proc/PID/maps), and none of the daemon's modules imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import greenmon
from greenmon.privhelper.client import HelperClient
from tests.api.fakes import short_socket_dir
from tests.fakes.cpufreq import FakeCpufreqTree
from tests.fakes.rapl import standard_tree

REPO = Path(greenmon.__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps (Linux)"
)


def mapped_files(pid: int) -> set[str]:
    """The files mapped into process ``pid`` (shared libraries, extension modules)."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            paths.add(fields[5])
    return paths


def test_a_serving_helper_has_neither_duckdb_nor_aiohttp_mapped(tmp_path: Path) -> None:
    standard_tree(tmp_path / "powercap")
    cpu = FakeCpufreqTree(tmp_path / "cpu")
    with short_socket_dir() as directory:
        socket_path = directory / "helper.sock"
        log = directory / "helper.log"
        with log.open("w") as log_file:
            helper = subprocess.Popen(
                [sys.executable, "-m", "greenmon.cli", "helper", "--socket", str(socket_path),
                 "--powercap-root", str(tmp_path / "powercap"), "--cpufreq-root", str(cpu.root),
                 "--allow-non-root"],
                stdout=log_file, stderr=log_file, env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while "listening at" not in log.read_text():
                assert helper.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the helper did not start"
                time.sleep(0.05)
            client = HelperClient(socket_path)
            assert len(client.rapl_read()) == 3
            target = json.dumps(
                {"kind": "cpufreq", "path": str(cpu.root / "cpu1" / "cpufreq" / "scaling_governor")}
            )
            assert client.setting_write(target, "performance") == "performance"
            client.close()
            mapped = mapped_files(helper.pid)
        finally:
            helper.terminate()
            helper.wait(10)
    assert any("python" in Path(p).name for p in mapped), mapped  # the maps were read
    heavy = sorted(p for p in mapped if "duckdb" in p or "/aiohttp/" in p or "/pyarrow/" in p)
    assert not heavy, heavy
