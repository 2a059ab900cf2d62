"""What sampling costs: the daemon's CPU share with four probes at their default rates.

Runs ``greenmon.daemon.Daemon`` for ``--seconds`` (default 30) with host (1 Hz), a fake NVML
module with two GPUs (10 Hz), the NETIO probe polling a local fake device (1 Hz) and RAPL on
a fake powercap tree (5 Hz), writing to a fresh DuckDB file, and prints JSON:

- ``cpu_percent_of_one_core``: this process's CPU time (all threads: samplers, writer,
  DuckDB) over wall time, in % of one core, for the whole run and for the steady state
  (from one second after the daemon started to the end);
- per probe: target and achieved rate, p50 / p99 tick jitter in µs, missed ticks, errors,
  and ``read_cpu_us``, the CPU time of one read measured alone before the run, which
  separates what the probes cost from what sampling and storing cost.

- ``helper``: what reading through the greenmon helper (greenmon/privhelper/) costs, the
  path of a daemon that is not root: the helper runs in its own process over the same fake
  powercap tree and a fake cpufreq tree; per RAPL read (all zones, one request) and per
  settings change (a cpufreq governor written, read back and logged), the wall time p50 /
  p99 in µs and this process's CPU per request, beside the direct read / write, with
  aims on the median (the p99 of a loaded shared machine measures its scheduler): a read
  under 1 ms (a 50 Hz sampler has 20 ms per tick) costing the daemon under 200 µs of CPU,
  a change under 20 ms (one per factor per unit).  ``--helper-only`` runs this section alone.

The fake NETIO device runs in a separate process, so its CPU is not counted; the fake NVML
module runs in-process, standing in for the real library's calls (the real NVML calls cost
more, tens of µs each).  Usage: ``bench/run_all --only probes`` or
``PYTHONPATH=bench python bench/probes.py [--seconds 30]``.  On a shared machine read
``machine.load_avg_1m`` first: other processes' load inflates the CPU share and jitter.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from _common import (  # type: ignore[import-not-found]
    REPO,
    aim,
    commit_floor_us,
    journal_append_floor_us,
    machine,
    wakeup_floor_ms_per_s,
)

from greenmon import sampling
from greenmon.config import parse_config
from greenmon.daemon import Daemon
from greenmon.hardware.cpufreq import CpufreqKnob
from greenmon.privhelper import HelperClient
from greenmon.probes import host, netio, nvml, rapl
from greenmon.probes.base import Probe
from greenmon.store import Store
from tests.fakes.cpufreq import FakeCpufreqTree
from tests.fakes.nvml import two_gpus
from tests.fakes.rapl import standard_tree

NETIO_ENV = {"GREENMON_NETIO_USER": "netio", "GREENMON_NETIO_PASSWORD": "s3cret-pw"}


def read_cost_us(probe: Probe, reads: int = 300) -> float:
    """CPU time of one ``read()`` of a blocking probe, alone, in µs: the probe's own share
    of the daemon's cost, as against the sampler, the writer and DuckDB."""
    probe.open()
    try:
        start = time.thread_time()
        for _ in range(reads):
            probe.read()
        return round((time.thread_time() - start) / reads * 1e6, 1)
    finally:
        probe.close()


async def async_read_cost_us(probe: netio.NetioProbe, reads: int = 40) -> float:
    """The same for the NETIO probe: its reads are coroutines on this thread's loop."""
    probe.open()
    try:
        await probe.read()  # the session and its connection are made once, not per read
        start = time.thread_time()
        for _ in range(reads):
            await probe.read()
        return round((time.thread_time() - start) / reads * 1e6, 1)
    finally:
        await probe.aclose()
        probe.close()


