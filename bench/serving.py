"""Serving over HTTP: in-process against `greenmon serve` and a third-party server.

One plan crosses ``torch/cpu`` in-process, ``http/greenmon-serve`` (torch/cpu behind
``greenmon serve``, started by the plan's ``command``) and, where it is installed,
``http/llama-cpp`` (llama-cpp-python's OpenAI server on a GGUF converted from the embedded
``tiny`` model) with ``concurrency = [1, 4]``, and runs it the way README tells a person
to: ``greenmon run``, ``greenmon analyze``, ``greenmon report`` as separate processes.
Prints JSON: per configuration and level, energy per token (whole measure and steady
state), throughput, latency, TTFT, token-count checks and flags, and the cost of serving
over HTTP against in-process.

The third-party server is not built here: llama-cpp-python compiles llama.cpp at install
(5-10 min on 2 cores, more on a shared machine), and the GGUF needs its converter
(/work/shared/RECIPES.md).  Point at them with ``GREENMON_LLAMA_PYTHON`` (a python with
``llama-cpp-python[server]``; default /work/llama-venv/bin/python) and
``GREENMON_TINY_GGUF`` (default /work/llama-build/tiny.gguf); without them the plan runs
the other two configurations and the JSON says why llama-cpp was left out.

    python bench/serving.py [--out DIR] [--repetitions 2] [--prompts 8] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, machine  # type: ignore[import-not-found]

LLAMA_PYTHON = os.environ.get("GREENMON_LLAMA_PYTHON", "/work/llama-venv/bin/python")
TINY_GGUF = os.environ.get("GREENMON_TINY_GGUF", "/work/llama-build/tiny.gguf")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def greenmon_argv() -> list[str]:
    found = shutil.which("greenmon")
    return [found] if found else [sys.executable, "-m", "greenmon.cli"]


def llama_missing() -> str | None:
    if not Path(LLAMA_PYTHON).exists():
        return f"no llama-cpp-python at {LLAMA_PYTHON} (GREENMON_LLAMA_PYTHON)"
    if not Path(TINY_GGUF).exists():
        return f"no GGUF at {TINY_GGUF} (GREENMON_TINY_GGUF)"
    probe = subprocess.run(
        [LLAMA_PYTHON, "-c", "import llama_cpp.server"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"llama_cpp.server does not import: {probe.stderr.strip()[-300:]}"
    return None


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def make_plan(args: argparse.Namespace, with_llama: bool) -> str:
    serve_port, llama_port = free_port(), free_port()
    configurations = ["torch/cpu", "http/greenmon-serve"] + (
        ["http/llama-cpp"] if with_llama else []
    )
    serve = [*greenmon_argv(), "serve", "tiny", "--engine", "torch", "--provider", "cpu",
             "--port", str(serve_port), "--max-batch-size", "4"]  # fmt: skip
    text = f"""
name = "serving-bench"
models = ["tiny"]
configurations = {toml_list(configurations)}
workload = "gaissa-164"
prompts = {args.prompts}
max_new_tokens = {args.max_new_tokens}
repetitions = {args.repetitions}
seed = 0
warmup_requests = 4

[cooldown]
before_s = {args.cooldown_s}
after_s = 1

[factors]
concurrency = [1, 4]

[servers.greenmon-serve]
base_url = "http://127.0.0.1:{serve_port}/v1"
model = "tiny"
command = {toml_list(serve)}
ready_timeout_s = 300
extra = {{ return_token_ids = true }}
"""
    if with_llama:
        # interrupt_requests false: by default the server cuts a streaming answer short
        # when the next request arrives, which a concurrency level would do all the time.
        llama = [LLAMA_PYTHON, "-m", "llama_cpp.server", "--model", TINY_GGUF,
                 "--model_alias", "tiny", "--host", "127.0.0.1", "--port", str(llama_port),
                 "--n_ctx", "512", "--n_threads", "2", "--interrupt_requests", "False"]  # fmt: skip
        text += f"""
