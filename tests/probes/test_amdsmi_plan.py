"""A plan run with the fake amdsmi module: each unit's GPU energy comes from the AMD
counter, read at the phase edges, against the fake's own log of what it returned."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from greenmon.commands.run import run_experiment
from greenmon.plan import parse_plan
from greenmon.store import Store
from tests.fakes import amdsmi as fake
from tests.fakes.engine import PoweredRapl

PLAN = """
name = "amd-energy"
models = ["tiny"]
configurations = ["fake/cpu"]
workload = "gaissa-164"
prompts = 4
max_new_tokens = 16
repetitions = 2
seed = 5
warmup_requests = 1
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine" }}

[cooldown]
before_s = 0.3
after_s = 0.1

[probes.amdsmi]
module = "tests.fakes.amdsmi:logged"
rate_hz = 20
counter_check_s = 0.2

[probes.rapl]
rate_hz = 50
sysfs_root = "{root}"

[probes.host]
enabled = false
"""


@pytest.fixture
def power(tmp_path: Path) -> Iterator[PoweredRapl]:
    source = PoweredRapl(tmp_path / "powercap", 5.0).start()
    yield source
    source.stop()


def counter_at(log: list[tuple[float, float]], t_s: float) -> float:
    """The fake's counter (uJ) at ``t_s``, linear between the reads around it."""
    times = [t for t, _ in log]
    i = min(max(bisect.bisect_right(times, t_s), 1), len(log) - 1)
    (t0, e0), (t1, e1) = log[i - 1], log[i]
    return e0 + (e1 - e0) * (t_s - t0) / (t1 - t0)


@pytest.mark.slow
def test_a_plans_gpu_energy_comes_from_the_amd_counter(tmp_path: Path, power: PoweredRapl) -> None:
    fake.INSTANCES.clear()
    plan = parse_plan(PLAN.format(root=power.tree.root), Path("amd.toml"))
    db = tmp_path / "run.duckdb"
    experiment_id, _ = anyio.run(
        lambda: run_experiment(
            plan,
            db,
            resume=False,
            force=False,
            quiet=True,
            reference=None,
            engine_kwargs={"power": power},
        )
    )
    [module] = fake.INSTANCES
    gpu = module.gpus[0]
    log = [(t, raw * gpu.counter_resolution_uj) for t, raw in gpu.log]
    with Store.open(db, read_only=True) as store:
        _, sources = store.query("SELECT probe, name FROM energy_sources WHERE domain = 'gpu'")
        _, stored = store.query(
            "SELECT s.value FROM samples s JOIN channels c USING (channel_id) "
            "WHERE c.name = 'gpu0.energy_uj'"
        )
        _, units = store.query(
            """SELECT r.unit_id, r.energy_gpu_j, p.start_ns, p.end_ns
               FROM unit_results r JOIN phases p USING (experiment_id, unit_id, attempt)
               WHERE r.experiment_id = ? AND p.phase = 'measure' ORDER BY r.unit_id""",
            [experiment_id],
        )
    assert sources == [("amdsmi", "gpu0.energy_uj")]
    # every stored counter value is one the fake returned: the counter itself is stored
    returned = {energy for _, energy in log}
    assert stored and all(value in returned for (value,) in stored)
    assert len(units) == 2
    for _unit, energy_j, start_ns, end_ns in units:
        truth_j = (counter_at(log, end_ns / 1e9) - counter_at(log, start_ns / 1e9)) * 1e-6
        # a sample is stamped at the middle of the whole read, the fake's log inside it:
        # microseconds apart at 300 W
        assert energy_j == pytest.approx(truth_j, rel=5e-3)
        assert energy_j == pytest.approx(300.0 * (end_ns - start_ns) / 1e9, rel=2e-2)