def thread_cpu_ns() -> dict[int, int]:
    """CPU time of each of this process's threads (native id), in ns, from schedstat."""
    out: dict[int, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as handle:
                out[int(tid)] = int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended, or no schedstat on this kernel
    return out


class Breakdown:
    """Where the daemon's CPU goes, per thread: the sampling thread (``sampling.drive``),
    the writer's flushes (``Store.append_samples`` into the sample journal, or
    ``Store.write`` without one, on whichever worker thread ran it), the journal's loads
    into DuckDB (``Store.load_journal``), the event loop's thread, and the rest (DuckDB's
    own threads, other workers).  DuckDB commits are the outermost ``write`` and
    ``load_journal`` calls.  The bench wraps the functions by name before the daemon
    starts; the daemon itself is unchanged."""

    WRAPPED = ("write", "append_samples", "load_journal")

    def __init__(self) -> None:
        self.drive_tid: int | None = None
        self.ns = dict.fromkeys(self.WRAPPED, 0)
        self.calls = dict.fromkeys(self.WRAPPED, 0)
        self._depth = threading.local()
        self._drive = sampling.drive
        self._originals = {name: getattr(Store, name) for name in self.WRAPPED}

    def _traced(self, name: str) -> Any:
        original = self._originals[name]

        def traced(store: Store, *args: Any) -> Any:
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            started = time.thread_time_ns()
            try:
                return original(store, *args)
            finally:
                self._depth.n = depth
                if depth == 0:  # a write inside append_samples is the append's
                    self.ns[name] += time.thread_time_ns() - started
                    self.calls[name] += 1

        return traced

    def __enter__(self) -> Breakdown:
        drive = self._drive

        def traced_drive(samplers: Any, desk: Any = None) -> None:
            self.drive_tid = threading.get_native_id()
            drive(samplers, desk)

        sampling.drive = traced_drive  # type: ignore[assignment]
        for name in self.WRAPPED:
            setattr(Store, name, self._traced(name))
        return self

    def __exit__(self, *exc: object) -> None:
        sampling.drive = self._drive  # type: ignore[assignment]
        for name, original in self._originals.items():
            setattr(Store, name, original)

    def mark(self) -> tuple[dict[int, int], dict[str, int], dict[str, int], float]:
        return thread_cpu_ns(), dict(self.ns), dict(self.calls), time.monotonic()

    def between(
        self,
        start: tuple[dict[int, int], dict[str, int], dict[str, int], float],
        loop_tid: int,
    ) -> dict[str, float]:
        """ms of CPU per second of wall time, per part, from ``start`` to now."""
        threads_now, ns_now, calls_now, wall = self.mark()
        threads_then, ns_then, calls_then, wall_then = start
        seconds = wall - wall_then
        ns = {k: ns_now[k] - ns_then[k] for k in ns_now}
        calls = {k: calls_now[k] - calls_then[k] for k in calls_now}
        per = {tid: n - threads_then.get(tid, 0) for tid, n in threads_now.items()}
        sampling_ns = per.pop(self.drive_tid, 0) if self.drive_tid is not None else 0
        loop_ns = per.pop(loop_tid, 0)
        flushes = calls["write"] + calls["append_samples"]
        flushes_ns = ns["write"] + ns["append_samples"]
        rest_ns = sum(per.values()) - flushes_ns - ns["load_journal"]
        return {
            "sampling_thread": round(sampling_ns / 1e6 / seconds, 2),
            "writer_flushes": round(flushes_ns / 1e6 / seconds, 2),
            "flushes_per_s": round(flushes / seconds, 2),
            "cpu_us_per_flush": round(flushes_ns / 1e3 / max(1, flushes), 1),
            "journal_loads": round(ns["load_journal"] / 1e6 / seconds, 2),
            "journal_loads_per_s": round(calls["load_journal"] / seconds, 3),
            "duckdb_commits_per_s": round((calls["write"] + calls["load_journal"]) / seconds, 3),
            "event_loop": round(loop_ns / 1e6 / seconds, 2),
            "other_threads": round(rest_ns / 1e6 / seconds, 2),
        }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_netio_server() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.netio", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, port


async def measure(
    seconds: float, workdir: Path, netio_port: int, journal_load_interval_s: float | None = None
) -> dict[str, Any]:
    standard_tree(workdir / "powercap")
    probes: dict[str, Probe] = {
        "host": host.HostProbe(host.Options()),
        "nvml": nvml.NvmlProbe(nvml=two_gpus()),
        "netio": netio.NetioProbe(  # type: ignore[dict-item]
            netio.Options(enabled=True, host=f"127.0.0.1:{netio_port}"), environ=NETIO_ENV
        ),
        "rapl": rapl.RaplProbe(rapl.Options(sysfs_root=str(workdir / "powercap"))),
    }
    read_costs = {name: read_cost_us(probe) for name, probe in probes.items() if name != "netio"}
    read_costs["netio"] = await async_read_cost_us(
        netio.NetioProbe(
            netio.Options(enabled=True, host=f"127.0.0.1:{netio_port}"), environ=NETIO_ENV
        )
    )
    # default rates: host 1, nvml 10, netio 1, rapl 5 Hz; the journal's default interval
    # unless given (0: no journal, a DuckDB commit every flush)
    interval = journal_load_interval_s
    config = parse_config(
        "" if interval is None else f"[daemon]\njournal_load_interval_s = {interval}\n"
    )
    store = Store.open(workdir / "bench.duckdb")
    daemon = Daemon(store, config, probes=probes, handle_signals=False)
    marks: dict[str, float] = {}
    result: dict[str, Any] = {}

    async def run() -> None:
        marks["cpu_start"], marks["wall_start"] = cpu_seconds(), time.monotonic()
        summary = await daemon.run(seconds)
        marks["cpu_end"], marks["wall_end"] = cpu_seconds(), time.monotonic()
        result["summary"] = summary

    with Breakdown() as breakdown:
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await daemon.started.wait()
            await anyio.sleep(1.0)
            marks["cpu_steady"], marks["wall_steady"] = cpu_seconds(), time.monotonic()
            steady = breakdown.mark()
            # the parts are read before the daemon stops, so its last flush is not in them
            await anyio.sleep(max(1.0, seconds - 2.0))
            parts = breakdown.between(steady, threading.get_native_id())
    store.close()
    summary = result["summary"]
    rates = [p.target_hz for p in summary.probes if p.probe != "netio"]  # netio: async
    flush_rows = int(summary.samples_written / seconds * config.daemon.flush_interval_s)
    commit_us = commit_floor_us(workdir, flush_rows)
    append_us = journal_append_floor_us(workdir, flush_rows)
    journal_on = config.daemon.journal_load_interval_s > 0

    def share(cpu_key: str, wall_key: str) -> float:
        cpu = marks["cpu_end"] - marks[cpu_key]
        wall = marks["wall_end"] - marks[wall_key]
        return round(100.0 * cpu / wall, 3)

    return {
        "seconds": round(marks["wall_end"] - marks["wall_start"], 2),
        "cpu_percent_of_one_core": {
            "whole_run": share("cpu_start", "wall_start"),
            "steady_state": share("cpu_steady", "wall_steady"),
        },
        # what the reads alone would cost at the achieved rates; the rest of the CPU
        # share is sampling, hand-off, the writer and DuckDB
        "probe_reads_percent_of_one_core": round(
            sum(
                p.achieved_hz * read_costs[p.probe] / 1e4
                for p in summary.probes
                if read_costs.get(p.probe) is not None
            ),
            3,
        ),
        "samples_written": summary.samples_written,
        "journal_load_interval_s": config.daemon.journal_load_interval_s,
        # where the CPU goes (ms per s), beside what this machine charges for
        # the two things no sampler can avoid: waking at the probes' deadlines, and
        # making a flush durable: with the sample journal (the default) an fdatasync'd
        # append per flush, its DuckDB commit only at a journal load; without it, a
        # DuckDB commit per flush
        "parts_ms_per_s": parts,
        "floors": {
            "wakeups_alone": wakeup_floor_ms_per_s(rates),
            "durable_flush": "journal append" if journal_on else "DuckDB commit",
            "journal_append_of_one_flush_cpu_us": append_us,
            "commit_of_one_flush_cpu_us": commit_us,
            "flush_rows": flush_rows,
            "durable_flushes_ms_per_s": round(
                (append_us if journal_on else commit_us) / 1e3 / config.daemon.flush_interval_s,
                2,
            ),
        },
        "probes": [
            {
                "probe": p.probe,
                "state": p.state,
                "target_hz": p.target_hz,
                "achieved_hz": p.achieved_hz,
                "jitter_p50_us": _round(p.jitter_p50_us),
                "jitter_p99_us": _round(p.jitter_p99_us),
                "missed_ticks": p.missed_ticks,
                "errors": p.errors,
                "last_error": p.last_error,
                "read_cpu_us": read_costs.get(p.probe),
            }
            for p in summary.probes
        ],
        "netio_refresh_period_s": probes["netio"].refresh_period_s,  # type: ignore[attr-defined]
        "machine": machine(),
    }


def _timed(call: Any, count: int) -> dict[str, float]:
    """Wall p50 / p99 and this thread's CPU per call, in µs."""
    walls: list[int] = []
    cpu_start = time.thread_time()
    for _ in range(count):
        start = time.perf_counter_ns()
        call()
        walls.append(time.perf_counter_ns() - start)
    cpu_us = (time.thread_time() - cpu_start) / count * 1e6
    walls.sort()
    return {
        "wall_p50_us": round(walls[len(walls) // 2] / 1e3, 1),
        "wall_p99_us": round(walls[int(len(walls) * 0.99)] / 1e3, 1),
        "client_cpu_us": round(cpu_us, 1),
    }


def helper_cost(workdir: Path, reads: int = 2000, changes: int = 200) -> dict[str, Any]:
    """The greenmon helper's cost per RAPL read and per settings change, from a client."""
    standard_tree(workdir / "helper-powercap")
    cpu = FakeCpufreqTree(workdir / "helper-cpu")
    socket_path = workdir / "helper.sock"
    log = workdir / "helper.log"
    command = [sys.executable, "-m", "greenmon.cli", "helper", "--socket", str(socket_path),
               "--powercap-root", str(workdir / "helper-powercap"),
               "--cpufreq-root", str(cpu.root), "--allow-non-root"]  # fmt: skip
    with log.open("w") as log_file:
        helper = subprocess.Popen(
            command, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=log_file
        )
    try:
        deadline = time.monotonic() + 60
        while "listening at" not in log.read_text():
            if helper.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the helper did not start: {log.read_text()}")
            time.sleep(0.05)
        client = HelperClient(socket_path)
        client.rapl_read()  # connect once, as the probe does at open()
        through_helper = _timed(client.rapl_read, reads)
        direct_probe = rapl.RaplProbe(rapl.Options(sysfs_root=str(workdir / "helper-powercap")))
        direct_probe.open()
        direct = _timed(direct_probe.read, reads)
        direct_probe.close()
        governor = cpu.root / "cpu0" / "cpufreq" / "scaling_governor"
        knob = CpufreqKnob(governor)
        levels = iter(["performance", "powersave"] * changes)

        def change_through_helper() -> None:
            client.setting_write(knob.target, next(levels))

        def change_direct() -> None:
            knob.write(next(levels))
            knob.read()

        setting = _timed(change_through_helper, changes)
        setting_direct = _timed(change_direct, changes)
        client.close()
    finally:
        helper.terminate()
        helper.wait(10)
    return {
        "rapl_read_through_helper": through_helper,
        "rapl_read_direct": direct,
        "zones_per_read": 3,
        "setting_change_through_helper": setting,
        "setting_change_direct": setting_direct,
        "aims": {
            "rapl_read_p50_under_1000_us": through_helper["wall_p50_us"] < 1000,
            "rapl_read_client_cpu_under_200_us": through_helper["client_cpu_us"] < 200,
            "setting_change_p50_under_20000_us": setting["wall_p50_us"] < 20000,
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--helper-only", action="store_true", help="only the helper section")
    parser.add_argument(
        "--journal-load-interval-s",
        type=float,
        default=None,
        help="the daemon's journal_load_interval_s (0: no journal); default: the config's",
    )
    args = parser.parse_args()
    if args.helper_only:
        with tempfile.TemporaryDirectory(prefix="greenmon-bench-") as workdir:
            print(json.dumps({"helper": helper_cost(Path(workdir)), "machine": machine()},
                             indent=2))  # fmt: skip
        return
    server, port = start_netio_server()
    try:
        with tempfile.TemporaryDirectory(prefix="greenmon-bench-") as workdir:
            figures = anyio.run(
                measure, args.seconds, Path(workdir), port, args.journal_load_interval_s
            )
            figures["helper"] = helper_cost(Path(workdir))
    finally:
        server.terminate()
        server.wait(10)
    floors = figures["floors"]
    parts = figures["parts_ms_per_s"]
    figures["aims"] = [
        aim(
            "daemon at default rates (host 1, NVML 10, NETIO 1, RAPL 5 Hz): CPU",
            figures["cpu_percent_of_one_core"]["steady_state"],
            "<=",
            0.5,
            "% of a core",
            # the floors say what part of the figure this machine charges before any work
            f"parts, ms/s: sampling thread {parts['sampling_thread']}, flushes "
            f"{parts['writer_flushes']}, journal loads {parts['journal_loads']}, event loop "
            f"{parts['event_loop']}, other "
            f"{parts['other_threads']}; floors here: {floors['wakeups_alone']['wakeups_per_s']}"
            f" bare wake-ups/s cost {floors['wakeups_alone']['cpu_ms_per_s']} ms/s, one "
            f"flush made durable by a {floors['durable_flush']} "
            f"{floors['durable_flushes_ms_per_s']} ms/s (a journal append "
            f"{floors['journal_append_of_one_flush_cpu_us']} us, a DuckDB commit "
            f"{floors['commit_of_one_flush_cpu_us']} us)",
        )
    ]
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
