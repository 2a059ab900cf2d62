"""`greenmon tui` attached to a running daemon is a client: the process, started as a
person starts it (on a terminal, here a pseudo-terminal), draws the daemon's live view
without DuckDB mapped (its /proc/PID/maps) - it reads everything through the API."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.rapl import standard_tree

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps"),
]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color"}


def mapped_files(pid: int) -> set[str]:
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            paths.add(fields[5])
    return paths


@pytest.fixture
def daemon_db(tmp_path: Path) -> Iterator[Path]:
    standard_tree(tmp_path / "powercap")
    config = tmp_path / "greenmon.toml"
    config.write_text(
        f'[probes.rapl]\nrate_hz = 50\nsysfs_root = "{tmp_path / "powercap"}"\n'
        "[probes.host]\nrate_hz = 10\n[probes.nvml]\nenabled = false\n"
    )
    db = tmp_path / "daemon.duckdb"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "greenmon.cli", "daemon", "--db", str(db), "--config",
         str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env(),
    )  # fmt: skip
    assert daemon.stderr is not None
    line = daemon.stderr.readline()
    try:
        assert "greenmon daemon started" in line, line + daemon.stderr.read()
        yield db
    finally:
        daemon.terminate()
        daemon.communicate(timeout=60)


class Terminal:
    """A pseudo-terminal whose output is read continuously (a TUI blocks on a full one)."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def close(self) -> None:
        os.close(self.slave)
        os.close(self.master)


def test_the_tui_attached_to_a_daemon_has_no_duckdb_mapped(daemon_db: Path) -> None:
    terminal = Terminal()
    tui = subprocess.Popen(
        [sys.executable, "-m", "greenmon.cli", "tui", "--db", str(daemon_db)],
        stdin=terminal.slave, stdout=terminal.slave, stderr=terminal.slave,
        cwd=daemon_db.parent, env=_env(), start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # drawn, with the daemon's channels (the rapl probe's) from its stream
        while b"utilisation" not in terminal.output or b"rapl" not in terminal.output:
            assert tui.poll() is None, terminal.output.decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, terminal.output.decode(errors="replace")[-2000:]
            time.sleep(0.2)
        time.sleep(3.0)
        assert tui.poll() is None
        mapped = mapped_files(tui.pid)
        text = terminal.output.decode(errors="replace")
    finally:
        tui.terminate()
        tui.wait(30)
        terminal.close()
    assert "starting one in this process" not in text  # it attached; it hosts nothing
    assert any("textual" in p or "python" in Path(p).name for p in mapped), mapped
    assert not sorted(p for p in mapped if "duckdb" in p)
