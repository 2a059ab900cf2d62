"""``greenmon serve MODEL``: an OpenAI-compatible server around one of greenmon's engines."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from greenmon.errors import GreenmonError
from greenmon.serving import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
)


class ServeOptionError(GreenmonError):
    title = "Invalid serve option"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="built-in model (tiny), a local directory, or a Hub id")
    parser.add_argument(
        "--engine", default="torch",
        help="torch, onnx, openvino, torchscript, or package.module:Class",
    )  # fmt: skip
    parser.add_argument("--provider", default="cpu", help="cpu, cuda, or tensorrt (onnx)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--served-model-name", default=None,
        help="the name clients send as 'model' (default: MODEL)",
    )  # fmt: skip
    parser.add_argument(
        "--max-batch-size", type=int, default=8,
        help="requests waiting together run as one batch of at most this many (default 8)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-wait-ms", type=float, default=5.0,
        help="how long the first waiting request waits for others to join it (default 5)",
    )  # fmt: skip
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="an engine option, as in a plan's [engine_options.<engine>] (e.g. threads=2)",
    )  # fmt: skip
    parser.add_argument("--cache-dir", default=None, help="where exported models are cached")
    parser.add_argument(
        "--api-key", default=None,
        help="require 'Authorization: Bearer KEY' on every route but /health "
        "(default: $GREENMON_API_KEY; unset: no key needed)",
    )  # fmt: skip
    parser.add_argument(
        "--max-model-len", type=int, default=None,
        help="the context in tokens (prompt + max_tokens) a request may use "
        "(default: the model's, from its config)",
    )  # fmt: skip
    parser.add_argument(
        "--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
        help=f"requests that may wait for a batch; more are answered 429 with Retry-After "
        f"(default {DEFAULT_MAX_QUEUE})",
    )  # fmt: skip
    parser.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
        help=f"larger request bodies are answered 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )  # fmt: skip
    parser.add_argument(
        "--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_S, metavar="S",
        help="on SIGTERM, how long requests in flight may finish before they are cancelled "
        f"(default {DEFAULT_SHUTDOWN_TIMEOUT_S:g})",
    )  # fmt: skip
    parser.add_argument(
        "--config", default=None,
        help="greenmon TOML whose [probes.rapl] gives per-request energy (usage.energy_j)",
    )  # fmt: skip
    parser.add_argument(
        "--no-energy", action="store_true", help="do not attribute energy to requests"
    )


def _options(pairs: list[str]) -> dict[str, object]:
    import tomllib

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ServeOptionError(f"--option {pair!r} is not KEY=VALUE (e.g. --option threads=2)")
        try:
            options[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            options[key] = value  # a bare word such as float32
    return options


def run(args: argparse.Namespace) -> int:
    from greenmon.serving import ServeOptions, load_served_engine, serve

    for flag, value, least in (
        ("--max-batch-size", args.max_batch_size, 1),
        ("--max-queue", args.max_queue, 1),
        ("--max-body-bytes", args.max_body_bytes, 1),
    ):
        if value < least:
            raise ServeOptionError(f"{flag} must be at least {least}")
    if args.max_model_len is not None and args.max_model_len < 2:
        raise ServeOptionError("--max-model-len must be at least 2 (one prompt token, one new)")
    if args.shutdown_timeout < 0:
        raise ServeOptionError("--shutdown-timeout must be 0 or more seconds")
    api_key = args.api_key if args.api_key is not None else os.environ.get("GREENMON_API_KEY")
    if api_key is not None and not api_key.strip():
        raise ServeOptionError(
            "the API key is empty: give --api-key KEY (or GREENMON_API_KEY), or unset it to "
            "serve without one"
        )
    # The server's own messages (shutdown: which requests finished, which were cancelled).
    logging.basicConfig(stream=sys.stderr, format="greenmon serve: %(message)s")
    logging.getLogger("greenmon.serve").setLevel(logging.INFO)
    served = load_served_engine(
        args.model, args.engine, args.provider, _options(args.option), cache_dir=args.cache_dir
    )
    name = args.served_model_name or args.model
    max_model_len = args.max_model_len or served.max_model_len
    context = f"context {max_model_len} tokens" if max_model_len else "context unchecked"
    metered, energy_note = (None, "per-request energy is off (--no-energy)")
    if not args.no_energy:
        from greenmon.config import load_config
        from greenmon.serve_energy import open_meter

        metered, energy_note = open_meter(load_config(args.config))
    print(
        f"greenmon serve: {name} ({args.engine}/{args.provider}) at "
        f"http://{args.host}:{args.port}/v1, batches of up to {args.max_batch_size}, "
        f"{context}{', API key required' if api_key else ''}",
        flush=True,
    )
    print(f"greenmon serve: {energy_note}", file=sys.stderr, flush=True)
    serve(
        served.engine,
        served.tokenizer,
        ServeOptions(
            name,
            args.max_batch_size,
            args.batch_wait_ms,
            max_model_len=max_model_len,
            api_key=api_key,
            max_queue=args.max_queue,
            max_body_bytes=args.max_body_bytes,
            shutdown_timeout_s=args.shutdown_timeout,
        ),
        host=args.host,
        port=args.port,
        metered=metered,
    )
    print("greenmon serve: stopped", file=sys.stderr)
    return 0
