"""input_tokens: windows of exactly N tokens, seeded, from the model's tokenizer."""

from __future__ import annotations

import pytest

from greenmon.engines.base import Prompt
from greenmon.errors import WorkloadError
from greenmon.workload import load_workload, token_windows, tokenizer_for


def test_windows_have_exactly_n_tokens_and_follow_the_seed() -> None:
    tokenizer = tokenizer_for("tiny")
    for n_tokens in (1, 24, 200):
        prompts = load_workload("gaissa-164", tokenizer=tokenizer, input_tokens=n_tokens, seed=4)
        assert len(prompts) == 164
        assert {len(tokenizer.encode(p.text, add_special_tokens=False)) for p in prompts} == {
            n_tokens
        }
    again = load_workload("humaneval-full", tokenizer=tokenizer, input_tokens=24, seed=4)
    other = load_workload("humaneval-full", tokenizer=tokenizer, input_tokens=24, seed=5)
    assert again == load_workload("gaissa-164", tokenizer=tokenizer, input_tokens=24, seed=4)
    assert again != other


def test_short_prompts_continue_into_the_next_and_too_long_is_refused() -> None:
    tokenizer = tokenizer_for("tiny")
    source = [Prompt("a", "def f(x):"), Prompt("b", "    return x + 1\n"), Prompt("c", "# done")]
    windows = token_windows(source, tokenizer, 6, seed=0)
    assert [p.prompt_id for p in windows] == ["a@6tok", "b@6tok", "c@6tok"]
    assert all(len(tokenizer.encode(p.text, add_special_tokens=False)) == 6 for p in windows)
    with pytest.raises(WorkloadError, match="longer than the whole workload"):
        token_windows(source, tokenizer, 10_000)
