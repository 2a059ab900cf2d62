"""Tasks as a workload property: JSONL rows with input / context / references, templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from greenmon.errors import WorkloadError
from greenmon.quality import Answer, score_answers
from greenmon.workload import load_workload


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_task_rows_fill_the_template(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "qa.jsonl",
        [
            {"task": "question_answering", "input": "What is 1 + 1?", "references": ["2"]},
            {"id": "q2", "task": "question_answering", "input": "Colour?", "context": "The sky is blue.", "references": ["blue"]},
        ],
    )
    prompts = load_workload(path)
    assert [p.prompt_id for p in prompts] == ["line-1", "q2"]
    assert prompts[0].text == "Question: What is 1 + 1?\nAnswer:"
    assert prompts[1].text == "The sky is blue.\nQuestion: Colour?\nAnswer:"
    assert prompts[1].task == "question_answering" and prompts[1].references == ("blue",)


def test_old_prompt_rows_are_completion(tmp_path: Path) -> None:
    prompts = load_workload(_write(tmp_path / "p.jsonl", [{"id": 1, "prompt": "def f():"}]))
    assert prompts[0].task == "completion" and prompts[0].references == ()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"task": "summarisation", "input": "x"}], "needs 'references'"),
        ([{"task": "translation", "input": "x", "references": ["y"]}], "not one of"),
        ([{"input": "x", "references": "y"}], "list of strings"),
        ([{"input": "x", "colour": 1}], "unknown key"),
        (
            [
                {"task": "summarisation", "input": "x", "references": ["y"]},
                {"task": "question_answering", "input": "x", "references": ["y"]},
            ],
            "one workload is one task",
        ),
    ],
)
def test_bad_task_rows_name_the_line(tmp_path: Path, rows: list[dict[str, object]], message: str) -> None:
    with pytest.raises(WorkloadError, match=message) as caught:
        load_workload(_write(tmp_path / "bad.jsonl", rows))
    assert "line" in str(caught.value)


def test_builtin_task_workloads_are_right_by_their_own_references() -> None:
    qa = load_workload("humaneval-qa")
    summaries = load_workload("humaneval-summaries")
    assert len(qa) == 110 and len(summaries) == 118
    assert {p.task for p in qa} == {"question_answering"}
    assert {p.task for p in summaries} == {"summarisation"}
    # The reference answer is what the function really returns: run the context's code.
    for prompt in qa[:20]:
        context, question = prompt.text.rsplit("\nQuestion: What does ", 1)
        call = question.removesuffix(" return?\nAnswer:")
        namespace: dict[str, object] = {}
        exec(context, namespace)
        assert repr(eval(call, namespace)) == prompt.references[0], prompt.prompt_id
    # Scoring the references themselves gives full marks.
    answers = [Answer(p.prompt_id, p.task, p.text, p.references, p.references[0]) for p in qa[:5] + summaries[:5]]
    assert all(s is not None and s.quality == pytest.approx(1.0) and s.correct for s in score_answers(answers))


def test_scores_are_stored_with_the_measured_requests(tmp_path: Path) -> None:
    from greenmon.engines.base import Prompt, RequestRecord
    from greenmon.quality import store_quality
    from greenmon.store import Store

    prompts = [
        Prompt("a", "Q: x?\nAnswer:", "question_answering", ("blue",)),
        Prompt("b", "Q: y?\nAnswer:", "question_answering", ("red sky",)),
        Prompt("c", "def f():", "completion", ()),
    ]
    records = [
        RequestRecord(p.prompt_id, 3, 2, 0, 1, None, (1, 2), text)
        for p, text in zip(prompts, [" Blue.\nmore", "red", "    pass"], strict=True)
    ]
    with Store.open(tmp_path / "q.duckdb") as store:
        for phase in ("warmup", "measure"):
            for r in records:
                store.execute(
                    "INSERT INTO requests (experiment_id, unit_id, attempt, phase, prompt_id) "
                    "VALUES ('e', 0, 1, ?, ?)", [phase, r.prompt_id],
                )
        store_quality(store, "e", 0, 1, records, prompts)
        _, rows = store.query(
            "SELECT phase, prompt_id, task, quality_metric, quality, correct FROM requests "
            "ORDER BY phase, prompt_id"
        )
    assert rows[:3] == [
        ("measure", "a", "question_answering", "token_f1", 1.0, True),
        ("measure", "b", "question_answering", "token_f1", pytest.approx(2 / 3), False),
        ("measure", "c", "completion", None, None, None),
    ]
    assert all(r[2] is None for r in rows[3:])  # warm-up requests are not scored
