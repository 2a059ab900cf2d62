"""The classification tasks on every CPU engine: tiny-bert on text-classification and
tiny-resnet on image-classification, one forward pass per batch, labels equal to torch's.

tensorflow runs when greenmon[tensorflow] is installed and mxnet when its environment is
(`greenmon engines install mxnet`); otherwise they skip, saying which is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from engine_cases import CPU_ENGINES

from greenmon.engines import check_configuration, describe_engines, get_engine
from greenmon.engines.base import Prompt
from greenmon.errors import EngineError, WorkloadError
from greenmon.images import seeded_image
from greenmon.models import model_architecture, resolve_model
from greenmon.workload import load_workload

pytestmark = pytest.mark.timeout(900)

CASES = {"tiny-bert": "text-classification", "tiny-resnet": "image-classification"}
# Few inputs keep every engine's export and load the cost; a batch of 5 and of 1 both run.
PROMPTS = 5


def _mxnet_python() -> str | None:
    from greenmon.engines.environments import env_python, recorded_versions

    return str(env_python("mxnet")) if recorded_versions("mxnet") else None


def engines_here() -> list[Any]:
    cases: list[Any] = list(CPU_ENGINES)
    reason = check_configuration("tensorflow", "cpu")
    cases.append(
        pytest.param("tensorflow", marks=pytest.mark.skipif(
            reason is not None, reason=f"tensorflow/cpu: {reason}"))
    )  # fmt: skip
    cases.append(
        pytest.param("mxnet", marks=pytest.mark.skipif(
            _mxnet_python() is None,
            reason="mxnet/cpu: its environment is absent (greenmon engines install mxnet)"))
    )  # fmt: skip
    return cases


def make(name: str, cache_dir: str) -> Any:
    if name == "mxnet":  # its environment in the user's cache, whatever cache the test uses
        from greenmon.engines.worker_engine import MxnetEngine

        return MxnetEngine(cache_dir=cache_dir, python=_mxnet_python())
    return get_engine(name, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def labelled(cache_dir: str) -> Iterator[dict[str, dict[str, tuple[Any, list[Any], list[Any]]]]]:
    """model -> engine -> (LoadInfo, records as one batch, records one at a time); filled
    lazily, per engine, by the tests that ask."""
    yield {model: {} for model in CASES}


def run_engine(name: str, model: str, cache_dir: str, store: dict[str, Any]) -> Any:
    if name not in store:
        prompts = load_workload(CASES[model], limit=PROMPTS)
        engine = make(name, cache_dir)
        info = engine.load(resolve_model(model, cache_dir=cache_dir), "cpu", {})
        try:
            batch = engine.generate(prompts, 1)
            single = [engine.generate([p], 1)[0] for p in prompts]
        finally:
            engine.close()
        store[name] = (info, batch, single)
    return store[name]


@pytest.mark.parametrize("model", list(CASES))
@pytest.mark.parametrize("name", engines_here())
def test_labels_equal_torch(name: str, model: str, cache_dir: str, labelled: Any) -> None:
    store = labelled[model]
    info, batch, single = run_engine(name, model, cache_dir, store)
    _, reference, _ = run_engine("torch", model, cache_dir, store)
    assert info.details["architecture"] == model_architecture(
        resolve_model(model, cache_dir=cache_dir).path
    )
    # One label per request, from one forward pass: every record of the batch shares it.
    assert [r.tokens_out for r in batch] == [1] * PROMPTS
    assert len({(r.start_ns, r.end_ns) for r in batch}) == 1
    assert all(r.text.startswith("label-") for r in batch)
    # Padding (batch) does not change a label, and every engine agrees with torch.
    assert [r.output_ids for r in batch] == [r.output_ids for r in single]
    assert [r.output_ids for r in batch] == [r.output_ids for r in reference]


def test_tensorflow_records_whether_xla_compiled(cache_dir: str) -> None:
    reason = check_configuration("tensorflow", "cpu")
    if reason is not None:
        pytest.skip(f"tensorflow/cpu: {reason}")
    engine = get_engine("tensorflow", cache_dir=cache_dir)
    info = engine.load(resolve_model("tiny-resnet", cache_dir=cache_dir), "cpu",
                       {"jit_compile": True})  # fmt: skip
    try:
        assert info.details["jit_compile_requested"] is True
        assert info.details["xla_compiled"] is True
        (record,) = engine.generate(load_workload("image-classification", limit=1), 1)
        assert record.tokens_out == 1
    finally:
        engine.close()


def test_builtin_classifiers_are_deterministic(cache_dir: str, tmp_path: Any) -> None:
    for model, architecture in (("tiny-bert", "text-classifier"),
                                ("tiny-resnet", "image-classifier")):  # fmt: skip
        info = resolve_model(model, cache_dir=cache_dir)
        assert model_architecture(info.path) == architecture
        assert resolve_model(model, cache_dir=str(tmp_path)).fingerprint == info.fingerprint
    config = json.loads((resolve_model("tiny-resnet", cache_dir=cache_dir).path
                         / "config.json").read_text())  # fmt: skip
    assert len(config["id2label"]) == 10


def test_seeded_images_are_reproducible_and_named() -> None:
    prompts = load_workload("image-classification", seed=3)
    assert len(prompts) == 164 and prompts[0].task == "image_classification"
    first = seeded_image(prompts[0].text)
    assert first.shape == (96, 96, 3) and str(first.dtype) == "uint8"
    assert (seeded_image(prompts[0].text) == first).all()
    assert not (seeded_image(prompts[1].text) == first).all()
    with pytest.raises(WorkloadError, match="seeded image"):
        seeded_image("a cat")
    with pytest.raises(WorkloadError, match="input_tokens does not apply"):
        load_workload("text-classification", input_tokens=8)
    texts = load_workload("text-classification", limit=2)
    assert [p.task for p in texts] == ["text_classification"] * 2


def test_a_classifier_refuses_the_wrong_workload(cache_dir: str) -> None:
    engine = get_engine("torch", cache_dir=cache_dir)
    engine.load(resolve_model("tiny-resnet", cache_dir=cache_dir), "cpu", {})
    try:
        with pytest.raises(EngineError, match="use the image-classification workload"):
            engine.generate([Prompt("x", "def f():", "text_classification")], 1)
    finally:
        engine.close()


def test_engines_list_the_new_engines_and_their_limits() -> None:
    statuses = {(s.engine, s.provider): s for s in describe_engines()}
    assert set(statuses[("tensorflow", "cpu")].architectures) == {
        "decoder", "text-classifier", "image-classifier"
    }
    assert "no TF Llama" in statuses[("tensorflow", "cpu")].architectures["decoder"]
    assert set(statuses[("mxnet", "cpu")].architectures) == {
        "text-classifier", "image-classifier"
    }
    assert "LayerNormalization" in statuses[("mxnet", "cpu")].architectures["text-classifier"]
    assert not statuses[("mxnet", "cuda")].usable


def _tensorflow_or_skip() -> None:
    reason = check_configuration("tensorflow", "cpu")
    if reason is not None:
        pytest.skip(f"tensorflow/cpu: {reason}")


def test_tensorflow_generates_with_a_causal_lm_it_has_a_class_for(
    cache_dir: str, tmp_path: Any
) -> None:
    """A tiny random GPT-2 (TF has TFGPT2LMHeadModel): exact length, torch's tokens."""
    _tensorflow_or_skip()
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny", cache_dir=cache_dir).path)
    tokenizer.save_pretrained(tmp_path)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).eval().save_pretrained(tmp_path)
    prompts = load_workload("humaneval-windows", model=str(tmp_path), limit=3)
    records = {}
    for name in ("torch", "tensorflow"):
        engine = get_engine(name, cache_dir=cache_dir)
        engine.load(str(tmp_path), "cpu", {})
        try:
            records[name] = engine.generate(prompts, 6)
        finally:
            engine.close()
    assert [r.tokens_out for r in records["tensorflow"]] == [6, 6, 6]
    assert [r.output_ids for r in records["tensorflow"]] == [
        r.output_ids for r in records["torch"]
    ]


def test_tensorflow_says_it_has_no_llama(cache_dir: str) -> None:
    _tensorflow_or_skip()
    engine = get_engine("tensorflow", cache_dir=cache_dir)
    with pytest.raises(EngineError, match="no TF class"):
        engine.load(resolve_model("tiny", cache_dir=cache_dir), "cpu", {})
    engine.close()
