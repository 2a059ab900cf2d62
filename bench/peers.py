"""greenmon side by side with CodeCarbon: what monitoring costs, and what it does to the
workload it watches.  Prints JSON with an ``aims`` list.

Two figures per tool, measured on this machine in one run:

- ``cpu_ms_per_s``: CPU time (user + system, every thread) the tool's process spends per
  second of monitoring, each tool alone in its own process (so CPU accounting is per
  tool), counted from when the tool has started to just before it is stopped, minus an
  idle process's share.  CodeCarbon at 1 Hz (``measure_power_secs = 1``, offline, its CSV
  written to a temporary directory); greenmon at 1 Hz (every probe at 1 Hz) and at its
  defaults (host and the estimate at 1 Hz, RAPL at 5 Hz where present), writing a DuckDB
  file.
- ``slowdown``: the embedded ``tiny`` model served by greenmon's torch engine with the
  tool running *in the same process*.  torch is pinned to one intra-op and one inter-op
  thread (and OMP to one), so generation holds one core and never competes with itself.
  Each round runs one *slot* per condition, in the order none / greenmon at its defaults /
  CodeCarbon / greenmon 1 Hz / none (reversed every other round, so a drift favours no
  tool); a slot starts the tool, lets it settle, serves requests for ``--slot-s`` seconds
  and stops it.  A slot's figure is its median time per request (robust to a burst of
  other load); a tool's figure in a round is its slot against the mean of the round's two
  ``none`` slots, which bracket it.  ``none_vs_none`` (the second none slot against the
  first) is the noise floor: its 95% interval (bootstrap over rounds, seeded) says how
  small a slowdown this run can resolve.  Slowdowns are medians over rounds, in %.

Aims: greenmon at its defaults costs at most CodeCarbon's CPU at 1 Hz, and with every
probe at 1 Hz at most half of it; the noise floor's 95%
interval is within +-0.5% (a readable figure); greenmon's slowdown is under 0.5%, which
counts as met only when the upper end of its 95% interval is.

CodeCarbon is installed only for this benchmark, never as a greenmon dependency: either
``pip install codecarbon==3.3.2`` in the environment, or ``pip install --target DIR
codecarbon==3.3.2`` and ``GREENMON_BENCH_SITE=DIR`` (appended to ``sys.path``, so
greenmon's own pinned libraries still win).  Without it the CodeCarbon figures are null
and ``codecarbon`` says why.  Usage: ``bench/run_all --only peers`` or
``PYTHONPATH=bench:. python bench/peers.py [--seconds 20] [--rounds 12] [--slot-s 2]``.
On a shared machine read ``machine.load_avg_1m``: other processes' load widens the noise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
# One OpenMP thread: set before torch is imported (it reads these once).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if os.environ.get("GREENMON_BENCH_SITE"):
    sys.path.append(os.environ["GREENMON_BENCH_SITE"])

TOOLS = ("none", "codecarbon_1hz", "greenmon_1hz", "greenmon_defaults")
GREENMON_1HZ = """
[probes.host]
rate_hz = 1
[probes.rapl]
rate_hz = 1
[probes.estimate]
rate_hz = 1
[probes.nvml]
rate_hz = 1
"""


def codecarbon_missing() -> str | None:
    try:
        import codecarbon  # noqa: F401
    except Exception as error:  # an import that fails in any way counts as missing
        return f"codecarbon is not installed here ({type(error).__name__}: {error})"
    return None


# -- the tools, started and stopped in this process ----------------------------------------


@contextlib.contextmanager
def codecarbon_running(output_dir: str) -> Iterator[None]:
    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    tracker = OfflineEmissionsTracker(
        country_iso_code="ESP",
        measure_power_secs=1,
        output_dir=output_dir,
        log_level="error",
        tracking_mode="machine",
    )
    tracker.start()
    try:
        yield
    finally:
        tracker.stop()


@contextlib.contextmanager
def greenmon_running(config_text: str, db_dir: str) -> Iterator[Any]:
    """A greenmon daemon on its own event loop in a thread of this process."""
    from anyio.from_thread import start_blocking_portal

    from greenmon.config import parse_config
    from greenmon.daemon import Daemon
    from greenmon.store import Store

    store = Store.open(Path(db_dir) / f"greenmon-{time.monotonic_ns()}.duckdb")
    daemon = Daemon(store, parse_config(config_text), handle_signals=False)
    try:
        with start_blocking_portal() as portal:
            future = portal.start_task_soon(daemon.run)
            portal.call(daemon.started.wait)
            try:
                yield daemon
            finally:
                portal.call(daemon.request_stop)
                future.result()
    finally:
        store.close()


def running(tool: str, workdir: str) -> contextlib.AbstractContextManager[Any]:
    if tool == "none":
        return contextlib.nullcontext()
    if tool == "codecarbon_1hz":
        return codecarbon_running(workdir)
    if tool == "greenmon_1hz":
        return greenmon_running(GREENMON_1HZ, workdir)
    if tool == "greenmon_defaults":
        return greenmon_running("", workdir)  # greenmon's defaults
    raise ValueError(tool)


# -- figure 1: CPU per second of monitoring, one process per tool --------------------------


@contextlib.contextmanager
def counting_commits() -> Iterator[dict[str, int]]:
    """Counts, while open, the store's writes that commit to DuckDB outside the journal's
    loads (``Store.write`` with samples or events: the events of a hand-off, or every
    flush when the journal is off) and the journal's loads that loaded rows."""
    from greenmon.store import Store

    counts = {"other_commits": 0, "journal_loads": 0}
    write, load_journal = Store.write, Store.load_journal

    def counted_write(store: Store, samples: Any, events: Any, session_id: str) -> None:
        if len(samples) or events:
            counts["other_commits"] += 1
        write(store, samples, events, session_id)

    def counted_load(store: Store) -> int:
        rows = load_journal(store)
        counts["journal_loads"] += bool(rows)
        return rows

    Store.write = counted_write  # type: ignore[method-assign]
    Store.load_journal = counted_load  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        Store.write = write  # type: ignore[method-assign]
        Store.load_journal = load_journal  # type: ignore[method-assign]


