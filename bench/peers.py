"""greenmon side by side with CodeCarbon: what monitoring costs, and what it does to the
workload it watches.  Prints JSON.

Two figures per tool, measured on this machine in one run:

- ``cpu_ms_per_s``: CPU time (user + system, every thread) the tool's process spends per
  second of monitoring, each tool alone in its own process (so CPU accounting is per
  tool), counted from when the tool has started to just before it is stopped, minus an
  idle process's share.  CodeCarbon at 1 Hz (``measure_power_secs = 1``, offline, its CSV
  written to a temporary directory); greenmon at 1 Hz (every probe at 1 Hz) and at its
  defaults (host 10 Hz, the estimate and RAPL where present), writing a DuckDB file.
- ``tokens_per_s``: the embedded ``tiny`` model served by greenmon's torch engine (same
  prompts, same token count) with the tool running *in the same process*, in rounds that
  alternate none / codecarbon / greenmon 1 Hz / greenmon 10 Hz; medians over rounds.

Ratios: ``cpu_ratio_greenmon_10hz_to_codecarbon_1hz`` (the issue's aim: at most 1) and
``slowdown_percent`` per tool (1 - tokens/s with the tool / without, in %; aim: under 1 for
greenmon).  On a shared machine read ``machine.load_avg_1m``: other processes' load widens
the spread of the slowdown figures, which are differences of a few percent.

CodeCarbon is installed only for this benchmark (``pip install codecarbon``; it is not a
greenmon dependency).  Without it the CodeCarbon figures are null and ``codecarbon``
says why.  Usage: ``bench/run_all --only peers`` or
``PYTHONPATH=bench:. python bench/peers.py [--seconds 20] [--rounds 10]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOOLS = ("none", "codecarbon_1hz", "greenmon_1hz", "greenmon_10hz")
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
def greenmon_running(config_text: str, db_dir: str) -> Iterator[None]:
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
                yield
            finally:
                portal.call(daemon.request_stop)
                future.result()
    finally:
        store.close()


def running(tool: str, workdir: str) -> contextlib.AbstractContextManager[None]:
    if tool == "none":
        return contextlib.nullcontext()
    if tool == "codecarbon_1hz":
        return codecarbon_running(workdir)
    if tool == "greenmon_1hz":
        return greenmon_running(GREENMON_1HZ, workdir)
    if tool == "greenmon_10hz":
        return greenmon_running("", workdir)  # greenmon's defaults
    raise ValueError(tool)


# -- figure 1: CPU per second of monitoring, one process per tool --------------------------


def child_cpu(tool: str, seconds: float) -> dict[str, float]:
    """In a child process: this process's CPU while ``tool`` monitors for ``seconds``."""
    with tempfile.TemporaryDirectory(prefix="greenmon-peers-") as workdir, running(tool, workdir):
        # Counted once the tool runs, so imports and start-up are not charged to it; the
        # process CPU clock has ns resolution (psutil's cpu_times counts 10 ms ticks).
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
    return {"cpu_s": cpu_s, "wall_s": wall_s}


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
    idle = results.get("none", {}).get("cpu_ms_per_s", 0.0)
    for tool in tools:
        if "cpu_ms_per_s" in results[tool]:
            raw = results[tool]["cpu_ms_per_s"]
            results[tool] = {
                "cpu_ms_per_s": round(max(0.0, raw - idle), 3),
                "cpu_ms_per_s_raw": round(raw, 3),
                "core_percent": round(max(0.0, raw - idle) / 10.0, 3),
            }
    return results


# -- figure 2: slowdown of the same in-process generation ----------------------------------


def make_workload(prompts: int, new_tokens: int) -> Callable[[], float]:
    """Serve ``prompts`` prompts of gaissa-164 on tiny with the torch engine: tokens/s."""
    from greenmon.engines import get_engine
    from greenmon.models import resolve_model
    from greenmon.workload import load_workload

    model = resolve_model("tiny")
    chosen = load_workload("gaissa-164", model=model, limit=prompts)
    engine = get_engine("torch")
    engine.load(model, "cpu", {})
    engine.generate(chosen[:1], new_tokens)  # first-call allocations

    def serve() -> float:
        started = time.perf_counter()
        tokens = 0
        for prompt in chosen:
            (record,) = engine.generate([prompt], new_tokens)
            tokens += record.tokens_out
        return tokens / (time.perf_counter() - started)

    return serve


def slowdown_per_tool(
    tools: list[str], rounds: int, prompts: int, new_tokens: int
) -> dict[str, Any]:
    serve = make_workload(prompts, new_tokens)
    rates: dict[str, list[float]] = {tool: [] for tool in tools}
    with tempfile.TemporaryDirectory(prefix="greenmon-peers-") as workdir:
        for round_index in range(rounds):
            # Alternate the order too, so a drift in the machine favours no tool.
            order = tools if round_index % 2 == 0 else list(reversed(tools))
            for tool in order:
                with running(tool, workdir):
                    time.sleep(0.5)  # let the tool settle into its steady state
                    rates[tool].append(serve())
    baseline = statistics.median(rates["none"])
    results: dict[str, Any] = {}
    for tool in tools:
        median = statistics.median(rates[tool])
        results[tool] = {
            "tokens_per_s_median": round(median, 2),
            "tokens_per_s_rounds": [round(r, 2) for r in rates[tool]],
        }
        if tool != "none":
            results[tool]["slowdown_percent"] = round(100.0 * (1.0 - median / baseline), 2)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="monitoring per CPU figure")
    parser.add_argument("--rounds", type=int, default=10, help="alternating slowdown rounds")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_cpu(args.child, args.seconds)))
        return 0

    from _common import machine  # type: ignore[import-not-found]

    missing = codecarbon_missing()
    tools = [t for t in TOOLS if not (missing and t.startswith("codecarbon"))]
    threads = threading.active_count()
    cpu = cpu_per_tool(tools, args.seconds)
    slowdown = slowdown_per_tool(tools, args.rounds, args.prompts, args.new_tokens)
    report: dict[str, Any] = {
        "machine": machine(),
        "codecarbon": missing or f"codecarbon {__import__('codecarbon').__version__}, offline",
        "seconds_per_cpu_figure": args.seconds,
        "rounds": args.rounds,
        "workload": f"tiny, torch/cpu, {args.prompts} prompts x {args.new_tokens} new tokens",
        "cpu": cpu,
        "generation": slowdown,
        "threads_before": threads,
    }
    ratios: dict[str, Any] = {}
    cc = cpu.get("codecarbon_1hz", {}).get("cpu_ms_per_s")
    for tool in ("greenmon_1hz", "greenmon_10hz"):
        gm = cpu.get(tool, {}).get("cpu_ms_per_s")
        ratios[f"cpu_ratio_{tool}_to_codecarbon_1hz"] = (
            round(gm / cc, 3) if gm is not None and cc else None
        )
    for tool in tools:
        if tool != "none":
            ratios[f"tokens_per_s_ratio_{tool}_to_none"] = round(
                slowdown[tool]["tokens_per_s_median"] / slowdown["none"]["tokens_per_s_median"], 4
            )
    report["ratios"] = ratios
    report["aims"] = {
        "greenmon_10hz_cpu_at_most_codecarbon_1hz": (
            None
            if ratios.get("cpu_ratio_greenmon_10hz_to_codecarbon_1hz") is None
            else ratios["cpu_ratio_greenmon_10hz_to_codecarbon_1hz"] <= 1.0
        ),
        "greenmon_10hz_slowdown_under_1_percent": slowdown["greenmon_10hz"]["slowdown_percent"]
        < 1.0,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
