"""Soak benchmark: does the daemon's memory stay flat over a long campaign?

Starts the real ``greenmon daemon`` command (a subprocess, as README tells a person to) on
a fake powercap tree of several packages sampled at a high rate, plus the host and
estimate probes, with a client streaming ``GET /stream`` through ``ApiClient`` the whole
time.  The high rate compresses time: the samples of many hours at default rates (about
300 samples/s) are written in minutes.  Every ``--interval`` seconds it reads the
daemon's resident memory (psutil), the samples it has taken and its writer's flush timing
(``GET /status``), and DuckDB's own memory (``duckdb_memory()`` through ``POST /sql``).

Prints one JSON document: the RSS series, its slope after warm-up in MB per million
samples with a projection to 100 hours at default rates (about 108 million samples),
the file's bytes per sample and disk per hour at default rates, and flush latency at the
end against the start, each aim beside its figure.

Warm-up lasts until DuckDB's buffer pool is full: DuckDB caches every block it writes
until its memory limit (``[daemon] duckdb_memory_limit``), so at the default 128 MB the
daemon grows for about 19 million samples (~6 bytes each here) and is flat from there: a
21-million-sample run at the default limit leaves only ~2 million samples after warm-up.
The flat stretch the aim asks for (5 million samples after warm-up) is shown at the
smallest limit the config accepts, 64 MB, where the pool fills after ~7.7 million samples:
a 15-22 million sample run has 7-14 million after it.  The short default run (for
``bench/run_all``) shows the slope before the fill.

    python bench/soak.py                       # short: 1 million samples (bench/run_all)
    nice -n 5 python bench/soak.py --samples 21000000 --packages 8   # the default limit
    nice -n 5 python bench/soak.py --samples 22000000 --packages 8 \
        --duckdb-memory-limit 64MB             # >= 5 million samples after warm-up
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psutil
from _common import REPO, machine  # type: ignore[import-not-found]

from greenmon.api import ApiClient, DaemonUnreachable
from greenmon.config import DaemonOptions, memory_limit_bytes
from greenmon.probes import REGISTRY
from tests.fakes.rapl import FakeRaplTree, FakeZone

# Default rates on a typical machine: host 10 Hz x ~10 channels, RAPL 50 Hz x 3-4 zones,
# estimate 10 Hz: about 300 samples/s, so 100 hours is about 108 M samples.
DEFAULT_SAMPLES_PER_S = 300.0
CAMPAIGN_HOURS = 100.0
AIM_FLAT_MB = 20.0
# Flush latency counts as unchanged when the end's median is within this factor of the
# start's (the machine is shared: a tighter bound would measure the neighbours).
AIM_FLUSH_RATIO = 1.5
# The flat stretch the aim asks for: at least 5 million samples after warm-up.
FLAT_WINDOW_SAMPLES = 5_000_000
# DuckDB's memory counts as at its limit (the buffer pool full) from this share of it.
POOL_FULL_SHARE = 0.95
COUNTER_TICK_S = 0.05
MB = 1e6


def fake_powercap(root: Path, packages: int) -> list[FakeZone]:
    """``packages`` packages, each with core and dram subzones (3 counters per package)."""
    tree = FakeRaplTree(root)
    for index in range(packages):
        tree.add_zone(f"intel-rapl:{index}", f"package-{index}")
        tree.add_zone(f"intel-rapl:{index}:0", "core")
        tree.add_zone(f"intel-rapl:{index}:1", "dram")
    return list(tree.zones.values())


def advance_counters(zones: list[FakeZone], stop: threading.Event) -> None:
    """Counters that move like a loaded CPU's (~20-40 W per zone), so the file compresses
    like real data rather than like a constant."""
    rng = random.Random(21)
    while not stop.wait(COUNTER_TICK_S):
        for zone in zones:
            zone.advance(int(COUNTER_TICK_S * 1e6 * rng.uniform(20.0, 40.0)))


def write_config(
    path: Path, root: Path, args: argparse.Namespace, db: Path, memory_limit: str
) -> None:
    others = "".join(
        f"[probes.{name}]\nenabled = false\n"
        for name in REGISTRY
        if name not in ("rapl", "host", "estimate")
    )
    path.write_text(
        f'[daemon]\ndb = "{db}"\nduckdb_memory_limit = "{memory_limit}"\n'
        f'[probes.rapl]\nrate_hz = {args.rapl_hz}\nsysfs_root = "{root}"\n'
        f"[probes.host]\nrate_hz = {args.host_hz}\n"
        f"[probes.estimate]\nrate_hz = {args.host_hz}\n" + others
    )


def stream_reader(socket_path: Path, counts: dict[str, int]) -> None:
    """A viewer for the whole soak: reads every snapshot until the daemon goes."""

    async def read() -> None:
        async with ApiClient(socket_path) as client:
            async for _snapshot in client.stream():
                counts["snapshots"] += 1

    with contextlib.suppress(DaemonUnreachable):
        anyio.run(read)


def ask(socket_path: Path, query: str | None = None) -> Any:
    async def once() -> Any:
        async with ApiClient(socket_path, timeout_s=30.0) as client:
            if query is None:
                return await client.status()
            return (await client.sql(query)).rows

    return anyio.run(once)


def wait_for_daemon(socket_path: Path, proc: subprocess.Popen[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited ({proc.returncode}): {proc.stderr.read()}")  # type: ignore[union-attr]
        try:
            ask(socket_path)
            return
        except DaemonUnreachable:
            time.sleep(0.2)
    raise SystemExit(f"no daemon answered at {socket_path} within {timeout_s:g} s")


def fit_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys on xs."""
    if len(xs) < 3:
        return None
    return statistics.linear_regression(xs, ys).slope


