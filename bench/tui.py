"""TUI benchmark: what a viewer costs, in its own process and in the daemon's.

Runs the daemon in its own process — composed as ``greenmon daemon`` composes it
(build_daemon), with a fake RAPL tree at 250 Hz (so the sampler's 4096-tick jitter window
covers about the measured 15 s) plus the host probe at 10 Hz — and gives it a long plan on
the fake engine, so the viewer shows a running experiment (phases, grid, results).  With
no viewer, with a bare stream reader (4 Hz, no drawing) and with the TUI attached headless
(streams at 4 Hz, polls events, draws), it measures the viewer process's CPU time and the
daemon process's, as shares of one core, and each probe's p99 tick jitter (windows reset
when a measurement starts).  Conditions alternate (none, stream, tui, none, ...) so drift
is not mistaken for an effect.  Aim: the TUI process <= 2% of a core while it
shows a running experiment.  Prints JSON.

    python bench/tui.py [--seconds 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from _common import REPO, aim, machine  # type: ignore[import-not-found]

from tests.support.plans import fake_plan

RAPL_HZ = 250.0
WARMUP_S = 3.0
VIEWER_START_S = 8.0
# On a loaded machine a viewer's imports and first layout can outlast VIEWER_START_S and
# would be counted as its steady cost: the viewer says when it has drawn a few snapshots
# (a file beside the socket), and its CPU is counted from then, up to this long a wait.
VIEWER_READY_TIMEOUT_S = 120.0
VIEWER_READY_SNAPSHOTS = 3
VIEWERS = ("none", "stream", "tui")
TUI_AIM_PERCENT_OF_CORE = 2.0
# A plan on the fake engine long enough to outlast every measured condition.
PLAN = fake_plan("bench-tui", repetitions=200, seed=1, warmup_requests=0, cooldown_s=(1.0, 0.5))


def serve(socket_path: str, db_path: str, root: str) -> None:
    """The daemon process: fake RAPL + host probes, the API, until SIGTERM."""
    import anyio

    from greenmon.api import ApiOptions
    from greenmon.config import parse_config
    from greenmon.daemon import Daemon, build_daemon
    from greenmon.probes import REGISTRY
    from greenmon.store import Store
    from tests.fakes.rapl import FakeRaplTree

    tree = FakeRaplTree(Path(root))
    tree.add_zone("intel-rapl:0", "package-0")
    tree.add_zone("intel-rapl:0:0", "dram")
    others = "".join(
        f"[probes.{name}]\nenabled = false\n" for name in REGISTRY if name not in ("rapl", "host")
    )
    config = parse_config(
        f'[probes.rapl]\nrate_hz = {RAPL_HZ}\nsysfs_root = "{root}"\n'
        "[probes.host]\nrate_hz = 10\n" + others
    )

    async def reset_on_sigusr1(daemon: Daemon, *, task_status: Any) -> None:
        # The bench starts each measured window with empty jitter windows, so start-up
        # (the viewer's textual import, its first layout) is not counted in it.
        with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
            task_status.started()
            async for _ in signals:
                for sampler in daemon.samplers:
                    sampler.health.jitter_ns.clear()

    with Store.open(db_path) as store:
        daemon = build_daemon(
            store,
            config,
            api=ApiOptions(socket_path=Path(socket_path)),
            runner_options={"reference": None},
        )
        daemon.services.append(reset_on_sigusr1)  # bench instrumentation only
        anyio.run(daemon.run)


def ready_path(socket_path: str | Path) -> Path:
    return Path(f"{socket_path}.viewer-ready")


def view(socket_path: str, kind: str) -> None:
    """The viewer process: the real TUI headless, or a bare stream reader (no drawing).
    Writes ``ready_path`` once it has taken VIEWER_READY_SNAPSHOTS snapshots (bench
    instrumentation only: one file write, then nothing)."""
    import threading

    from greenmon.api import ApiClient

    ready = ready_path(socket_path)
    if kind == "stream":
        import anyio

        async def read_stream() -> None:
            count = 0
            async with ApiClient(socket_path) as client:
                async for _ in client.stream():
                    count += 1
                    if count == VIEWER_READY_SNAPSHOTS:
                        ready.touch()

        anyio.run(read_stream)
        return
    from greenmon.tui.app import GreenmonApp

    app = GreenmonApp(ApiClient(socket_path))

    def watch() -> None:
        while app.model.snapshots < VIEWER_READY_SNAPSHOTS:
            time.sleep(0.2)
        ready.touch()

    threading.Thread(target=watch, daemon=True).start()
    app.run(headless=True)


def wait_for_viewer(socket_path: Path, viewer: subprocess.Popen[bytes]) -> float:
    """Wait until the viewer has started and drawn; the seconds it took."""
    started = time.monotonic()
    deadline = started + VIEWER_READY_TIMEOUT_S
    while not ready_path(socket_path).exists():
        if viewer.poll() is not None:
            raise SystemExit(f"the {viewer.args} viewer exited before it was ready")
        if time.monotonic() > deadline:
            raise SystemExit(f"the viewer was not ready within {VIEWER_READY_TIMEOUT_S} s")
        time.sleep(0.2)
    return time.monotonic() - started


def wait_for_socket(path: Path, timeout_s: float = 30.0) -> None:
    from greenmon.api import socket_is_live

    deadline = time.monotonic() + timeout_s
    while not (path.exists() and socket_is_live(path)):
        if time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not serve {path} within {timeout_s} s")
        time.sleep(0.1)


def submit(path: Path) -> None:
    from greenmon.api import ApiClient, call_daemon

    call_daemon(ApiClient(path), lambda c: c.submit(PLAN, None))


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def status(path: Path) -> dict[str, Any]:
    """The daemon's status as JSON-ready builtins (the figures below read them by name)."""
    import msgspec

    from greenmon.api import ApiClient, call_daemon

    result: dict[str, Any] = msgspec.to_builtins(call_daemon(ApiClient(path), ApiClient.status))
    return result


