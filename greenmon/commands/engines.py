"""``greenmon engines``: every engine x provider on this machine, usable or not and why, and
which model architectures (decoder, encoder-decoder, text and image classifiers) each
serves.  ``greenmon engines install mxnet`` makes the virtual environment an engine that
cannot share greenmon's runs in (greenmon/engines/environments.py)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from greenmon.engines import describe_engines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "action", nargs="?", choices=["install"],
        help="install: make an engine's own environment in greenmon's cache",
    )  # fmt: skip
    parser.add_argument("name", nargs="?", help="the engine whose environment to make (mxnet)")


def install(name: str | None) -> int:
    from greenmon.engines.environments import RECIPES, env_dir, install_environment
    from greenmon.errors import EngineError

    if name not in RECIPES:
        raise EngineError(
            f"greenmon engines install takes an engine with an environment of its own "
            f"({', '.join(RECIPES)}), not {name!r}; the other engines install with pip "
            "(greenmon[cpu], greenmon[tensorflow])",
            title="Unknown engine environment",
        )
    print(f"making {env_dir(name)} ({' '.join(RECIPES[name])}) ...", flush=True)
    record = install_environment(name)
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    print(f"{name}: installed ({versions}) in {record['install_s']:.0f} s")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "install":
        return install(args.name)
    statuses = describe_engines()
    if args.json:
        print(json.dumps([asdict(s) for s in statuses], indent=2))
        return 0
    shown_versions: set[str] = set()
    for status in statuses:
        if status.engine not in shown_versions:
            shown_versions.add(status.engine)
            versions = ", ".join(f"{k} {v or 'absent'}" for k, v in status.versions.items())
            print(f"{status.engine}  ({versions})")
        mark = "usable" if status.usable else "not usable"
        line = f"  {status.provider:<9} {mark}"
        if status.reason:
            line += f": {status.reason}"
        print(line)
        for architecture, note in status.architectures.items():
            print(f"    serves {architecture}" + (f" ({note})" if note else ""))
    return 0
