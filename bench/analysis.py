"""Analysis benchmark: `greenmon analyze` on the study's design with 100 million samples.

Builds a synthetic experiment of 12 models x 7 configurations x 10 repetitions (840 units)
whose raw samples total ``--samples`` (default 100 million) over nine channels (RAPL CPU and
DRAM counters, an NVML energy counter and three NVML utilisation gauges, a NETIO power
gauge, host CPU and RAM gauges), so the ``unit_results`` view computes every unit from
samples.  Then times `greenmon analyze` end to end in a fresh process (imports, view,
tests, table writes), and in this process its parts.  Prints JSON.  Aim: < 30 s.

Usage: python bench/analysis.py [--samples N] [--db PATH (kept and reused)]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, aim, machine  # type: ignore[import-not-found]

from greenmon.store import Store
from tests.support.synthetic import (
    STUDY_CONFIGURATIONS,
    synthetic_results,
    write_synthetic_experiment,
)

MODELS, REPETITIONS, CHANNELS = 12, 10, 9


def build(path: Path, samples: int) -> dict[str, float]:
    truth = synthetic_results(
        models=MODELS, configurations=STUDY_CONFIGURATIONS, repetitions=REPETITIONS, gpu=True,
        noise="normal", relative_sd=0.05, seed=2024, experiment_id="bench",
    )  # fmt: skip
    per_channel_unit = samples // (len(truth) * CHANNELS)
    started = time.monotonic()
    with Store.open(path) as store:
        write_synthetic_experiment(store, truth, samples_per_channel_unit=per_channel_unit)
        store.con.execute("CHECKPOINT")
    return {"build_s": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=100_000_000)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "bench.duckdb"
        figures: dict[str, object] = {}
        if not path.exists():
            figures.update(build(path, args.samples))
        with Store.open(path, read_only=True) as store:
            (count,) = store.query("SELECT count(*) FROM samples")[1][0]
            units = store.query("SELECT count(*) FROM units")[1][0][0]
        command = [sys.executable, "-m", "greenmon.cli", "analyze", "--db", str(path), "--json"]
        started = time.monotonic()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
        figures["analyze_cli_s"] = time.monotonic() - started
        result = json.loads(done.stdout)

        from greenmon.analysis.data import load_results
        from greenmon.analysis.stats import analyze_frame
        from greenmon.analysis.tables import write_tables

        started = time.monotonic()
        import pingouin  # noqa: F401
        import scikit_posthocs  # noqa: F401

        figures["import_s"] = time.monotonic() - started
        with Store.open(path) as store:
            started = time.monotonic()
            frame = load_results(store, "bench")
            figures["unit_results_view_s"] = time.monotonic() - started
            started = time.monotonic()
            analysed = analyze_frame(frame, "bench")
            figures["statistics_s"] = time.monotonic() - started
            started = time.monotonic()
            write_tables(store, analysed)
            figures["write_tables_s"] = time.monotonic() - started
        tests = result["tables"]["tests"]
        print(json.dumps({
            "benchmark": "analysis",
            "samples": count,
            "units": units,
            "variables": len(result["variables"]),
            "scopes_tested": len(tests),
            "welch_anova_scopes": sum(t["test"] == "welch-anova" for t in tests),
            "kruskal_scopes": sum(t["test"] == "kruskal-wallis" for t in tests),
            "posthoc_pairs": len(result["tables"]["posthoc"]),
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()},
            "aim_s": 30,
            "aims": [aim(f"analyze over {count} samples", figures["analyze_cli_s"], "<", 30,
                         "s")],
            "machine": machine(),
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
