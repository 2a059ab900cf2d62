"""The embedded encoder-decoder (tiny-t5) on every CPU engine: exact length, same tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from engine_cases import CPU_ENGINES, NEW_TOKENS, PROMPTS

from greenmon.engines import describe_engines, get_engine
from greenmon.models import model_architecture, resolve_model

# Building tiny-t5 and exporting it for three engines takes minutes on a busy machine.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def tiny_t5(cache_dir: str) -> Any:
    return resolve_model("tiny-t5", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def seq2seq_outputs(cache_dir: str, tiny_t5: Any) -> Iterator[dict[str, tuple[Any, list[Any], list[Any]]]]:
    """Per engine: (LoadInfo, records of PROMPTS as one batch, records one prompt at a time)."""
    results = {}
    for name in CPU_ENGINES:
        engine = get_engine(name, cache_dir=cache_dir)
        info = engine.load(tiny_t5, "cpu", {})
        batch = engine.generate(list(PROMPTS), NEW_TOKENS)
        single = [engine.generate([p], NEW_TOKENS)[0] for p in PROMPTS]
        engine.close()
        results[name] = (info, batch, single)
    yield results


def test_tiny_t5_is_an_encoder_decoder_built_deterministically(tiny_t5: Any, tmp_path: Any) -> None:
    assert model_architecture(tiny_t5.path) == "encoder-decoder"
    config = json.loads((tiny_t5.path / "config.json").read_text())
    assert config["model_type"] == "t5" and config["decoder_start_token_id"] == config["pad_token_id"]
    again = resolve_model("tiny-t5", cache_dir=str(tmp_path))
    assert again.fingerprint == tiny_t5.fingerprint


@pytest.mark.parametrize("name", CPU_ENGINES)
def test_seq2seq_exact_length_and_agreement(name: str, seq2seq_outputs: dict[str, Any]) -> None:
    info, batch, single = seq2seq_outputs[name]
    assert info.details["architecture"] == "encoder-decoder"
    assert [r.tokens_out for r in batch] == [NEW_TOKENS] * len(PROMPTS)
    assert [r.output_ids for r in batch] == [r.output_ids for r in single]
    reference = [r.output_ids for r in seq2seq_outputs["torch"][1]]
    assert [r.output_ids for r in batch] == reference


def test_engines_say_which_architectures_they_serve() -> None:
    statuses = {(s.engine, s.provider): s for s in describe_engines()}
    for engine in CPU_ENGINES:
        assert set(statuses[(engine, "cpu")].architectures) == {
            "decoder", "encoder-decoder", "text-classifier", "image-classifier"
        }
    assert statuses[("openvino", "cuda")].architectures == {}
    assert "never run on a GPU" in statuses[("onnx", "tensorrt")].architectures["encoder-decoder"]
