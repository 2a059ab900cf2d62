"""`plan check` warns before anything runs when repetitions are too few for the
tests and when the measure windows will be too short for the slowest energy source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from greenmon.plan import check_plan, parse_plan, stored_update_periods
from greenmon.probes.base import Channel
from greenmon.probes.estimate import EstimateProbe, Options
from greenmon.store import Store

PLAN = """
name = "warn"
models = ["tiny"]
configurations = ["fake/cpu", "fake2/cpu"]
prompts = {prompts}
max_new_tokens = 8
{repetitions}
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine", fake2 = "tests.fakes.engine:FakeEngine" }}
{extra}
"""


def _warnings(
    repetitions: str, prompts: int = 164, extra: str = "", periods: dict[str, float] | None = None
) -> list[str]:
    plan = parse_plan(PLAN.format(repetitions=repetitions, prompts=prompts, extra=extra))
    return check_plan(plan, deep=False, update_periods_s=periods).warnings


@pytest.mark.parametrize(
    ("repetitions", "words"),
    [
        ("repetitions = 1", "runs no statistical test at all"),
        ("repetitions = 2", "runs no statistical test at all"),
        ("repetitions = 3", "needs 6 values"),
        ("repetitions = 5", "needs 6 values"),
        ("repetitions = 6", None),
        ("repetitions = 10", None),
        ('repetitions = "auto"', None),
        ('repetitions = "auto"|min_repetitions = 3\nmax_repetitions = 4', "can never meet the target"),
        ('repetitions = "auto"|min_repetitions = 3\nmax_repetitions = 4\nconfidence = 0.8', None),
    ],
)
def test_too_few_repetitions_warn(repetitions: str, words: str | None) -> None:
    repetitions, _, precision = repetitions.partition("|")
    warnings = _warnings(repetitions, extra=f"[precision]\n{precision}" if precision else "")
    if words is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and words in warnings[0]


def test_a_measure_shorter_than_the_slowest_source_allows_warns() -> None:
    # 2 prompts x 8 tokens at 20 ms: about 0.32 s, under 5 x 1 s
    periods = {"nvml gpu0.power_mw": 1.0, "rapl package-0.energy_uj": 0.001}
    (warning,) = _warnings("repetitions = 6", prompts=2, periods=periods)
    assert "about 0.32 s" in warning and "nvml gpu0.power_mw: 1.000 s" in warning
    assert "short_window" in warning
    # 164 prompts: about 26 s, long enough for a 1 s source
    assert _warnings("repetitions = 6", prompts=164, periods=periods) == []
    # no stored periods: the plan's own sampling rates count (NETIO polled at 0.5 Hz)
    (warning,) = _warnings(
        "repetitions = 6", prompts=2, extra="[probes.netio]\nrate_hz = 0.5\nhost = 'x'"
    )
    assert "netio (sampled at 0.5 Hz): 2.000 s" in warning
    # the estimate is read at the measure's edges and is exact between reads, as a
    # counter is: how often it is polled does not limit the measure
    assert _warnings("repetitions = 6", prompts=2, extra="[probes.estimate]\nrate_hz = 0.5") == []
    assert _warnings("repetitions = 6", prompts=2) == []  # nothing known: no guess


def _db_with_a_slow_gpu(path: Path) -> None:
    with Store.open(path) as store:
        session = store.start_session({"host": "h"}, 0, 0, {})
        channel = Channel("gpu0.energy_mj", "mJ", "counter", "gpu")
        (channel_id,) = store.register_channels(session, "nvml", [channel], 10_000_000)
        store.set_update_periods({channel_id: (400_000_000, 30)})


def test_stored_estimate_periods_are_its_tick(tmp_path: Path) -> None:
    """The estimate polled at 1 Hz, read at the edges: judged by its declared tick, as the
    results views judge its measure (sources.py window_resolution_sql)."""
    db = tmp_path / "estimate.duckdb"
    with Store.open(db) as store:
        session = store.start_session({"host": "h"}, 0, 0, {})
        probe = EstimateProbe(Options(tdp_w=10.0))
        channel = probe.open()[0]
        probe.close()
        (channel_id,) = store.register_channels(session, "estimate", [channel], 1_000_000_000)
        store.set_update_periods({channel_id: (1_000_000_000, 30)})
    assert stored_update_periods(db) == {f"estimate cpu.power_w in {db}": 0.01}


def test_stored_update_periods_reach_plan_check(tmp_path: Path) -> None:
    db = tmp_path / "periods.duckdb"
    _db_with_a_slow_gpu(db)
    assert stored_update_periods(db) == {f"nvml gpu0.energy_mj in {db}": 0.4}
    assert stored_update_periods(tmp_path / "none.duckdb") == {}
    plan_path = tmp_path / "warn.toml"
    plan_path.write_text(PLAN.format(repetitions="repetitions = 2", prompts=2, extra=""))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(
        [sys.executable, "-m", "greenmon.cli", "plan", "check", str(plan_path), "--db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # a busy machine adds its own warning (greenmon/interference.py), not counted
    lines = [
        line
        for line in result.stdout.splitlines()
        if line.startswith("warning: ") and "the machine is busy" not in line
    ]
    assert len(lines) == 2
    assert "runs no statistical test at all" in lines[0]
    assert "nvml gpu0.energy_mj in" in lines[1] and "0.400 s" in lines[1]


def test_auto_repetitions_cannot_be_sharded() -> None:
    import dataclasses

    from greenmon.plan import Shard

    plan = parse_plan(PLAN.format(repetitions='repetitions = "auto"', prompts=2, extra=""))
    assert check_plan(plan, deep=False).problems == []
    sharded = dataclasses.replace(plan, shard=Shard(0, 2))
    (problem,) = check_plan(sharded, deep=False).problems
    assert "a shard runs only part of them" in problem