def child_cpu(tool: str, seconds: float) -> dict[str, Any]:
    """In a child process: this process's CPU while ``tool`` monitors for ``seconds``; for
    greenmon also the rates its sampling thread keeps, its flush and journal load
    intervals, how many samples a second it stores and the DuckDB commits it made (what
    its floors are computed from)."""
    counter = counting_commits() if tool.startswith("greenmon") else contextlib.nullcontext({})
    with (
        tempfile.TemporaryDirectory(prefix="greenmon-peers-") as workdir,
        counter as commits,
        running(tool, workdir) as daemon,
    ):
        # Counted once the tool runs, so imports and start-up are not charged to it; the
        # process CPU clock has ns resolution (psutil's cpu_times counts 10 ms ticks).
        commits0 = dict(commits)
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
        measured: dict[str, Any] = {"cpu_s": cpu_s, "wall_s": wall_s}
        if daemon is not None:
            threaded = [s for s in daemon.samplers if not s.is_async]
            measured["rates_hz"] = [s.health.target_hz for s in threaded]
            measured["flush_interval_s"] = daemon.config.daemon.flush_interval_s
            measured["journal_load_interval_s"] = daemon.config.daemon.journal_load_interval_s
            measured["samples_per_s"] = sum(s.health.samples for s in threaded) / wall_s
            for name, count in commits.items():
                measured[f"{name}_per_s"] = (count - commits0[name]) / wall_s
    return measured


