"""Runner benchmark: how much of a unit's wall time is greenmon's own bookkeeping.

A fake engine that sleeps for the work of each request (and times its own calls) runs a
plan inside the daemon with RAPL and host probes sampling.  Bookkeeping is what is left of
each unit's wall time once engine calls and cooldown sleeps are taken out: phase markers,
storing requests, thread hand-offs.  Prints JSON; aim: under 1%.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from _common import aim, machine  # type: ignore[import-not-found]

from greenmon.commands.run import run_experiment
from greenmon.engines.base import LoadInfo, Prompt, RequestRecord
from greenmon.plan import parse_plan
from greenmon.store import Store
from tests.fakes.engine import FakeEngine
from tests.fakes.rapl import standard_tree
from tests.support.plans import fake_plan

ENGINE_S: list[float] = []


class TimedEngine(FakeEngine):
    token_s = 0.005  # 16 tokens -> 80 ms per request, like a small model on a CPU

    def load(self, model: Any, provider: str, options: Any) -> LoadInfo:
        start = time.perf_counter()
        try:
            return super().load(model, provider, options)
        finally:
            ENGINE_S.append(time.perf_counter() - start)

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[RequestRecord]:
        start = time.perf_counter()
        try:
            return super().generate(prompts, max_new_tokens)
        finally:
            ENGINE_S.append(time.perf_counter() - start)

    def close(self) -> None:
        start = time.perf_counter()
        super().close()
        ENGINE_S.append(time.perf_counter() - start)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        standard_tree(Path(tmp) / "powercap")
        text = fake_plan(
            "bench-runner", configurations=["timed/cpu"], prompts=40, max_new_tokens=16,
            repetitions=3, seed=None, warmup_requests=2, cooldown_s=(1.0, 1.0),
            engines={"timed": "runner:TimedEngine"},
            probes={"rapl": {"sysfs_root": Path(tmp) / "powercap"}},
        )  # fmt: skip
        plan = parse_plan(text, Path("bench.toml"))
        db = Path(tmp) / "bench.duckdb"
        experiment_id, _ = anyio.run(
            lambda: run_experiment(plan, db, resume=False, force=True, quiet=True, reference=None)
        )
        with Store.open(db, read_only=True) as store:
            _, [(_unit_wall_s, cooldown_s)] = store.query(
                """SELECT sum(u.ended_ns - u.started_ns) / 1e9,
                          sum(p.end_ns - p.start_ns) FILTER (WHERE p.phase LIKE 'cooldown%') / 1e9
                   FROM units u JOIN phases p USING (experiment_id, unit_id)
                   WHERE experiment_id = ?""",
                [experiment_id],
            )
            _, [(measure_s, requests_s)] = store.query(
                """SELECT (SELECT sum(end_ns - start_ns) FROM phases
                           WHERE experiment_id = ? AND phase = 'measure') / 1e9,
                          (SELECT sum(end_ns - start_ns) FROM requests
                           WHERE experiment_id = ? AND phase = 'measure') / 1e9""",
                [experiment_id, experiment_id],
            )
            _, [(units_wall_s,)] = store.query(
                "SELECT sum(ended_ns - started_ns) / 1e9 FROM units WHERE experiment_id = ?",
                [experiment_id],
            )
    active_s = units_wall_s - cooldown_s
    # The plan imports this file as module "runner" (custom_engines), not as __main__.
    import runner as imported  # type: ignore[import-not-found]

    engine_s = sum(imported.ENGINE_S)
    print(
        json.dumps(
            {
                "benchmark": "runner",
                "machine": machine(),
                "units": 3,
                "units_wall_s": round(units_wall_s, 3),
                "cooldown_s": round(cooldown_s, 3),
                "engine_s": round(engine_s, 3),
                "bookkeeping_s": round(active_s - engine_s, 4),
                "bookkeeping_share_of_active_percent": round(
                    100 * (active_s - engine_s) / active_s, 3
                ),
                # inside the measured window only: what the energy figures actually cover
                "measure_s": round(measure_s, 3),
                "measure_overhead_percent": round(100 * (measure_s - requests_s) / measure_s, 3),
                "bookkeeping_share_of_unit_percent": round(
                    100 * (active_s - engine_s) / units_wall_s, 3
                ),
                "aims": [
                    aim(
                        "runner bookkeeping share of active time",
                        100 * (active_s - engine_s) / active_s,
                        "<",
                        1.0,
                        "%",
                    )
                ],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
