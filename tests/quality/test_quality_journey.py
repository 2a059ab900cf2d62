"""Journey: tiny and tiny-t5 on every CPU engine, over a QA and a summarisation workload,
through `greenmon run`, `greenmon analyze` and `greenmon report` as a person runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from greenmon.store import Store

REPO = Path(__file__).resolve().parents[2]
ENGINES = ("torch", "onnx", "openvino", "torchscript")
MODELS = ("tiny", "tiny-t5")
NEW_TOKENS = 6
PROMPTS = 3

PLAN = """
name = "{name}"
models = ["tiny", "tiny-t5"]
configurations = ["torch/cpu", "onnx/cpu", "openvino/cpu", "torchscript/cpu"]
workload = "{workload}"
prompts = {prompts}
max_new_tokens = {new_tokens}
repetitions = 1
seed = 3
warmup_requests = 1

[cooldown]
before_s = 0.3
after_s = 0.1
"""


def _greenmon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "greenmon.cli", *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _qa_workload(path: Path, cache_dir: str) -> None:
    """The first QA rows of humaneval-qa; the first two also accept what each model's
    torch reference answers, so some answers are known to be correct (known truth)."""
    from greenmon.engines import get_engine
    from greenmon.quality import answer_span
    from greenmon.workload import load_workload

    source = (REPO / "greenmon/data/humaneval_qa.jsonl").read_text().splitlines()[:PROMPTS]
    rows = [json.loads(line) for line in source]
    prompts = load_workload("humaneval-qa", limit=PROMPTS)
    for model in MODELS:
        engine = get_engine("torch", cache_dir=cache_dir)
        engine.load(model, "cpu", {})
        for row, prompt in zip(rows[:2], prompts[:2], strict=True):
            row["references"].append(answer_span(engine.generate([prompt], NEW_TOKENS)[0].text))
        engine.close()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_quality_beside_energy_from_run_to_report(tmp_path: Path) -> None:
    cache_dir = str(tmp_path / "cache")
    env = {**os.environ, "PYTHONPATH": str(REPO), "GREENMON_CACHE_DIR": cache_dir,
           "GREENMON_SOCKET": f"/tmp/gm-q19-{os.getpid()}.sock", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    os.environ["GREENMON_CACHE_DIR"] = cache_dir
    try:
        _qa_workload(tmp_path / "qa.jsonl", cache_dir)
    finally:
        del os.environ["GREENMON_CACHE_DIR"]
    db = tmp_path / "quality.duckdb"
    experiments = {}
    for task, workload in (("qa", tmp_path / "qa.jsonl"), ("summaries", "humaneval-summaries")):
        plan = tmp_path / f"{task}.toml"
        plan.write_text(PLAN.format(name=task, workload=workload, prompts=PROMPTS,
                                    new_tokens=NEW_TOKENS))  # fmt: skip
        _greenmon(env, "run", str(plan), "--db", str(db), "--quiet")
        with Store.open(db, read_only=True) as store:
            _, rows = store.query("SELECT experiment_id FROM experiments WHERE name = ?", [task])
        experiments[task] = str(rows[0][0])

    with Store.open(db, read_only=True) as store:
        _, units = store.query(
            "SELECT experiment_id, model, configuration, status, reason, requests, quality, "
            "correct_share, j_per_correct, energy_global_j, quality_metric FROM unit_results"
        )
        _, requests = store.query(
            "SELECT task, count(*), count(quality), min(quality), max(quality) FROM requests "
            "WHERE phase = 'measure' GROUP BY task ORDER BY task"
        )
    assert len(units) == 2 * len(MODELS) * len(ENGINES)
    assert all(u[3] == "done" for u in units), [u for u in units if u[3] != "done"]
    # every measured request got its task's score
    assert [(r[0], r[1], r[2]) for r in requests] == [
        ("question_answering", 8 * PROMPTS, 8 * PROMPTS), ("summarisation", 8 * PROMPTS, 8 * PROMPTS)
    ]
    assert all(0.0 <= r[3] <= r[4] <= 1.0 for r in requests)
    by_key = {(u[0], u[1], u[2]): u for u in units}
    for model in MODELS:
        for engine in ENGINES:
            qa = by_key[(experiments["qa"], model, f"{engine}/cpu")]
            summary = by_key[(experiments["summaries"], model, f"{engine}/cpu")]
            assert qa[10] == "token_f1" and summary[10] == "rougeL_f1"
            # engines agree with torch, so the two answers made correct by construction are
            # correct on every engine (the third may or may not be)
            assert qa[7] >= 2 / PROMPTS, qa
            assert qa[9] is not None and qa[8] == pytest.approx(qa[9] / round(qa[7] * PROMPTS))

    analysis = json.loads(
        _greenmon(env, "analyze", "--db", str(db), "--experiment", experiments["qa"], "--json").stdout
    )
    quality = analysis["tables"]["quality"]
    configured = {(r["model"], r["configuration"]) for r in quality if r["comparison"] == "configuration"}
    assert configured == {(m, f"{e}/cpu") for m in MODELS for e in ENGINES}
    assert {"quality", "j_per_correct"} <= set(analysis["variables"])

    for task, experiment in experiments.items():
        out = tmp_path / f"report-{task}"
        _greenmon(env, "report", "--db", str(db), "--experiment", experiment, "--out", str(out))
        markdown = (out / "report.md").read_text()
        html = (out / "report.html").read_text()
        assert "## Quality beside energy" in markdown
        assert "data-table='quality'" in html or 'data-table="quality"' in html
        assert "energy per correct answer" in markdown.lower()
        assert (out / "plots" / "energy_quality.svg").is_file()
        assert "data-plot='energy_quality'" in html
        for engine in ENGINES:
            assert f"| {engine}/cpu |" in markdown