def cpu_per_tool(tools: list[str], seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for tool in tools:
        done = subprocess.run(
            [sys.executable, __file__, "--child", tool, "--seconds", str(seconds)],
            capture_output=True,
            text=True,
            timeout=seconds + 300,
        )
        if done.returncode != 0:
            results[tool] = {"error": done.stderr[-1500:]}
            continue
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        results[tool] = {"cpu_ms_per_s": 1e3 * measured["cpu_s"] / measured["wall_s"]}
        if "rates_hz" in measured:
            results[tool]["floors"] = floors(measured)
    idle = results.get("none", {}).get("cpu_ms_per_s", 0.0)
    for tool in tools:
        if "cpu_ms_per_s" in results[tool]:
            raw = results[tool]["cpu_ms_per_s"]
            results[tool] |= {
                "cpu_ms_per_s": round(max(0.0, raw - idle), 3),
                "cpu_ms_per_s_raw": round(raw, 3),
                "core_percent": round(max(0.0, raw - idle) / 10.0, 3),
            }
    return results


def floors(measured: dict[str, Any]) -> dict[str, Any]:
    """What this machine charges a greenmon process before any probe reads: waking at its
    sampling thread's deadlines, and storing what it samples (bench/_common.py).  Beside
    the CPU figure, they say how much of it no code change in the sampling loop can remove.

    Storing, with the sample journal (greenmon/store/journal.py, the daemon's default): one
    journal append (write + fdatasync, no DuckDB commit) of a flush's rows per flush
    interval, and one DuckDB commit of the rows pending per journal load, once a load
    interval (or sooner when ``LOAD_ROWS`` are pending), plus the other DuckDB commits
    counted during the measurement (a hand-off's events), each charged as a commit of one
    row.  A load interval longer than the measurement is charged all the same: the daemon
    pays it, however short the run.  Without the journal (interval 0): one DuckDB commit
    per flush, as before the journal."""
    from _common import (  # type: ignore[import-not-found]
        commit_floor_us,
        journal_append_floor_us,
        wakeup_floor_ms_per_s,
    )

    from greenmon.store.journal import LOAD_ROWS

    wakeups = wakeup_floor_ms_per_s(measured["rates_hz"])
    flush_s = measured["flush_interval_s"]
    load_s = measured.get("journal_load_interval_s") or 0.0
    samples_per_s = measured["samples_per_s"]
    flush_rows = max(1, int(samples_per_s * flush_s))
    other_commits_per_s = measured.get("other_commits_per_s", 0.0)
    with tempfile.TemporaryDirectory(prefix="greenmon-peers-") as workdir:
        if not load_s:
            commit_us = commit_floor_us(Path(workdir), flush_rows)
            storing: dict[str, Any] = {
                "assumes": f"no journal: one DuckDB commit of {flush_rows} rows per flush "
                f"({flush_s:g} s)",
                "commit_of_one_flush_cpu_us": commit_us,
                "commit_rows": flush_rows,
                "duckdb_commits_per_s": round(1 / flush_s, 3),
                "commits_ms_per_s": round(commit_us / 1e3 / flush_s, 2),
                "storing_ms_per_s": round(commit_us / 1e3 / flush_s, 2),
            }
        else:
            load_rows = max(1, min(LOAD_ROWS, int(samples_per_s * load_s)))
            loads_per_s = max(1 / load_s, samples_per_s / LOAD_ROWS)
            # Each floor in a folder of its own: commit_floor_us creates its file, and a
            # second one in the same folder would reopen the first's.
            dirs = [Path(workdir) / name for name in ("append", "load", "row")]
            for folder in dirs:
                folder.mkdir()
            append_us = journal_append_floor_us(dirs[0], flush_rows)
            load_us = commit_floor_us(dirs[1], load_rows)
            small_commit_us = commit_floor_us(dirs[2], 1) if other_commits_per_s else 0.0
            appends_ms_per_s = append_us / 1e3 / flush_s
            commits_ms_per_s = (load_us * loads_per_s + small_commit_us * other_commits_per_s) / 1e3
            storing = {
                "assumes": f"the journal: one append of {flush_rows} rows (write + "
                f"fdatasync) per flush ({flush_s:g} s); one DuckDB commit of {load_rows} "
                f"rows per journal load ({1 / loads_per_s:g} s); "
                f"{other_commits_per_s:.3f} other DuckDB commits/s (counted) of one row",
                "journal_append_cpu_us": append_us,
                "append_rows": flush_rows,
                "appends_ms_per_s": round(appends_ms_per_s, 2),
                "commit_of_one_load_cpu_us": load_us,
                "commit_rows": load_rows,
                "journal_loads_per_s": round(loads_per_s, 4),
                "journal_loads_per_s_counted": round(measured.get("journal_loads_per_s", 0), 4),
                "other_commits_per_s_counted": round(other_commits_per_s, 3),
                "commit_of_one_row_cpu_us": small_commit_us,
                "duckdb_commits_per_s": round(loads_per_s + other_commits_per_s, 3),
                "commits_ms_per_s": round(commits_ms_per_s, 2),
                "storing_ms_per_s": round(appends_ms_per_s + commits_ms_per_s, 2),
            }
    return {
        "rates_hz": measured["rates_hz"],
        "wakeups_alone": wakeups,
        **storing,
        "total_ms_per_s": round(wakeups["cpu_ms_per_s"] + storing["storing_ms_per_s"], 2),
    }


# -- figure 2: slowdown of the same in-process generation ----------------------------------

SLOTS = ("none", "greenmon_defaults", "codecarbon_1hz", "greenmon_1hz", "none_b")


def make_workload(prompts: int, new_tokens: int) -> Callable[[float], float]:
    """Serve gaissa-164 prompts on tiny with the torch engine (one thread) for a while:
    the median seconds per request."""
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)

    from greenmon.engines import get_engine
    from greenmon.models import resolve_model
    from greenmon.workload import load_workload

    model = resolve_model("tiny")
    chosen = load_workload("gaissa-164", model=model, limit=prompts)
    engine = get_engine("torch")
    engine.load(model, "cpu", {})
    for prompt in chosen:
        engine.generate([prompt], new_tokens)  # first-call allocations, every shape

    def serve(seconds: float) -> float:
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        index = 0
        while time.perf_counter() < deadline or len(times) < len(chosen):
            started = time.perf_counter()
            engine.generate([chosen[index % len(chosen)]], new_tokens)
            times.append(time.perf_counter() - started)
            index += 1
        return statistics.median(times)

    return serve


