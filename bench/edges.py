"""Edge reads against a stepping counter: is a window's energy the counter's difference at
its edges, and what would interpolation between polls have given?

A fake powercap tree whose package counter a thread here advances every millisecond at
the current power: 10 W, and 60 W from just after each window opens until just before it
closes (the steps interpolation between polls spreads over a poll interval).  The fake
logs every value it writes, with the monotonic time just after the write, so the truth
of a window is the logged counter at its end edge minus the logged counter at its start
edge.  RAPL is polled at its default rate; windows of 0.1-2 s are opened and closed through
``Monitor`` (the API, in-process daemon), as a user would.

Then the same windows are computed again with the edge samples removed from a copy of the
file: what interpolating the polls around each edge gives (what greenmon did before edge
reads, and what an EnergiBridge stream still gets).

Prints JSON: per window its duration, truth, the figure greenmon returned and its
error in % of the window's energy, the interpolated figure and its error; and ``aims``:
the largest edge-read error <= 0.1%.  Usage: ``bench/run_all --only edges`` or
``PYTHONPATH=bench:. python bench/edges.py [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import aim, machine  # type: ignore[import-not-found]

from greenmon.monitor import Monitor
from greenmon.probes.rapl import RaplProbe
from greenmon.store import Store
from tests.fakes.rapl import FakeRaplTree, FakeZone

DURATIONS_S = (0.1, 0.2, 0.5, 1.0, 2.0)
IDLE_W = 10.0
BUSY_W = 60.0
TICK_S = 0.001
# The steps fall this far inside the edges.
INSIDE_S = 0.002


class SteppingCounter:
    """Advances a fake zone every ``TICK_S`` at ``IDLE_W``, or ``BUSY_W`` while ``busy`` is
    set; logs (t_ns after the write, value written) for every write."""

    def __init__(self, zone: FakeZone) -> None:
        self.zone = zone
        self.busy = threading.Event()
        self.stop = threading.Event()
        self.t_ns: list[int] = []
        self.values: list[int] = []
        self._carry_uj = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic_ns()
        self._log()
        while not self.stop.is_set():
            time.sleep(TICK_S)
            now = time.monotonic_ns()
            watts = BUSY_W if self.busy.is_set() else IDLE_W
            self._carry_uj += watts * (now - last) / 1e3
            last = now
            whole = int(self._carry_uj)
            self._carry_uj -= whole
            self.zone.advance(whole)
            self._log()

    def _log(self) -> None:
        self.t_ns.append(time.monotonic_ns())
        self.values.append(self.zone.value_uj)

    def value_at(self, t_ns: int) -> int:
        """The counter as it stood at ``t_ns`` (the last value logged at or before it)."""
        index = bisect.bisect_right(self.t_ns, t_ns) - 1
        return self.values[max(index, 0)]

    def __enter__(self) -> SteppingCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join()


CONFIG = """
[probes.rapl]
sysfs_root = "{root}"
[probes.host]
enabled = false
[probes.nvml]
enabled = false
[probes.estimate]
enabled = false
[probes.energibridge]
enabled = false
"""


def run(repeats: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gm-edges-"))
    try:
        tree = FakeRaplTree(work / "powercap")
        zone = tree.add_zone("intel-rapl:0", "package-0", start_uj=7_000_000)
        config = work / "greenmon.toml"
        config.write_text(CONFIG.format(root=work / "powercap"))
        db = work / "edges.duckdb"
        os.environ["GREENMON_SOCKET"] = str(work / "d.sock")
        windows: list[tuple[int, float]] = []
        with SteppingCounter(zone) as counter, Monitor(db=db, config=config) as m:
            time.sleep(0.5)
            for _ in range(repeats):
                for duration_s in DURATIONS_S:
                    with m.window("step", duration_s=duration_s) as w:
                        time.sleep(INSIDE_S)
                        counter.busy.set()
                        time.sleep(duration_s - 2 * INSIDE_S)
                        counter.busy.clear()
                        time.sleep(INSIDE_S)
                    windows.append((w.window_id, duration_s))
        rows = _figures(db, counter, windows)
        # The same windows with the edge samples removed: interpolation between polls.
        copy = work / "interpolated.duckdb"
        shutil.copy(db, copy)
        with Store.open(copy) as store:
            store.execute(
                "DELETE FROM samples WHERE t_ns IN "
                "(SELECT start_ns FROM windows UNION SELECT end_ns FROM windows)"
            )
            _, got = store.query("SELECT window_id, energy_cpu_j FROM window_results")
        interpolated = {int(i): float(e) for i, e in got}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        figure = interpolated.get(row["window_id"])
        row["interpolated_j"] = figure
        row["interpolated_error_percent"] = (
            None if figure is None else 100.0 * abs(figure - row["truth_j"]) / row["truth_j"]
        )
    edge_errors = [r["error_percent"] for r in rows]
    interp_errors = [
        r["interpolated_error_percent"] for r in rows if r["interpolated_error_percent"] is not None
    ]
    worst = max(edge_errors)
    return {
        "rapl_poll_hz": RaplProbe.default_rate_hz,
        "power_w": {"idle": IDLE_W, "busy_inside_edges": BUSY_W},
        "steps_inside_edges_s": INSIDE_S,
        "windows": rows,
        "edge_read_error_percent_max": worst,
        "interpolated_error_percent_max": max(interp_errors) if interp_errors else None,
        "machine": machine(),
        "aims": [
            aim(
                "window energy = counter difference at the edges (stepping counter, "
                "windows 0.1-2 s): largest error",
                worst,
                "<=",
                0.1,
                "% of the window's energy",
                why=f"interpolating the polls instead: up to "
                f"{max(interp_errors) if interp_errors else float('nan'):.2f}%",
            )
        ],
    }


def _figures(
    db: Path, counter: SteppingCounter, windows: list[tuple[int, float]]
) -> list[dict[str, Any]]:
    with Store.open(db, read_only=True) as store:
        _, got = store.query(
            "SELECT window_id, start_ns, end_ns, energy_cpu_j, interpolated_domains "
            "FROM window_results"
        )
    by_id = {int(r[0]): r for r in got}
    rows = []
    for window_id, duration_s in windows:
        _, start_ns, end_ns, energy_j, interpolated = by_id[window_id]
        truth_j = (counter.value_at(end_ns) - counter.value_at(start_ns)) * 1e-6
        rows.append(
            {
                "window_id": window_id,
                "duration_s": duration_s,
                "truth_j": truth_j,
                "edge_read_j": energy_j,
                "error_percent": 100.0 * abs(energy_j - truth_j) / truth_j,
                "interpolated_domains": list(interpolated or []),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(run(args.repeats), indent=2))


if __name__ == "__main__":
    main()
