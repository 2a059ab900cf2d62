"""Quality scores: SQuAD exact match and token F1, ROUGE-L, and HumanEval pass@1 run for real."""

from __future__ import annotations

import pytest

from greenmon.quality import (
    Answer,
    exact_match,
    humaneval_problems,
    normalize_answer,
    rouge_l,
    score_answers,
    token_f1,
)


def test_squad_normalisation_and_exact_match() -> None:
    assert normalize_answer("  The  Answer, is: 42! ") == "answer is 42"
    assert exact_match("the Paris.", ["Paris"])
    assert not exact_match("Paris, France", ["Paris"])


def test_token_f1_known_values() -> None:
    # 1 common token of 2 predicted and 1 wanted: P = 1/2, R = 1, F1 = 2/3.
    assert token_f1("Paris France", ["Paris"]) == pytest.approx(2 / 3)
    assert token_f1("London", ["Paris"]) == 0.0
    # The best reference counts.
    assert token_f1("blue sky", ["red", "blue sky"]) == 1.0
    assert token_f1("", [""]) == 1.0


def test_rouge_l_known_values() -> None:
    assert rouge_l("return the sum of a list", ["Return the sum of a list."]) == pytest.approx(1.0)
    # LCS 3 of 3 predicted and 4 reference tokens: P = 1, R = 3/4, F1 = 6/7.
    assert rouge_l("the cat sat", ["the cat sat down"]) == pytest.approx(6 / 7)
    assert rouge_l("zebra", ["the cat sat"]) == 0.0


def test_pass_at_1_runs_humaneval_tests_for_real() -> None:
    problems = humaneval_problems()
    task = "HumanEval/0"
    problem = problems[task]
    correct = problem["canonical_solution"]
    wrong = "    return not (" + correct.strip().splitlines()[-1].strip().removeprefix("return ") + ")\n"
    looping = "    while True:\n        pass\n"
    answers = [
        Answer(task, "completion", problem["prompt"], (), correct),
        Answer(task, "completion", problem["prompt"], (), "    return True\n"),
        Answer(task, "completion", problem["prompt"], (), wrong),
        Answer(task, "completion", problem["prompt"], (), looping),
        # A window of the prompt has no tests: no score.
        Answer(task, "completion", problem["prompt"][:20], (), correct),
    ]
    scores = score_answers(answers, timeout_s=1.0)
    assert [s.quality if s else None for s in scores] == [1.0, 0.0, 0.0, 0.0, None]
    assert scores[0] is not None and scores[0].metric == "pass@1" and scores[0].correct
    assert scores[3] is not None and scores[3].detail == "timed out"


def test_qa_and_summary_scores() -> None:
    scores = score_answers(
        [
            Answer("q1", "question_answering", "", ("[1, 2]",), "[1, 2]\nmore text"),
            Answer("q2", "question_answering", "", ("True",), "False"),
            Answer("s1", "summarisation", "", ("Return the sum of a list.",), "return the sum of a list"),
            Answer("s2", "summarisation", "", ("Return the sum of a list.",), "zebra"),
        ]
    )
    assert [(s.quality, s.correct) for s in scores if s] == [
        (1.0, True), (0.0, False), (pytest.approx(1.0), True), (0.0, False)
    ]