def _interval(values: list[float], seed: int = 17, resamples: int = 2000) -> list[float]:
    """95% bootstrap interval of the median of ``values``."""
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


def slowdown_per_tool(
    tools: list[str], rounds: int, slot_s: float, prompts: int, new_tokens: int
) -> dict[str, Any]:
    serve = make_workload(prompts, new_tokens)
    slots = [s for s in SLOTS if s in tools or s == "none_b"]
    per_round: dict[str, list[float]] = {slot: [] for slot in slots}
    with tempfile.TemporaryDirectory(prefix="greenmon-peers-") as workdir:
        for round_index in range(rounds):
            order = slots if round_index % 2 == 0 else list(reversed(slots))
            for slot in order:
                with running("none" if slot == "none_b" else slot, workdir):
                    time.sleep(0.5)  # let the tool settle into its steady state
                    per_round[slot].append(serve(slot_s))
    results: dict[str, Any] = {
        "median_request_ms_per_round": {
            slot: [round(1e3 * t, 3) for t in times] for slot, times in per_round.items()
        }
    }
    for slot in slots:
        if slot == "none":
            continue
        if slot == "none_b":
            # the noise floor: the same condition twice in a round
            paired = [
                100.0 * (1.0 - a / b)
                for a, b in zip(per_round["none"], per_round["none_b"], strict=True)
            ]
            name = "none_vs_none"
        else:
            paired = [
                100.0 * (1.0 - (a + b) / 2 / t)
                for a, b, t in zip(per_round["none"], per_round["none_b"], per_round[slot],
                                   strict=True)
            ]  # fmt: skip
            name = slot
        results[name] = {
            "slowdown_percent": round(statistics.median(paired), 3),
            "interval_95_percent": [round(v, 3) for v in _interval(paired)],
            "per_round_percent": [round(v, 3) for v in paired],
        }
    return results


def slowdown_aim(name: str, found: dict[str, Any] | None, missing: str | None = None) -> Any:
    """A slowdown is under 0.5% only when its 95% interval is: the upper end is the figure
    (a median of -0.1% inside [-9%, 17%] says nothing), the median beside it."""
    from _common import aim  # type: ignore[import-not-found]

    if not found:
        return aim(f"{name}, upper end of the 95% interval", None, "<", 0.5, "%",
                   why=missing or "not measured")  # fmt: skip
    low, high = found["interval_95_percent"]
    return aim(f"{name}, upper end of the 95% interval", high, "<", 0.5, "%",
               why=f"median {found['slowdown_percent']}%, interval [{low}, {high}]%")  # fmt: skip


