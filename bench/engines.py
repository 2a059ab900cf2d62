"""Engine throughput and greenmon's harness overhead, printed as JSON.

- ``tokens_per_s``: new tokens per second of ``generate`` wall time, per engine on the CPU,
  for the built-in ``tiny`` and ``tiny-20m`` models (random weights, so only speed means
  anything), one prompt per batch, over the first N ``gaissa-164`` prompts, after one
  warm-up request.  Load and export times are reported beside it.
- ``harness_overhead``: tokens/s through greenmon's ``torch`` engine divided by tokens/s of a
  bare transformers ``generate`` loop (same model, prompts, token count, thread count).
  The two are interleaved prompt by prompt, so drift of the machine hits both.  Reported:
  the median over (prompt, round) pairs of the time ratio (``paired_ratio_median``, the
  figure least disturbed by other load), and the median of per-round throughput ratios.
  1.0 means no overhead; the aim is >= 0.97.

Usage: python bench/engines.py [--prompts 16] [--new-tokens 32] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenmon.engines import get_engine
from greenmon.engines.base import Prompt
from greenmon.models import resolve_model
from greenmon.workload import load_workload

ENGINES = ("torch", "onnx", "openvino", "torchscript")


def engine_throughput(
    name: str, model: Any, prompts: list[Prompt], new_tokens: int, threads: int, cache_dir: str
) -> dict[str, Any]:
    engine = get_engine(name, cache_dir=cache_dir)
    info = engine.load(model, "cpu", {"threads": threads})
    try:
        engine.generate(prompts[:1], new_tokens)  # warm-up: first-call allocations, JIT
        start_ns = time.monotonic_ns()
        tokens = 0
        for prompt in prompts:
            (record,) = engine.generate([prompt], new_tokens)
            tokens += record.tokens_out
        elapsed_s = (time.monotonic_ns() - start_ns) / 1e9
    finally:
        engine.close()
    return {
        "tokens_per_s": round(tokens / elapsed_s, 1),
        "export_s": round(info.export_s, 3),
        "load_s": round(info.load_s, 3),
        "export_cache_hit": info.export_cache_hit,
    }


def bare_generate_step(model_dir: Path, new_tokens: int) -> Any:
    """A function serving one prompt with plain transformers; returns tokens generated."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def run(prompt: Prompt) -> int:
        with torch.inference_mode():
            encoded = tokenizer(prompt.text, return_tensors="pt", add_special_tokens=False)
            output = model.generate(
                **encoded,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return int(output.shape[1] - encoded["input_ids"].shape[1])

    return run


def harness_overhead(
    model: Any, prompts: list[Prompt], new_tokens: int, rounds: int, cache_dir: str
) -> dict[str, Any]:
    bare = bare_generate_step(model.path, new_tokens)
    engine = get_engine("torch", cache_dir=cache_dir)
    engine.load(model, "cpu", {})

    def ours(prompt: Prompt) -> int:
        (record,) = engine.generate([prompt], new_tokens)
        return record.tokens_out

    bare(prompts[0])
    ours(prompts[0])  # warm-up both
    ratios, bare_rates, our_rates, pair_ratios = [], [], [], []
    for round_no in range(rounds):
        elapsed_ns = {"bare": 0, "ours": 0}
        tokens = {"bare": 0, "ours": 0}
        # Interleave per prompt, alternating which goes first, so the machine's drift (and
        # whatever else runs on it) hits both sides alike.
        for index, prompt in enumerate(prompts):
            order = [("bare", bare), ("ours", ours)]
            if (index + round_no) % 2:
                order.reverse()
            pair_ns = {}
            for label, serve in order:
                start_ns = time.monotonic_ns()
                tokens[label] += serve(prompt)
                pair_ns[label] = time.monotonic_ns() - start_ns
                elapsed_ns[label] += pair_ns[label]
            # Same prompt, same token count, adjacent in time: the least disturbed pair.
            pair_ratios.append(pair_ns["bare"] / pair_ns["ours"])
        bare_rate = tokens["bare"] / (elapsed_ns["bare"] / 1e9)
        our_rate = tokens["ours"] / (elapsed_ns["ours"] / 1e9)
        ratios.append(our_rate / bare_rate)
        bare_rates.append(bare_rate)
        our_rates.append(our_rate)
    engine.close()
    return {
        "paired_ratio_median": round(statistics.median(pair_ratios), 4),
        "pairs": len(pair_ratios),
        "ratio_median": round(statistics.median(ratios), 4),
        "ratios": [round(r, 4) for r in ratios],
        "bare_tokens_per_s_median": round(statistics.median(bare_rates), 1),
        "greenmon_tokens_per_s_median": round(statistics.median(our_rates), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary dir")
    args = parser.parse_args()
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="greenmon-bench-")

    import torch

    torch.set_num_threads(args.threads)
    prompts = load_workload("gaissa-164", limit=args.prompts)
    results: dict[str, Any] = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads},
        "workload": {
            "name": "gaissa-164",
            "prompts": len(prompts),
            "batch_size": 1,
            "new_tokens": args.new_tokens,
        },
        "models": {},
    }
    for spec in ("tiny", "tiny-20m"):
        model = resolve_model(spec, cache_dir=cache_dir)
        results["models"][spec] = {
            "param_count": model.param_count,
            "engines": {
                name: engine_throughput(
                    name, model, prompts, args.new_tokens, args.threads, cache_dir
                )
                for name in ENGINES
            },
            "harness_overhead_torch": harness_overhead(
                model, prompts, args.new_tokens, args.rounds, cache_dir
            ),
        }
    from _common import aim  # type: ignore[import-not-found]

    results["aims"] = [
        aim(
            f"{spec}: greenmon torch engine / bare transformers (paired)",
            entry["harness_overhead_torch"]["paired_ratio_median"],
            ">=",
            0.97,
        )
        for spec, entry in results["models"].items()
    ]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
