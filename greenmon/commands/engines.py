"""``greenmon engines``: every engine x provider on this machine, usable or not and why, and
which model architectures (decoder, encoder-decoder) each serves."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from greenmon.engines import describe_engines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
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
