"""The study at full scale: one file holding 12 models x 7 configurations x 10 repetitions
(840 units) over about 100 million samples, and what greenmon costs on it.

Builds the campaign synthetically through tests/support/synthetic.py (the same writer
the tests use: session, experiment, units in a seeded shuffled order, phases, requests,
channels, and raw samples generated inside DuckDB in time order, as the daemon appends
them), then times, each in a fresh process where a user would run a command:

- ``bookkeeping_s``: the runner's work when unit 840 ends: materialising the finished
  units' results and its live summary from the same pass over their samples
  (``greenmon.runner.unit_end_summary_rows``, as ``ExperimentRunner`` calls it), the
  other 839 units having been materialised as they ended.  Aim < 1 s.
- ``analyze_s`` (``greenmon analyze --json``, aim < 30 s), ``report_s`` (``greenmon
  report``, aim < 60 s), ``export_s`` (``greenmon export --format parquet``), and the
  file's size after a checkpoint (aim < 2 GB).

100 hours at the default rates (host 10 Hz x 10 channels, RAPL 50 Hz x 2, NVML 20 Hz x 4,
NETIO 2 Hz) is about 100 million samples; ``--scale 0.1`` builds a tenth of the samples
(the 840 units stay) for a quick run.  Prints JSON with an ``aims`` list.

Usage: ``python bench/scale.py [--scale F] [--db PATH (kept and reused)]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, aim, machine  # type: ignore[import-not-found]

from greenmon.runner import summary_rows, unit_end_summary_rows
from greenmon.store import Store
from tests.support.synthetic import (
    STUDY_CONFIGURATIONS,
    synthetic_results,
    write_synthetic_experiment,
)

MODELS, REPETITIONS, CHANNELS = 12, 10, 9
STUDY_SAMPLES = 100_000_000
EXPERIMENT = "study"


def build(path: Path, samples: int) -> float:
    truth = synthetic_results(
        models=MODELS, configurations=STUDY_CONFIGURATIONS, repetitions=REPETITIONS, gpu=True,
        noise="normal", relative_sd=0.05, seed=2024, experiment_id=EXPERIMENT,
    )  # fmt: skip
    started = time.monotonic()
    with Store.open(path) as store:
        write_synthetic_experiment(
            store, truth, samples_per_channel_unit=max(8, samples // (len(truth) * CHANNELS))
        )
        store.con.execute("CHECKPOINT")
    return time.monotonic() - started


def bookkeeping(path: Path) -> dict[str, Any]:
    """Unit 840 has just ended: what the runner does before it starts unit 841."""
    with Store.open(path) as store:
        (last_unit,) = store.execute(
            "SELECT max(unit_id) FROM units WHERE experiment_id = ?", [EXPERIMENT]
        )[0]
        materialise = getattr(store, "materialise_unit_results", None)
        figures: dict[str, Any] = {"materialised": materialise is not None}
        if materialise is not None:
            # units 1..839 were materialised as each ended (untimed: that was their own
            # unit end); unit 840 ends now (a reused --db forgets its row first)
            store.execute(
                "DELETE FROM unit_results_done WHERE experiment_id = ? AND unit_id = ?",
                [EXPERIMENT, last_unit],
            )
            started = time.monotonic()
            materialise(EXPERIMENT, except_unit=last_unit)
            figures["materialise_839_units_s"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        if materialise is not None:
            rows = unit_end_summary_rows(store, EXPERIMENT)
        else:
            rows = summary_rows(store, EXPERIMENT)
        figures["bookkeeping_s"] = time.monotonic() - started
        figures["summary_configurations"] = len(rows)
        figures["summary_units"] = sum(r.units for r in rows)
    return figures


def timed(args: list[str], cwd: Path) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "greenmon.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"greenmon {' '.join(args)} failed: {done.stderr[-2000:]}")
    return elapsed, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    figures: dict[str, Any] = {"benchmark": "scale", "scale": args.scale}
    with tempfile.TemporaryDirectory(prefix="greenmon-scale-") as tmp:
        work = Path(tmp)
        path = args.db or work / "study.duckdb"
        if not path.exists():
            figures["build_s"] = round(build(path, int(STUDY_SAMPLES * args.scale)), 1)
        with Store.open(path, read_only=True) as store:
            figures["samples"] = store.execute("SELECT count(*) FROM samples")[0][0]
            figures["units"] = store.execute("SELECT count(*) FROM units")[0][0]
            figures["sampled_hours"] = round(
                store.execute("SELECT (max(t_ns) - min(t_ns)) / 3.6e12 FROM samples")[0][0], 1
            )
        figures.update(bookkeeping(path))
        figures["analyze_s"], _ = timed(["analyze", "--db", str(path), "--json"], work)
        figures["report_s"], _ = timed(
            ["report", "--db", str(path), "--out", str(work / "report")], work
        )
        figures["export_s"], _ = timed(
            ["export", "--db", str(path), "--format", "parquet", "--out", str(work / "export")],
            work,
        )
        with Store.open(path) as store:
            store.con.execute("CHECKPOINT")
        figures["file_bytes"] = path.stat().st_size
        figures["file_gb"] = round(path.stat().st_size / 1e9, 3)
    for key in ("bookkeeping_s", "analyze_s", "report_s", "export_s"):
        figures[key] = round(figures[key], 2)
    note = "" if args.scale == 1.0 else f"at --scale {args.scale:g}, not the study's size"
    figures["aims"] = [
        aim("unit bookkeeping at unit 840", figures["bookkeeping_s"], "<", 1.0, "s", note),
        aim("analyze at study scale", figures["analyze_s"], "<", 30.0, "s", note),
        aim("report at study scale", figures["report_s"], "<", 60.0, "s", note),
        aim("file size at study scale", figures["file_gb"], "<", 2.0, "GB", note),
    ]
    figures["machine"] = machine()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
