"""The runtime study's engines through `greenmon run`, as a person runs them: tiny-bert and
tiny-resnet on the classification workload, torch beside tensorflow (greenmon[tensorflow])
or mxnet (its own environment, `greenmon engines install mxnet`), each a separate process.

Each new engine's journey skips, saying why, when its extra or environment is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.journeys.test_journeys import greenmon, sql

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PLAN = """
name = "runtimes-{engine}"
models = ["tiny-bert", "tiny-resnet"]
configurations = ["torch/cpu", "{engine}/cpu"]
workload = "classification"
prompts = 4
repetitions = 1
warmup_requests = 1
seed = 0

[factors]
batch_size = [4]

[cooldown]
before_s = 0.2
after_s = 0.1

[probes.host]
rate_hz = 10
"""


def usable(engine: str, cwd: Path) -> tuple[bool, str]:
    rows = json.loads(greenmon("engines", "--json", cwd=cwd).stdout)
    (row,) = [r for r in rows if r["engine"] == engine and r["provider"] == "cpu"]
    return bool(row["usable"]), str(row["reason"])


@pytest.mark.parametrize("engine", ["tensorflow", "mxnet"])
def test_a_runtime_study_plan_runs_on_the_new_engine(engine: str, tmp_path: Path) -> None:
    ok, reason = usable(engine, tmp_path)
    if not ok:
        pytest.skip(f"{engine}/cpu is not usable here: {reason}")
    rows = json.loads(greenmon("engines", "--json", cwd=tmp_path).stdout)
    (row,) = [r for r in rows if r["engine"] == engine and r["provider"] == "cpu"]
    main = "tensorflow-cpu" if engine == "tensorflow" else "mxnet"
    assert row["versions"].get(main) or row["versions"].get("tensorflow"), row["versions"]

    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN.format(engine=engine))
    db = tmp_path / "runtimes.duckdb"
    greenmon("run", str(plan), "--db", str(db), "--quiet", cwd=tmp_path)
    units = sql(db, "SELECT model, engine, status, reason, requests, inferences, "
                    "fidelity_share, j_per_inference, j_per_request FROM unit_results")  # fmt: skip
    assert len(units) == 4
    for unit in units:
        assert unit["status"] == "done", unit
        # One forward pass per batch of 4; every label equal to torch's.
        assert unit["requests"] == 4 and unit["inferences"] == 1, unit
        assert unit["fidelity_share"] == 1.0, unit
        assert unit["j_per_inference"] == pytest.approx(4 * unit["j_per_request"]), unit
    assert {u["engine"] for u in units} == {"torch", engine}

    analysed = greenmon("analyze", "--db", str(db), cwd=tmp_path).stdout
    assert "energy per sample" in analysed and "energy per token" not in analysed
