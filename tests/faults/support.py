"""Helpers shared by the fault cases: greenmon as a user runs it, and waiting on evidence.

Fault cases follow what a process did through files it writes (the fake engine's event
log, the daemon's first stderr line), polled with a deadline, never through sleeps alone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def greenmon_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "greenmon.cli", *args]


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def wait_for(
    predicate: Callable[[], bool],
    *,
    timeout_s: float = 60.0,
    process: subprocess.Popen[str] | None = None,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` every 10 ms; fail if ``process`` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            _out, err = process.communicate()
            raise AssertionError(f"process exited ({process.returncode}) before {what}: {err}")
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def event_lines(path: Path) -> list[str]:
    """The fake engine's events (``GREENMON_FAKE_ENGINE_EVENTS``), names only."""
    if not path.exists():
        return []
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def count_event(path: Path, name: str) -> int:
    return event_lines(path).count(name)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(processes: Sequence[psutil.Process]) -> list[psutil.Process]:
    """The processes still running (a zombie counts: nobody reaped it)."""
    return [p for p in processes if p.is_running()]


def assert_one_paragraph_error(stderr: str, *needles: str) -> None:
    """What the CLI shows for a GreenmonError: one paragraph, no traceback."""
    text = stderr.strip()
    assert "Traceback" not in text, text
    assert text.startswith("greenmon: "), text
    assert "\n\n" not in text, text
    for needle in needles:
        assert needle.lower() in text.lower(), (needle, text)


def stalled_stream_client(path: Path) -> socket.socket:
    """Asks for /stream with a tiny receive buffer, then never reads."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    client.connect(str(path))
    client.sendall(b"GET /stream HTTP/1.1\r\nHost: greenmon\r\n\r\n")
    return client