def floor_text(found: dict[str, Any] | None) -> str:
    if not found:
        return ""
    wakeups = found["wakeups_alone"]
    head = (
        f"floors here (measured costs; rates as assumed: {found['assumes']}): "
        f"{wakeups['wakeups_per_s']} bare wake-ups/s cost {wakeups['cpu_ms_per_s']} ms/s"
    )
    if "journal_append_cpu_us" not in found:
        storing = (
            f"one commit of a flush ({found['commit_of_one_flush_cpu_us'] / 1e3:.1f} ms of "
            f"CPU) per flush interval {found['commits_ms_per_s']} ms/s"
        )
    else:
        storing = (
            f"journal appends ({found['journal_append_cpu_us'] / 1e3:.2f} ms of CPU each) "
            f"{found['appends_ms_per_s']} ms/s and {found['duckdb_commits_per_s']} DuckDB "
            f"commits/s (a load: {found['commit_of_one_load_cpu_us'] / 1e3:.1f} ms) "
            f"{found['commits_ms_per_s']} ms/s"
        )
    return f"{head}, {storing}: {found['total_ms_per_s']} ms/s before any read"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="monitoring per CPU figure")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved slowdown rounds")
    parser.add_argument("--slot-s", type=float, default=2.0, help="serving per slot")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_cpu(args.child, args.seconds)))
        return 0

    from _common import aim, machine  # type: ignore[import-not-found]

    missing = codecarbon_missing()
    tools = [t for t in TOOLS if not (missing and t.startswith("codecarbon"))]
    threads = threading.active_count()
    cpu = cpu_per_tool(tools, args.seconds)
    slowdown = slowdown_per_tool(tools, args.rounds, args.slot_s, args.prompts, args.new_tokens)
    report: dict[str, Any] = {
        "machine": machine(),
        "codecarbon": missing or f"codecarbon {__import__('codecarbon').__version__}, offline",
        "seconds_per_cpu_figure": args.seconds,
        "rounds": args.rounds,
        "slot_s": args.slot_s,
        "workload": f"tiny, torch/cpu, 1 thread, {args.prompts} prompts x {args.new_tokens} "
        "new tokens",
        "cpu": cpu,
        "slowdown": slowdown,
        "threads_before": threads,
    }
    cc = cpu.get("codecarbon_1hz", {}).get("cpu_ms_per_s")
    gm10 = cpu.get("greenmon_defaults", {}).get("cpu_ms_per_s")
    gm1 = cpu.get("greenmon_1hz", {}).get("cpu_ms_per_s")
    ratio = round(gm10 / cc, 3) if gm10 is not None and cc else None
    report["cpu_ratio_greenmon_defaults_to_codecarbon_1hz"] = ratio
    floor = slowdown["none_vs_none"]["interval_95_percent"]
    report["aims"] = [
        aim(
            "greenmon at its defaults: CPU / CodeCarbon 1 Hz CPU",
            ratio,
            "<=",
            1.0,
            why="" if ratio is not None else (missing or "a CPU figure failed"),
        ),
        aim("greenmon at its defaults: CPU, ms per s", gm10, "<=", cc if cc else 2.5, "ms/s",
            why="; ".join(filter(None, [
                "" if cc else "CodeCarbon absent: its published 2.5 ms/s used",
                floor_text(cpu.get("greenmon_defaults", {}).get("floors"))]))),
        aim("greenmon with every probe at 1 Hz: CPU / CodeCarbon 1 Hz CPU",
            round(gm1 / cc, 3) if gm1 is not None and cc else None, "<=", 0.5,
            why="" if cc else (missing or "a CPU figure failed")),
        aim("slowdown noise floor (none vs none, 95% interval half-width)",
            (floor[1] - floor[0]) / 2, "<", 0.5, "%"),
        slowdown_aim("greenmon at its defaults: slowdown", slowdown["greenmon_defaults"]),
        slowdown_aim("CodeCarbon 1 Hz slowdown (for comparison)",
                     slowdown.get("codecarbon_1hz"), missing),
    ]  # fmt: skip
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
