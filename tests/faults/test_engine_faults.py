"""An engine that raises, runs out of memory, or hangs past ``unit_timeout_s``.

Two configurations alternate in a seeded order: ``fake/cpu`` works, ``bad/cpu`` fails one
way.  What must be kept: each bad unit is failed with the reason, every unit after it
still runs (the good units all finish with their requests), and the experiment ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from greenmon.commands.run import run_experiment
from greenmon.plan import parse_plan
from greenmon.store import Store
from tests.fakes.engine import HANG_RELEASE
from tests.fakes.rapl import standard_tree

PLAN = """
name = "engine-{case}"
models = ["tiny"]
configurations = ["fake/cpu", "bad/cpu"]
workload = "gaissa-164"
prompts = 2
max_new_tokens = 8
repetitions = 2
seed = 11
warmup_requests = 1
unit_timeout_s = {timeout_s}
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine", bad = "tests.fakes.engine:FakeEngine" }}

[engine_options.bad]
{option}

[cooldown]
before_s = 0.1
after_s = 0.05

[probes.rapl]
rate_hz = 100
sysfs_root = "{root}"

[probes.host]
enabled = false
[probes.estimate]
enabled = false
"""

CASES = {
    "raises": ("fail_generate = true", "RuntimeError: simulated kernel failure in generate"),
    "load_fails": ("fail_load = true", "RuntimeError: simulated export failure"),
    "out_of_memory": ("oom = true", "out of memory while loading or generating"),
    "hangs": ("hang_s = 60.0", "timed out after 2.5 s (unit_timeout_s)"),
}


@pytest.fixture
def release_hung_engines() -> Iterator[None]:
    HANG_RELEASE.clear()
    yield
    HANG_RELEASE.set()  # the abandoned engine threads return and end


@pytest.mark.parametrize("case", list(CASES))
def test_a_failing_engine_fails_its_units_and_the_next_units_run(
    tmp_path: Path, case: str, release_hung_engines: None
) -> None:
    option, reason = CASES[case]
    standard_tree(tmp_path / "powercap")
    plan = parse_plan(
        PLAN.format(
            case=case,
            option=option,
            timeout_s=2.5 if case == "hangs" else 60.0,
            root=tmp_path / "powercap",
        ),
        Path("engine-faults.toml"),
    )
    db = tmp_path / "run.duckdb"
    experiment_id, _ = anyio.run(
        lambda: run_experiment(plan, db, resume=False, force=False, quiet=True, reference=None)
    )
    with Store.open(db, read_only=True) as store:
        _, units = store.query(
            "SELECT unit_id, engine, status, reason, started_ns, ended_ns FROM units "
            "WHERE experiment_id = ? ORDER BY unit_id",
            [experiment_id],
        )
        _, measured = store.query(
            "SELECT unit_id, count(*) FROM requests WHERE phase = 'measure' GROUP BY 1"
        )
        _, events = store.query("SELECT level, message FROM events")
        _, experiments = store.query("SELECT status FROM experiments")
        _, open_phases = store.query("SELECT count(*) FROM phases WHERE end_ns IS NULL")
    assert experiments == [("done",)]
    assert open_phases == [(0,)]
    assert {engine for _, engine, *_ in units} == {"fake", "bad"}
    for unit_id, engine, status, unit_reason, started_ns, ended_ns in units:
        if engine == "bad":
            assert status == "failed" and reason in unit_reason, (unit_id, unit_reason)
            assert any(
                level == "error" and f"unit {unit_id} (bad/cpu) failed: " in m
                for level, m in events
            )
        else:
            assert (status, unit_reason) == ("done", None)
            assert dict(measured)[unit_id] == 2
        assert started_ns is not None and ended_ns is not None
    # every unit ran after the one before it ended: a failure never stopped the plan
    for before, after in itertools.pairwise(units):
        assert after[4] >= before[5]
    if case == "hangs":
        assert any("engine thread abandoned" in m for _, m in events)
