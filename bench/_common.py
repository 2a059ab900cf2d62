"""Shared helpers for benchmarks: machine description and process CPU accounting."""

from __future__ import annotations

import os
import platform
import select
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine() -> dict[str, Any]:
    from greenmon.hostinfo import cpu_model

    return {
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "cores_logical": psutil.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "load_avg_1m": os.getloadavg()[0],
    }


class CpuMeter:
    """This process's CPU time (user + system) over wall time, as % of one core."""

    def __enter__(self) -> CpuMeter:
        self._proc = psutil.Process()
        times = self._proc.cpu_times()
        self._cpu0 = times.user + times.system
        self._wall0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        times = self._proc.cpu_times()
        self.cpu_s = times.user + times.system - self._cpu0
        self.wall_s = time.monotonic() - self._wall0
        self.core_percent = 100.0 * self.cpu_s / self.wall_s


def aim(
    name: str, figure: float | None, op: str, target: float, unit: str = "", why: str = ""
) -> dict[str, Any]:
    """One aim beside its figure: ``op`` is "<", "<=", ">" or ">="; ``met`` is None when
    the figure could not be measured (``why`` says why).  bench/run_all prints these."""
    met: bool | None = None
    if figure is not None:
        met = {
            "<": figure < target,
            "<=": figure <= target,
            ">": figure > target,
            ">=": figure >= target,
        }[op]
    row: dict[str, Any] = {
        "aim": name,
        "figure": None if figure is None else round(figure, 4),
        "target": f"{op} {target:g}{(' ' + unit) if unit else ''}",
        "met": met,
    }
    if why:
        row["why"] = why
    return row


# -- floors: what this machine charges before a sampler does any work -------------


def wakeup_floor_ms_per_s(rates_hz: list[float], seconds: float = 10.0) -> dict[str, float]:
    """A thread that only sleeps to the same deadlines as the shared sampling thread (the
    union of every rate's ticks, one wake-up per distinct deadline, ``select`` on a pipe as
    ``sampling._Waker``) and does nothing else: what waking alone costs on this machine."""
    periods_ns = [round(1e9 / rate) for rate in rates_hz]
    read_fd, write_fd = os.pipe()
    wakeups = 0

    def loop() -> None:
        nonlocal wakeups
        t0 = time.monotonic_ns()
        ticks = [1] * len(periods_ns)
        end = t0 + int(seconds * 1e9)
        while True:
            due = min(t0 + k * p for k, p in zip(ticks, periods_ns, strict=True))
            if due > end:
                return
            delay_ns = due - time.monotonic_ns()
            if delay_ns > 0:
                select.select([read_fd], [], [], delay_ns / 1e9)
            wakeups += 1
            for i, period in enumerate(periods_ns):
                if t0 + ticks[i] * period <= due:
                    ticks[i] += 1

    cpu_s: list[float] = []

    def measured() -> None:
        loop()
        cpu_s.append(time.thread_time())

    thread = threading.Thread(target=measured)
    thread.start()
    thread.join()
    os.close(read_fd)
    os.close(write_fd)
    return {
        "wakeups_per_s": round(wakeups / seconds, 1),
        "cpu_ms_per_s": round(cpu_s[0] * 1e3 / seconds, 2),
        "cpu_us_per_wakeup": round(cpu_s[0] * 1e6 / max(1, wakeups), 1),
    }


def commit_floor_us(workdir: Path, rows: int, commits: int = 20) -> float:
    """Median CPU of one flush of ``rows`` samples into a fresh file (``Store.write``: one
    INSERT, one commit), a tenth of a second apart as the daemon's flushes are."""
    import numpy as np

    from greenmon.store import SampleBatch, Store

    costs: list[int] = []
    with Store.open(workdir / "commit-floor.duckdb") as store:
        session = "floor"
        for index in range(commits + 3):
            t_ns = np.arange(rows, dtype=np.int64) + index * rows
            batch = SampleBatch.from_columns(
                np.ones(rows, dtype=np.int32), t_ns, np.random.default_rng(index).random(rows)
            )
            time.sleep(0.1)
            started = time.thread_time_ns()
            store.write(batch, [], session)
            if index >= 3:  # the first commits warm DuckDB up
                costs.append(time.thread_time_ns() - started)
    costs.sort()
    return round(costs[len(costs) // 2] / 1e3, 1)


def journal_append_floor_us(workdir: Path, rows: int, appends: int = 20) -> float:
    """Median CPU of one hand-off of ``rows`` samples into the sample journal
    (``SampleJournal.append``: one frame encoded, written and fdatasync'd, no DuckDB
    commit), a tenth of a second apart: what a flush costs the daemon since the journal."""
    import numpy as np

    from greenmon.store import SampleBatch, SampleJournal

    costs: list[int] = []
    journal = SampleJournal(workdir / "append-floor.duckdb.journal", 1)
    try:
        for index in range(appends + 3):
            t_ns = np.arange(rows, dtype=np.int64) + index * rows
            batch = SampleBatch.from_columns(
                np.ones(rows, dtype=np.int32), t_ns, np.random.default_rng(index).random(rows)
            )
            time.sleep(0.1)
            started = time.thread_time_ns()
            journal.append(batch)
            if index >= 3:  # as commit_floor_us: the first appends warm the file up
                costs.append(time.thread_time_ns() - started)
    finally:
        journal.close()
    costs.sort()
    return round(costs[len(costs) // 2] / 1e3, 1)
