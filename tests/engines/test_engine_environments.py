"""Engines in other environments: `greenmon engines install` (its steps, observed through
an injected runner), a plan's [engines.<name>] python = ..., and the generic worker
driving a greenmon engine from another interpreter over a pipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from greenmon.engines import get_engine
from greenmon.engines.environments import (
    RECIPES,
    env_dir,
    env_python,
    install_environment,
    recorded_versions,
)
from greenmon.engines.worker_engine import RemoteEngine
from greenmon.errors import EngineError, PlanError
from greenmon.models import resolve_model
from greenmon.plan import parse_plan
from greenmon.workload import load_workload

pytestmark = pytest.mark.timeout(600)


class FakeRun:
    """Stands in for subprocess.run: makes the venv's interpreter (a link to this one),
    lets pip fail when asked, and reports versions."""

    def __init__(self, pip_fails: bool = False) -> None:
        self.pip_fails = pip_fails
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        if command[1:3] == ["-m", "venv"]:
            (Path(command[3]) / "bin").mkdir(parents=True)
            (Path(command[3]) / "bin" / "python").symlink_to(sys.executable)
            return subprocess.CompletedProcess(command, 0, "", "")
        if "pip" in command:
            if self.pip_fails:
                return subprocess.CompletedProcess(
                    command, 1, "", "ERROR: No matching distribution found for mxnet==1.9.1"
                )
            return subprocess.CompletedProcess(command, 0, "", "")
        versions = {d: "9.9" for d in command[3:]}
        return subprocess.CompletedProcess(command, 0, json.dumps(versions), "")


def test_install_records_versions_and_a_failure_names_the_package(tmp_path: Path) -> None:
    run = FakeRun()
    record = install_environment("mxnet", cache_dir=tmp_path, run=run)
    assert record["versions"] == {"mxnet": "9.9", "numpy": "9.9", "onnx": "9.9"}
    assert run.commands[1][-len(RECIPES["mxnet"]):] == list(RECIPES["mxnet"])
    assert env_dir("mxnet", tmp_path) == tmp_path / "envs" / "mxnet"
    assert env_python("mxnet", tmp_path).exists()
    assert recorded_versions("mxnet", tmp_path)["mxnet"] == "9.9"
    # No half-made environment is left beside it.
    assert [p.name for p in (tmp_path / "envs").iterdir()] == ["mxnet"]

    other = tmp_path / "other"
    with pytest.raises(EngineError, match="No matching distribution found for mxnet"):
        install_environment("mxnet", cache_dir=other, run=FakeRun(pip_fails=True))
    assert not (other / "envs" / "mxnet").exists()
    with pytest.raises(EngineError, match="greenmon installs: mxnet"):
        install_environment("caffe", cache_dir=tmp_path, run=FakeRun())


def test_engines_install_refuses_an_engine_without_an_environment(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "greenmon.cli", "engines", "install", "torch"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "greenmon[tensorflow]" in done.stderr and "Traceback" not in done.stderr


PLAN = """
name = "elsewhere"
models = ["tiny-resnet"]
configurations = ["torch/cpu"]
workload = "classification"
[engines.{name}]
python = "{python}"
{extra}
"""


def test_a_plan_names_another_interpreter_for_an_engine(tmp_path: Path) -> None:
    plan = parse_plan(PLAN.format(name="torch", python=sys.executable, extra=""))
    assert plan.spec.engines["torch"].python == sys.executable
    with pytest.raises(PlanError, match="does not have"):
        parse_plan(PLAN.format(name="caffe", python=sys.executable, extra=""))
    # A plan without the table keeps the hash it had before the table existed.
    plain = PLAN.split("[engines")[0].format(name="torch")
    assert "engines" not in parse_plan(plain).canonical()


def test_the_generic_worker_drives_an_engine_from_another_interpreter(cache_dir: str) -> None:
    model = resolve_model("tiny-resnet", cache_dir=cache_dir)
    prompts = load_workload("image-classification", limit=3)
    remote = RemoteEngine("torch", sys.executable, cache_dir)
    info = remote.load(model, "cpu", {})
    try:
        assert info.details["worker_pid"] != 0
        assert info.details["model_fingerprint"] == model.fingerprint
        records = remote.generate(prompts, 1)
    finally:
        remote.close()
    local = get_engine("torch", cache_dir=cache_dir)
    local.load(model, "cpu", {})
    try:
        expected = local.generate(prompts, 1)
    finally:
        local.close()
    assert [r.output_ids for r in records] == [r.output_ids for r in expected]
    assert [r.prompt_id for r in records] == [p.prompt_id for p in prompts]


def test_the_runtime_study_example_is_a_valid_plan() -> None:
    from greenmon.plan import load_plan

    example = Path(__file__).resolve().parents[2] / "examples" / "runtimes-2024.toml"
    plan = load_plan(example)
    assert {e for e, _ in plan.configurations} == {
        "torch", "onnx", "openvino", "torchscript", "tensorflow", "mxnet"
    }
    # 2 models x 6 engines x 2 batch sizes x 10 repetitions
    assert len(plan.units()) == 240


def test_plan_check_says_what_an_engine_cannot_serve(cache_dir: str) -> None:
    from greenmon.plan import check_plan

    plan = parse_plan(
        'name = "limits"\nmodels = ["tiny"]\nconfigurations = ["mxnet/cpu", "torch/cpu"]\n'
        'workload = "humaneval-windows"\nprompts = 2\n'
    )
    problems = check_plan(plan, cache_dir=cache_dir).problems
    (problem,) = [p for p in problems if "cannot serve" in p]
    assert "mxnet/cpu cannot serve 'tiny', a decoder model" in problem
    assert "LayerNormalization" in problem
