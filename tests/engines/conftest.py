"""Fixtures for the engine tests: offline hub, one cache directory per session, so the tiny
model, its exports and its reference outputs are built once and shared by every test."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub: the tests must never reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_cases import CPU_ENGINES, NEW_TOKENS, PROMPTS


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("greenmon-cache"))


@pytest.fixture(scope="session")
def tiny(cache_dir: str) -> Any:
    from greenmon.models import resolve_model

    return resolve_model("tiny", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def loaded_engines(cache_dir: str, tiny: Any) -> Iterator[dict[str, tuple[Any, Any]]]:
    """Each CPU engine loaded once with ``tiny``: name -> (engine, LoadInfo)."""
    from greenmon.engines import get_engine

    engines: dict[str, tuple[Any, Any]] = {}
    for name in CPU_ENGINES:
        engine = get_engine(name, cache_dir=cache_dir)
        engines[name] = (engine, engine.load(tiny, "cpu", {}))
    yield engines
    for engine, _ in engines.values():
        engine.close()


@pytest.fixture(scope="session")
def outputs(loaded_engines: dict[str, tuple[Any, Any]]) -> dict[str, list[Any]]:
    """Each engine's records for PROMPTS as one left-padded batch."""
    return {
        name: engine.generate(list(PROMPTS), NEW_TOKENS)
        for name, (engine, _) in loaded_engines.items()
    }


@pytest.fixture()
def jsonl(tmp_path: Path) -> Path:
    return tmp_path / "prompts.jsonl"
