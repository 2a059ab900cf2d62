"""The runner against a fake engine and a fake RAPL tree powered at known watts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from greenmon.commands.run import run_experiment
from greenmon.errors import PlanError
from greenmon.plan import parse_plan
from greenmon.store import Store
from tests.fakes.engine import FakeEngine, PoweredRapl

IDLE_W = 5.0

PLAN = """
name = "fake-{name}"
models = ["tiny"]
configurations = ["fake/cpu", "fake2/cpu"]
workload = "gaissa-164"
prompts = 6
max_new_tokens = 16
repetitions = 2
seed = {seed}
warmup_requests = 1
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine", fake2 = "tests.fakes.engine:FakeEngine" }}

[cooldown]
before_s = 0.4
after_s = 0.2

[probes.rapl]
rate_hz = 200
sysfs_root = "{root}"

[probes.host]
enabled = false
"""


@pytest.fixture
def power(tmp_path: Path) -> Iterator[PoweredRapl]:
    source = PoweredRapl(tmp_path / "powercap", IDLE_W).start()
    yield source
    source.stop()


def _run(plan_text: str, db: Path, power: PoweredRapl, **kwargs: object) -> str:
    plan = parse_plan(plan_text, Path("fake.toml"))
    experiment_id, _ = anyio.run(
        lambda: run_experiment(
            plan,
            db,
            resume=False,
            force=False,
            quiet=True,
            reference=None,
            engine_kwargs={"power": power},
            **kwargs,
        )
    )
    return experiment_id


def test_units_get_the_energy_that_was_put_in(tmp_path: Path, power: PoweredRapl) -> None:
    text = PLAN.format(name="energy", seed=7, root=power.tree.root)
    db = tmp_path / "run.duckdb"
    experiment_id = _run(text, db, power)
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            """SELECT r.unit_id, r.status, r.duration_s, r.energy_cpu_j, r.dynamic_cpu_j,
                      r.j_per_token, r.tokens_out, r.requests, r.flags, r.baseline_cpu_w,
                      (SELECT sum(end_ns - start_ns) / 1e9 FROM requests q
                        WHERE q.experiment_id = r.experiment_id AND q.unit_id = r.unit_id
                          AND q.phase = 'measure') AS busy_s
               FROM unit_results r WHERE experiment_id = ? ORDER BY unit_id""",
            [experiment_id],
        )
        _, cool = store.query(
            """SELECT duration_s, energy_j FROM unit_phase_energy
               WHERE experiment_id = ? AND phase = 'cooldown_before'""",
            [experiment_id],
        )
    assert len(rows) == 4
    stale_j = power.stale_j(IDLE_W + FakeEngine.busy_w + FakeEngine.load_w)
    for (
        _uid,
        status,
        duration_s,
        energy_j,
        dynamic_j,
        j_per_token,
        tokens,
        requests,
        flags,
        baseline_w,
        busy_s,
    ) in rows:
        assert status == "done"
        assert requests == 6 and tokens == 6 * 16
        expected_j = IDLE_W * duration_s + FakeEngine.busy_w * busy_s
        assert energy_j == pytest.approx(expected_j, rel=0.03, abs=stale_j)
        # a median of 5 ms interval powers: the fake source thread jitters under load
        assert baseline_w == pytest.approx(IDLE_W, rel=0.06)
        assert dynamic_j == pytest.approx(FakeEngine.busy_w * busy_s, rel=0.06, abs=2 * stale_j)
        assert j_per_token == pytest.approx(energy_j / tokens)
        assert "estimated" not in flags and "low_coverage" not in flags
    for duration_s, energy_j in cool:
        assert energy_j == pytest.approx(IDLE_W * duration_s, rel=0.03, abs=stale_j)


def test_random_order_is_reproduced_from_the_seed(tmp_path: Path, power: PoweredRapl) -> None:
    text = PLAN.format(name="order", seed=11, root=power.tree.root)
    db = tmp_path / "run.duckdb"
    experiment_id = _run(text, db, power)
    with Store.open(db, read_only=True) as store:
        _, stored = store.query(
            "SELECT unit_id, engine, repetition, seed FROM units JOIN experiments "
            "USING (experiment_id) WHERE experiment_id = ? ORDER BY unit_id",
            [experiment_id],
        )
        _, run_order = store.query(
            "SELECT unit_id FROM phases WHERE experiment_id = ? AND phase = 'load' "
            "ORDER BY start_ns",
            [experiment_id],
        )
    replay = parse_plan(text).units()
    assert [(u.unit_id, u.engine, u.repetition) for u in replay] == [r[:3] for r in stored]
    assert [r[0] for r in run_order] == [u.unit_id for u in replay]
    other = parse_plan(PLAN.format(name="order", seed=12, root="/x")).units()
    orders = {tuple((u.engine, u.repetition) for u in p) for p in (replay, other)}
    blocked = parse_plan(text.replace("seed = 11", 'seed = 11\norder = "blocked"')).units()
    assert [(u.engine, u.repetition) for u in blocked] == [
        ("fake", 1),
        ("fake", 2),
        ("fake2", 1),
        ("fake2", 2),
    ]
    assert len(orders) == 2 or len(replay) < 3


def test_a_failing_engine_fails_its_unit_and_the_next_runs(
    tmp_path: Path, power: PoweredRapl
) -> None:
    text = PLAN.format(name="fail", seed=3, root=power.tree.root) + (
        "\n[engine_options.fake2]\nfail_load = true\n"
    )
    db = tmp_path / "run.duckdb"
    experiment_id = _run(text, db, power)
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            "SELECT engine, status, reason FROM units WHERE experiment_id = ? ORDER BY unit_id",
            [experiment_id],
        )
    assert {(e, s) for e, s, _ in rows} == {("fake", "done"), ("fake2", "failed")}
    assert all("simulated export failure" in r for e, _, r in rows if e == "fake2")


def test_changed_plan_is_refused_with_the_difference(tmp_path: Path, power: PoweredRapl) -> None:
    text = PLAN.format(name="changed", seed=3, root=power.tree.root)
    db = tmp_path / "run.duckdb"
    with Store.open(db) as store:
        store.execute(
            "INSERT INTO experiments (experiment_id, name, plan_hash, plan, status, created_ns) "
            "VALUES ('old', 'fake-changed', 'x', ?, 'running', 0)",
            ['{"max_new_tokens": 8}'],
        )
    with pytest.raises(BaseException) as caught:
        _run(text, db, power)
    error = caught.value
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, PlanError)
    assert "max_new_tokens: 8 -> 16" in str(error) and "--force" in str(error)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('models = ["tiny"]\n', "no 'configurations'"),
        ('models = ["tiny"]\nconfigurations = ["openvino/cuda"]\n', "OpenVINO has no CUDA"),
        ('models = ["tiny"]\nconfigurations = ["caffe/cpu"]\n', "unknown engine"),
        ('models = ["tiny"]\nconfigurations = ["torch/cpu"]\nrepetitons = 3\n', "line 3"),
        ('models = ["tiny"]\nconfigurations = ["torch/cpu"]\nrepetitions = "3"\n', "repetitions"),
        ('models = ["tiny"]\nconfigurations = ["torch/cpu"]\norder = "zigzag"\n', "order"),
        ("models = [\n", "not valid TOML"),
    ],
)
def test_bad_plans_get_clear_errors(text: str, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        parse_plan(text)