def downsample(rows: list[dict[str, Any]], points: int) -> list[list[float]]:
    step = max(1, len(rows) // points)
    chosen = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
    return [[round(r["samples"] / 1e6, 3), round(r["rss_mb"], 1)] for r in chosen]


def soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    root, db, config = tmp / "powercap", tmp / "soak.duckdb", tmp / "soak.toml"
    zones = fake_powercap(root, args.packages)
    write_config(config, root, args, db, args.duckdb_memory_limit)
    socket_path = tmp / "d.sock"
    python_path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "GREENMON_SOCKET": str(socket_path), "PYTHONPATH": python_path}
    stop_counters = threading.Event()
    counter_thread = threading.Thread(target=advance_counters, args=(zones, stop_counters))
    counter_thread.start()
    command = [sys.executable, "-m", "greenmon.cli", "daemon", "--config", str(config), "--json"]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    rows: list[dict[str, Any]] = []
    counts = {"snapshots": 0}
    load_start = os.getloadavg()
    try:
        wait_for_daemon(socket_path, proc, 120.0)
        daemon = psutil.Process(proc.pid)
        reader = threading.Thread(target=stream_reader, args=(socket_path, counts), daemon=True)
        reader.start()
        started = time.monotonic()
        while time.monotonic() - started < args.max_seconds:
            time.sleep(args.interval)
            status = ask(socket_path)
            rss = daemon.memory_info().rss
            duck = ask(socket_path, "SELECT sum(memory_usage_bytes) FROM duckdb_memory()")
            rows.append(
                {
                    "t_s": time.monotonic() - started,
                    "samples": sum(p.samples for p in status.probes),
                    "rss_mb": rss / MB,
                    "duckdb_mb": (duck[0][0] or 0) / MB,
                    "writer": msgspec.to_builtins(status.writer),
                }
            )
            if rows[-1]["samples"] >= args.samples:
                break
        load_end = os.getloadavg()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        stop_counters.set()
        counter_thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"the daemon exited {proc.returncode}: {err[-2000:]}")
    summary = json.loads(out)
    file_bytes = sum(p.stat().st_size for p in tmp.glob("soak.duckdb*"))
    return analyse(args, rows, summary, file_bytes, counts, load_start, load_end)


def flush_figures(writer: dict[str, Any] | None) -> dict[str, Any] | None:
    if not writer:
        return None
    return {
        k: writer.get(k) for k in ("flushes", "recent_ms_p50", "recent_ms_p99", "recent_rows_mean")
    }


