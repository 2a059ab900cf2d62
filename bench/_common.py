"""Shared helpers for benchmarks: machine description and process CPU accounting."""

from __future__ import annotations

import os
import platform
import sys
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
