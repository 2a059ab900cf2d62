"""Shutdown benchmark: how fast greenmon stops and answers where the fault tests only check
that it does (their duration assertions moved here).

- ``run_stop_s``: `greenmon run` on the fake engine, signalled (SIGINT) in a 20 s cooldown,
  until the process exits (tests/faults/test_signals.py checks the cooldown was cut short).
  Aim < 10 s.
- ``status_max_s`` and ``daemon_stop_s``: `greenmon daemon` beside three stream clients that
  never read: the slowest of ten `status` calls (aim < 2 s), then SIGTERM until exit (aim
  < 10 s) (tests/faults/test_api_faults.py checks every call is answered and it exits).

Prints JSON with an ``aims`` list.  Usage: ``python bench/shutdown.py``
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from _common import aim, machine  # type: ignore[import-not-found]

from greenmon.api import ApiClient
from tests.fakes.rapl import standard_tree
from tests.faults.support import (
    cli_env,
    count_event,
    greenmon_cmd,
    stalled_stream_client,
    wait_for,
)
from tests.support.plans import write_fake_plan

COOLDOWN_S = 20.0


def run_stop_s(tmp: Path, sock_dir: Path) -> float:
    """Seconds from SIGINT, sent in the first unit's cooldown, until `greenmon run` exits."""
    standard_tree(tmp / "powercap")
    plan = write_fake_plan(
        tmp / "plan.toml", "bench-shutdown", configurations=["fake/cpu"], prompts=2,
        seed=None, cooldown_s=(COOLDOWN_S, 0.1),
        probes={"rapl": {"rate_hz": 200, "sysfs_root": tmp / "powercap"},
                "estimate": {"enabled": False}},
    )  # fmt: skip
    events = tmp / "engine-events.log"
    process = subprocess.Popen(
        greenmon_cmd("run", str(plan), "--db", str(tmp / "run.duckdb"), "--quiet"),
        env=cli_env(GREENMON_FAKE_ENGINE_EVENTS=str(events),
                    GREENMON_SOCKET=str(sock_dir / "run.sock")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: count_event(events, "generate-end") >= 1, process=process,
                 what="the warm-up", timeout_s=120)  # fmt: skip
        time.sleep(0.5)  # inside the cooldown now
        signalled = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
        return time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def daemon_figures(tmp: Path, sock_dir: Path) -> dict[str, float]:
    """The slowest `status` beside three stalled stream clients, and SIGTERM to exit."""
    standard_tree(tmp / "daemon-powercap")
    config = tmp / "greenmon.toml"
    config.write_text(
        f'[probes.rapl]\nrate_hz = 200\nsysfs_root = "{tmp / "daemon-powercap"}"\n'
        "[probes.host]\nrate_hz = 10\n"
        "[probes.nvml]\nenabled = false\n[probes.estimate]\nenabled = false\n"
    )
    socket_path = sock_dir / "daemon.sock"
    process = subprocess.Popen(
        greenmon_cmd("daemon", "--db", str(tmp / "daemon.duckdb"), "--config", str(config)),
        env=cli_env(GREENMON_SOCKET=str(socket_path)), cwd=tmp,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    latencies: list[float] = []
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        if "greenmon daemon started" not in line:
            raise SystemExit(f"the daemon did not start: {line}")
        stalled = [stalled_stream_client(socket_path) for _ in range(3)]

        async def ask() -> None:
            async with ApiClient(socket_path, timeout_s=30.0) as client:
                for _ in range(10):
                    started = time.monotonic()
                    await client.status()
                    latencies.append(time.monotonic() - started)

        try:
            anyio.run(ask)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)
            stop_s = time.monotonic() - signalled
        finally:
            for client in stalled:
                client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return {"status_max_s": max(latencies), "daemon_stop_s": stop_s}


def main() -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="gmb-", dir="/tmp"))  # short socket paths
    try:
        with tempfile.TemporaryDirectory() as tmp:
            figures: dict[str, Any] = {"run_stop_s": run_stop_s(Path(tmp), sock_dir)}
            figures.update(daemon_figures(Path(tmp), sock_dir))
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "shutdown",
                "machine": machine(),
                **{name: round(value, 3) for name, value in figures.items()},
                "aims": [
                    aim("run stops within a cooldown", figures["run_stop_s"], "<", 10, "s"),
                    aim("status beside stalled clients", figures["status_max_s"], "<", 2, "s"),
                    aim("daemon stops beside stalled clients", figures["daemon_stop_s"], "<",
                        10, "s"),
                ],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
