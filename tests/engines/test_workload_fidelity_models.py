"""Workloads, fidelity against the reference, and the built-in models."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from engine_cases import NEW_TOKENS, PROMPTS

from greenmon.errors import WorkloadError
from greenmon.fidelity import compare_tokens, compare_unit, reference_outputs, reference_path
from greenmon.models import (
    BUILTIN_MODELS,
    build_random_model,
    fingerprint_model_dir,
    resolve_model,
    size_category,
)
from greenmon.workload import load_workload


def test_humaneval_windows_are_seeded(tiny: Any, cache_dir: str) -> None:
    first = load_workload("humaneval-windows", model=tiny, seed=7, cache_dir=cache_dir)
    again = load_workload("humaneval-windows", model=tiny, seed=7, cache_dir=cache_dir)
    other = load_workload("humaneval-windows", model=tiny, seed=8, cache_dir=cache_dir)
    assert len(first) == 164
    assert first == again
    assert first != other
    assert first[0].prompt_id == "HumanEval/0"


def test_humaneval_windows_cut_10_to_15_tokens(tiny: Any, cache_dir: str) -> None:
    from greenmon.workload import tokenizer_for

    tokenizer = tokenizer_for(tiny, cache_dir=cache_dir)
    for prompt in load_workload("humaneval-windows", tokenizer=tokenizer, limit=20):
        # Decoding then re-encoding can merge a few tokens differently at the window's edges.
        assert 5 <= len(tokenizer.encode(prompt.text, add_special_tokens=False)) <= 15


def test_humaneval_windows_need_a_tokenizer() -> None:
    with pytest.raises(WorkloadError, match="tokenizer"):
        load_workload("humaneval-windows")


def test_builtin_workloads_have_164_prompts_and_limit() -> None:
    gaissa = load_workload("gaissa-164")
    assert len(gaissa) == 164
    assert gaissa[0].prompt_id == "RandomTokens/0"
    assert len({p.prompt_id for p in gaissa}) == 164
    assert len(load_workload("humaneval-full")) == 164
    assert load_workload("gaissa-164", limit=3) == gaissa[:3]
    with pytest.raises(WorkloadError):
        load_workload("gaissa-164", limit=0)


def test_jsonl_workload(jsonl: Path) -> None:
    jsonl.write_text('{"id": 1, "prompt": "def f():"}\n\n{"id": "b", "prompt": "import os"}\n')
    prompts = load_workload(str(jsonl))
    assert [(p.prompt_id, p.text) for p in prompts] == [("1", "def f():"), ("b", "import os")]


@pytest.mark.parametrize(
    ("lines", "bad_line", "message"),
    [
        (['{"id": 1, "prompt": "a"}', "{not json"], 2, "not valid JSON"),
        (['{"id": 1, "prompt": "a"}', "", '{"id": 2}'], 3, "missing 'prompt'"),
        (['{"id": 1, "prompt": "a"}', '{"id": 1, "prompt": "b"}'], 2, "already used on line 1"),
        (['["id", "prompt"]'], 1, "expected an object"),
        (['{"id": 1, "prompt": ""}'], 1, "non-empty string"),
    ],
)
def test_bad_jsonl_line_is_reported_by_number(
    jsonl: Path, lines: list[str], bad_line: int, message: str
) -> None:
    jsonl.write_text("\n".join(lines) + "\n")
    with pytest.raises(WorkloadError, match=f"line {bad_line}: .*{message}"):
        load_workload(str(jsonl))


def test_unknown_workload_is_an_error() -> None:
    with pytest.raises(WorkloadError, match="neither a built-in"):
        load_workload("no-such-workload")


def test_fidelity_torch_vs_onnx_is_complete(
    tiny: Any, cache_dir: str, outputs: dict[str, Any]
) -> None:
    reference = reference_outputs(tiny, list(PROMPTS), NEW_TOKENS, cache_dir=cache_dir)
    assert reference_path(tiny, list(PROMPTS), NEW_TOKENS, cache_dir).is_file()
    fidelity = compare_unit(outputs["onnx"], reference)
    assert fidelity.identical_share == 1.0
    assert fidelity.first_divergence is None
    assert fidelity.compared_tokens == NEW_TOKENS * len(PROMPTS)
    # A second call reads the cache and gives the same answer.
    assert reference_outputs(tiny, list(PROMPTS), NEW_TOKENS, cache_dir=cache_dir) == reference


def test_fidelity_detects_a_perturbed_output(
    tiny: Any, cache_dir: str, outputs: dict[str, Any]
) -> None:
    reference = reference_outputs(tiny, list(PROMPTS), NEW_TOKENS, cache_dir=cache_dir)
    records = list(outputs["onnx"])
    ids = list(records[2].output_ids)
    ids[5] = (ids[5] + 1) % 1000
    records[2] = dataclasses.replace(records[2], output_ids=tuple(ids))
    fidelity = compare_unit(records, reference)
    assert fidelity.first_divergence == 5
    assert fidelity.requests[2].first_divergence == 5
    assert fidelity.requests[2].identical_share == (NEW_TOKENS - 1) / NEW_TOKENS
    assert fidelity.identical_requests_share == 4 / 5
    assert fidelity.identical_share < 1.0


def test_compare_tokens_counts_length_differences() -> None:
    result = compare_tokens("x", [1, 2, 3], [1, 2, 3, 4])
    assert (result.identical_tokens, result.compared_tokens, result.first_divergence) == (3, 4, 3)
    assert compare_tokens("y", [1, 2], [1, 2]).first_divergence is None


def test_tiny_model_is_recorded(tiny: Any) -> None:
    assert tiny.param_count is not None and tiny.param_count < 1_000_000
    assert tiny.size_category == 1
    assert tiny.revision is not None
    assert (tiny.path / "config.json").is_file()


def test_random_model_build_is_byte_identical(tiny: Any, tmp_path: Path) -> None:
    again = build_random_model(tmp_path / "again", BUILTIN_MODELS["tiny"])
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny.path / name).read_bytes(), name
    # The fingerprint covers the files, plus the revision a built-in model is known by.
    assert fingerprint_model_dir(again, tiny.revision) == tiny.fingerprint
    assert resolve_model(str(again)).param_count == tiny.param_count


def test_size_categories_follow_thresholds() -> None:
    assert size_category(350_000_000) == 1
    assert size_category(1_300_000_000) == 2
    assert size_category(2_700_000_000) == 3
    assert size_category(1_300_000_000, thresholds=(1_500_000_000, 2_000_000_000)) == 1
