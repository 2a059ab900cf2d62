"""``greenmon serve MODEL``: an OpenAI-compatible server around one of greenmon's engines."""

from __future__ import annotations

import argparse
import sys

from greenmon.errors import GreenmonError


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

    if args.max_batch_size < 1:
        raise ServeOptionError("--max-batch-size must be at least 1")
    engine, tokenizer = load_served_engine(
        args.model, args.engine, args.provider, _options(args.option), cache_dir=args.cache_dir
    )
    name = args.served_model_name or args.model
    metered, energy_note = (None, "per-request energy is off (--no-energy)")
    if not args.no_energy:
        from greenmon.config import load_config
        from greenmon.serve_energy import open_meter

        metered, energy_note = open_meter(load_config(args.config))
    print(
        f"greenmon serve: {name} ({args.engine}/{args.provider}) at "
        f"http://{args.host}:{args.port}/v1, batches of up to {args.max_batch_size}",
        flush=True,
    )
    print(f"greenmon serve: {energy_note}", file=sys.stderr, flush=True)
    serve(
        engine,
        tokenizer,
        ServeOptions(name, args.max_batch_size, args.batch_wait_ms),
        host=args.host,
        port=args.port,
        metered=metered,
    )
    print("greenmon serve: stopped", file=sys.stderr)
    return 0