def analyse(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    file_bytes: int,
    counts: dict[str, int],
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
) -> dict[str, Any]:
    # Warm-up ends once DuckDB's buffer pool has filled to its limit (from then on it
    # evicts instead of growing) and a share of the run has passed, whichever is later.
    limit_mb = (memory_limit_bytes(args.duckdb_memory_limit) or 0) / MB
    full = next((r for r in rows if r["duckdb_mb"] >= POOL_FULL_SHARE * limit_mb), None)
    warm_samples = max(
        args.warmup_fraction * args.samples,
        rows[0]["samples"],
        full["samples"] if full else 0,
    )
    warm = [r for r in rows if r["samples"] >= warm_samples] or rows[-1:]
    xs = [r["samples"] / 1e6 for r in warm]
    slope = fit_slope(xs, [r["rss_mb"] for r in warm])
    duck_slope = fit_slope(xs, [r["duckdb_mb"] for r in warm])
    rss_after = [r["rss_mb"] for r in warm]
    spread_mb = max(rss_after) - min(rss_after)
    written = int(summary["samples_written"])
    campaign_samples = DEFAULT_SAMPLES_PER_S * 3600 * CAMPAIGN_HOURS
    projected = None
    if slope is not None and duck_slope is not None:
        # DuckDB's part grows only up to its limit; the rest of the slope goes on.
        remaining_m = (campaign_samples - written) / 1e6
        duck_headroom_mb = max(0.0, limit_mb - warm[-1]["duckdb_mb"])
        projected = (
            rss_after[-1]
            + min(max(0.0, duck_slope) * remaining_m, duck_headroom_mb)
            + max(0.0, slope - duck_slope) * remaining_m
        )
    bytes_per_sample = file_bytes / written if written else None
    start_flush, end_flush = flush_figures(warm[0]["writer"]), flush_figures(rows[-1]["writer"])
    flush_ratio = None
    if start_flush and end_flush and start_flush["recent_ms_p50"]:
        flush_ratio = end_flush["recent_ms_p50"] / start_flush["recent_ms_p50"]
    duration_s = rows[-1]["t_s"]
    return {
        "benchmark": "soak",
        "machine": machine(),
        "load_avg_1_5_15": {
            "start": [round(x, 2) for x in load_start],
            "end": [round(x, 2) for x in load_end],
        },
        "setup": {
            "rapl_hz": args.rapl_hz,
            "rapl_zones": 3 * args.packages,
            "host_hz": args.host_hz,
            "estimate_hz": args.host_hz,
            "stream_snapshots_read": counts["snapshots"],
            "duckdb_memory_limit": args.duckdb_memory_limit,
            "warmup_samples": int(warm_samples),
            "buffer_pool_full_at_samples": full["samples"] if full else None,
        },
        "samples_written": written,
        "duration_s": round(duration_s, 1),
        "samples_per_s": round(rows[-1]["samples"] / duration_s, 1),
        "equivalent_hours_at_default_rates": round(written / DEFAULT_SAMPLES_PER_S / 3600, 1),
        "probes": [
            {
                k: p.get(k)
                for k in ("probe", "state", "achieved_hz", "target_hz", "missed_ticks", "errors")
            }
            for p in summary["probes"]
        ],
        "rss_mb": {
            "first": round(rows[0]["rss_mb"], 1),
            "after_warmup": round(rss_after[0], 1),
            "end": round(rss_after[-1], 1),
            "min_after_warmup": round(min(rss_after), 1),
            "max_after_warmup": round(max(rss_after), 1),
            "series_msamples_mb": downsample(rows, 40),
        },
        "duckdb_memory_mb": {
            "after_warmup": round(warm[0]["duckdb_mb"], 1),
            "end": round(warm[-1]["duckdb_mb"], 1),
        },
        "slope_mb_per_million_samples": None if slope is None else round(slope, 3),
        "duckdb_slope_mb_per_million_samples": (
            None if duck_slope is None else round(duck_slope, 3)
        ),
        "projection_100h_default_rates": {
            "samples": int(campaign_samples),
            "rss_mb": None if projected is None else round(projected, 1),
        },
        "file_bytes_per_sample": None if bytes_per_sample is None else round(bytes_per_sample, 2),
        "disk_mb_per_hour_default_rates": (
            None
            if bytes_per_sample is None
            else round(bytes_per_sample * DEFAULT_SAMPLES_PER_S * 3600 / MB, 1)
        ),
        "flush_ms": {"start": start_flush, "end": end_flush},
        "aims": {
            "rss_flat_after_warmup": {
                "figure_mb": round(spread_mb, 1),
                "aim_mb": AIM_FLAT_MB,
                "met": spread_mb <= AIM_FLAT_MB,
            },
            "flush_latency_unchanged": {
                "figure_end_over_start_p50": None if flush_ratio is None else round(flush_ratio, 2),
                "aim_at_most": AIM_FLUSH_RATIO,
                "met": flush_ratio is not None and flush_ratio <= AIM_FLUSH_RATIO,
            },
            "samples_after_warmup": {
                "figure": written - int(warm_samples),
                "aim_at_least": FLAT_WINDOW_SAMPLES,
                "met": written - warm_samples >= FLAT_WINDOW_SAMPLES,
            },
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples",
        type=int,
        default=1_000_000,
        help="stop once this many samples are taken (full soak: 21000000 or more)",
    )
    parser.add_argument("--rapl-hz", type=float, default=1000.0)
    parser.add_argument(
        "--packages", type=int, default=4, help="fake RAPL packages, 3 counters each"
    )
    parser.add_argument(
        "--host-hz", type=float, default=100.0, help="rate of the host and estimate probes"
    )
    parser.add_argument(
        "--duckdb-memory-limit",
        default=DaemonOptions().duckdb_memory_limit,
        help="the daemon's [daemon] duckdb_memory_limit (default: greenmon's default)",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between readings")
    parser.add_argument(
        "--warmup-fraction", type=float, default=0.2, help="share of --samples treated as warm-up"
    )
    parser.add_argument("--max-seconds", type=float, default=1500.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gm-soak-"))
    try:
        result = soak(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