def one_condition(viewer: str, seconds: float, tmp: Path, index: int) -> dict[str, Any]:
    socket_path = tmp / f"d{index}.sock"
    script = str(Path(__file__).resolve())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    daemon = subprocess.Popen(
        [sys.executable, script, "--serve", str(socket_path), str(tmp / f"b{index}.duckdb"),
         str(tmp / f"powercap{index}")],
        env=env,
    )  # fmt: skip
    viewer_process = None
    viewer_start_s: float | None = None
    try:
        wait_for_socket(socket_path)
        submit(socket_path)
        time.sleep(WARMUP_S)
        if viewer != "none":
            viewer_process = subprocess.Popen(
                [sys.executable, script, "--view", str(socket_path), viewer],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(VIEWER_START_S)  # textual's import and first layout are not the daemon's
            viewer_start_s = VIEWER_START_S + wait_for_viewer(socket_path, viewer_process)
            time.sleep(1.0)  # the layout after the first snapshots
        missed0 = {p["probe"]: p["missed_ticks"] for p in status(socket_path)["probes"]}
        daemon.send_signal(signal.SIGUSR1)
        proc = psutil.Process(daemon.pid)
        viewer_proc = psutil.Process(viewer_process.pid) if viewer_process else None
        cpu0, wall0 = cpu_s(proc), time.monotonic()
        viewer_cpu0 = cpu_s(viewer_proc) if viewer_proc else 0.0
        time.sleep(seconds)
        wall = time.monotonic() - wall0
        daemon_cpu = cpu_s(proc) - cpu0
        viewer_cpu = (cpu_s(viewer_proc) - viewer_cpu0) if viewer_proc else None
        probes = {p["probe"]: p for p in status(socket_path)["probes"] if p["state"] == "running"}
        if viewer_process is not None and viewer_process.poll() is not None:
            raise SystemExit("the headless TUI exited early")
    finally:
        if viewer_process is not None:
            viewer_process.terminate()
            viewer_process.wait(10)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    return {
        "viewer": viewer,
        # from the viewer's start to its third snapshot: import and first layout, not counted
        "viewer_start_s": None if viewer_start_s is None else round(viewer_start_s, 1),
        "daemon_cpu_percent_of_core": round(100 * daemon_cpu / wall, 2),
        "viewer_cpu_percent_of_core": (
            None if viewer_cpu is None else round(100 * viewer_cpu / wall, 2)
        ),
        "probes": {
            name: {
                "target_hz": p["target_hz"],
                "achieved_hz": p["achieved_hz"],
                "jitter_p50_us": p["jitter_p50_us"],
                "jitter_p99_us": p["jitter_p99_us"],
                "missed_ticks": p["missed_ticks"] - missed0.get(name, 0),
            }
            for name, p in probes.items()
        },
    }  # fmt: skip


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for viewer in VIEWERS:
        chosen = [r for r in runs if r["viewer"] == viewer]
        cpu = [r["daemon_cpu_percent_of_core"] for r in chosen]
        entry: dict[str, Any] = {
            "daemon_cpu_percent_of_core": {"median": statistics.median(cpu), "runs": cpu}
        }
        for probe in chosen[0]["probes"]:
            p99 = [r["probes"][probe]["jitter_p99_us"] for r in chosen if probe in r["probes"]]
            entry[f"{probe}_jitter_p99_us"] = {"median": statistics.median(p99), "runs": p99}
        missed = [sum(p["missed_ticks"] for p in r["probes"].values()) for r in chosen]
        entry["missed_ticks"] = {"runs": missed}
        viewer_cpu = [r["viewer_cpu_percent_of_core"] for r in chosen]
        if viewer != "none":
            entry["viewer_cpu_percent_of_core"] = {
                "median": statistics.median(viewer_cpu),
                "runs": viewer_cpu,
            }
        out[viewer] = entry
    return out


def aims(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """In bench/_common.py's shape, so bench/run_all prints them beside the others."""
    tui_cpu = summary["tui"]["viewer_cpu_percent_of_core"]["median"]
    stream_cpu = summary["stream"]["viewer_cpu_percent_of_core"]["median"]
    return [
        aim(
            "TUI process while it shows a running experiment, % of a core",
            tui_cpu,
            "<=",
            TUI_AIM_PERCENT_OF_CORE,
            "%",
        ),
        aim(
            "the same snapshots read without drawing (stream only), % of a core",
            stream_cpu,
            "<=",
            TUI_AIM_PERCENT_OF_CORE,
            "%",
            why="the share of the TUI's cost that is the API and not the drawing",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", nargs=3, metavar=("SOCKET", "DB", "ROOT"))
    parser.add_argument("--view", nargs=2, metavar=("SOCKET", "KIND"))
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    if args.view:
        view(*args.view)
        return
    runs = []
    with tempfile.TemporaryDirectory(prefix="gm-bench-", dir="/tmp") as directory:
        tmp = Path(directory)
        index = 0
        for _ in range(args.rounds):
            for viewer in VIEWERS:
                runs.append(one_condition(viewer, args.seconds, tmp, index))
                index += 1
    print(
        json.dumps(
            {
                "benchmark": "tui",
                "machine": machine(),
                "seconds_per_condition": args.seconds,
                "load_avg_1m_after": os.getloadavg()[0],
                "rapl_rate_hz": RAPL_HZ,
                "summary": (summary := summarise(runs)),
                "aims": aims(summary),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
