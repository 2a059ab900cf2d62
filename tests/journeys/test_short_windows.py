"""Short units measured by the estimate alone are not flagged short when they are resolved.

`greenmon run` (a separate process, its own daemon) runs a plan whose measures last about
two thirds of a second, with the CPU's energy from the estimate probe polled at its default
1 Hz, as on a machine with no RAPL and no GPU.  The estimate is read at every phase edge,
so its figure over each measure is exact between those reads, to the kernel's tick its
utilisation is counted in: no unit may come out ``short_window`` or
``short_steady_state`` for being shorter than five 1 s polls (`greenmon sql` reads the
stored flags).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from greenmon.probes.procstat import tick_ns
from tests.journeys.test_journeys import greenmon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PLAN = """
name = "short"
models = ["tiny"]
configurations = ["fake/cpu", "fake2/cpu"]
workload = "gaissa-164"
prompts = 40
max_new_tokens = 8
repetitions = 2
seed = 5
warmup_requests = 1
custom_engines = { fake = "tests.fakes.engine:FakeEngine", fake2 = "tests.fakes.engine:FakeEngine" }

[cooldown]
before_s = 0.3
after_s = 0.1

[probes.rapl]
enabled = false
[probes.nvml]
enabled = false
[probes.amdsmi]
enabled = false
[probes.energibridge]
enabled = false
"""


def test_estimate_only_short_units_are_not_flagged_short(tmp_path: Path) -> None:
    plan = tmp_path / "short.toml"
    plan.write_text(PLAN)
    db = tmp_path / "s.duckdb"
    greenmon("run", str(plan), "--db", str(db), "--quiet", cwd=tmp_path)
    done = greenmon(
        "sql", "--db", str(db), "--json",
        "SELECT unit_id, duration_s, steady_s, max_period_ns, steady_period_ns, flags "
        "FROM unit_results ORDER BY unit_id",
        cwd=tmp_path,
    )  # fmt: skip
    rows = json.loads(done.stdout)
    assert len(rows) == 4, rows
    for row in rows:
        # 40 prompts x 8 tokens x 2 ms: shorter than five 1 s polls, far longer than five ticks
        assert 0.5 < row["duration_s"] < 5.0, row
        assert "estimated" in row["flags"], row
        assert not {"short_window", "short_steady_state"} & set(row["flags"]), row
        # judged by the tick, or by how far an edge lies from a read: the measure's start
        # read can come back empty (no tick since the previous phase's end was read, a few
        # ms before), and the steady state's edges are request times next to those reads
        for period_ns in (row["max_period_ns"], row["steady_period_ns"]):
            assert tick_ns() <= period_ns < 100_000_000, row