[servers.llama-cpp]
base_url = "http://127.0.0.1:{llama_port}/v1"
model = "tiny"
command = {toml_list(llama)}
ready_timeout_s = 300
"""
    return text


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({done.returncode}): {done.stderr[-3000:]}")
    return done


def figures(db: Path) -> dict[str, Any]:
    from greenmon.store import Store

    with Store.open(db, read_only=True) as store:
        columns, rows = store.query(
            """SELECT configuration, factors->>'concurrency' AS concurrency, count(*) AS units,
                      median(j_per_token) AS j_per_token,
                      median(steady_j_per_token) AS steady_j_per_token,
                      median(throughput_tok_s) AS throughput_tok_s,
                      median(latency_p50_s) AS latency_p50_s,
                      median(latency_p90_s) AS latency_p90_s,
                      median(ttft_p50_s) AS ttft_p50_s, median(tpot_p50_s) AS tpot_p50_s,
                      median(steady_s) AS steady_s, median(duration_s) AS duration_s,
                      median(load_s) AS load_s, sum(token_count_mismatches) AS mismatches,
                      sum(requests) AS requests, sum(tokens_out) AS tokens_out,
                      list_distinct(flatten(list(flags))) AS flags,
                      min(fidelity_share) AS min_fidelity_share
               FROM unit_results WHERE status = 'done' GROUP BY ALL ORDER BY ALL"""
        )
        per_level = [dict(zip(columns, r, strict=True)) for r in rows]
        _, failed = store.query("SELECT configuration, reason FROM unit_results "
                                "WHERE status <> 'done'")  # fmt: skip
        columns, rows = store.query(
            """SELECT u.provider AS server, q.tokens_requested, q.tokens_out,
                      q.usage_tokens_out, count(*) AS requests
               FROM requests q JOIN units u USING (experiment_id, unit_id)
               WHERE u.engine = 'http' AND q.phase = 'measure' GROUP BY ALL ORDER BY ALL"""
        )
        counts = [dict(zip(columns, r, strict=True)) for r in rows]
    return {"per_level": per_level, "token_counts": counts,
            "failed_units": [list(f) for f in failed]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="keep the database and report here")
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--cooldown-s", type=float, default=2.0)
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="greenmon-serving-"))
    out.mkdir(parents=True, exist_ok=True)
    missing = llama_missing()
    plan = out / "serving.toml"
    plan.write_text(make_plan(args, missing is None))
    db = out / "serving.duckdb"
    env_note = {"PYTHONPATH": os.environ.get("PYTHONPATH")}
    started = time.monotonic()
    greenmon = greenmon_argv()
    run([*greenmon, "run", str(plan), "--db", str(db)], out)
    run_s = time.monotonic() - started
    run([*greenmon, "analyze", "--db", str(db)], out)
    run([*greenmon, "report", "--db", str(db), "--out", str(out / "report")], out)
    from greenmon.analysis.data import latest_experiment, load_results
    from greenmon.analysis.serving import serving_cost, serving_table
    from greenmon.store import Store

    with Store.open(db, read_only=True) as store:
        frame = load_results(store, latest_experiment(store))
    done = frame[frame["status"] == "done"]
    cost = serving_cost(serving_table(done))
    report_md = (out / "report" / "report.md").read_text()
    print(json.dumps({
        "machine": machine(),
        "env": env_note,
        "third_party": "llama-cpp" if missing is None else f"left out: {missing}",
        "out": str(out),
        "run_s": round(run_s, 1),
        **figures(db),
        "serving_cost": cost.to_dict(orient="records"),
        "report_has_serving_section": "## Serving under load" in report_md,
        "aims": {
            "exact_tokens": "every request of a server that accepts min_tokens/ignore_eos "
                            "streams exactly max_new_tokens, and usage agrees",
            "report": "energy per token, throughput and latency per level, and the cost of "
                      "serving over HTTP against in-process",
        },
    }, indent=2, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
