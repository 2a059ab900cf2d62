"""Sentences are pure functions of the figures they state."""

from __future__ import annotations

from dataclasses import replace

from greenmon.analysis.sentences import Finding, finding_sentence, level_text, models_sentence

ONE_MODEL = Finding(noun="energy", where="", best="onnx/cpu", reference="torch/cpu", models=1,
                    alpha=0.05, saving_pct=40.0, p_values=(0.03,), effect_kind="Hedges' g",
                    effects=(1.25,))  # fmt: skip


def test_one_model_states_saving_p_and_effect() -> None:
    text = finding_sentence(ONE_MODEL)
    assert text == ("Here, <ONNX, CPU> used 40% less energy than <TORCH, CPU>; p = 0.030, "
                    "Hedges' g 1.25.")  # fmt: skip
    assert ONE_MODEL.p_value == 0.03 and ONE_MODEL.effect_size == 1.25


def test_the_level_named_is_the_alpha_used() -> None:
    strict = finding_sentence(replace(ONE_MODEL, alpha=0.01))
    assert "not significant at the 1% level: do not act on it yet" in strict
    assert level_text(0.05) == "5%" and level_text(0.001) == "0.1%"


def test_several_models_count_significance_at_alpha() -> None:
    several = replace(ONE_MODEL, models=3, range_text="from 10.00% up to 50.00%", range_models=3,
                      p_values=(0.001, 0.03, 0.2), effects=(0.9, 0.5, 0.1),
                      effect_kind="Cliff's delta")  # fmt: skip
    assert finding_sentence(several).endswith(
        "significant in 2 of 3 models (median Cliff's delta 0.50).")
    assert "significant in 1 of 3" in finding_sentence(replace(several, alpha=0.01))
    assert several.p_value == 0.2 and several.effect_size == 0.5


def test_untested_and_rangeless_findings() -> None:
    assert finding_sentence(replace(ONE_MODEL, p_values=(), effects=())).endswith(
        "(not tested: see the notes).")
    bare = Finding(noun="time", where=" at batch = 4", best="onnx/cpu", reference="torch/cpu",
                   models=2, alpha=0.05)  # fmt: skip
    assert finding_sentence(bare) == (
        "<ONNX, CPU> had the lowest median time at batch = 4 across 2 models.")
    assert models_sentence(1, 2, 3) == (
        "All configurations differ significantly, except for 1 of 2 models "
        "(1 models not tested).")
