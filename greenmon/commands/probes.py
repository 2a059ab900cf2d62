"""``greenmon probes``: every known probe, whether it works here, and why not."""

from __future__ import annotations

import argparse
import json
from typing import Any

from greenmon.config import load_config, probe_module
from greenmon.probes.base import ProbeUnavailable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="TOML configuration file")
    parser.add_argument("--json", action="store_true", help="print as JSON")


def describe_probes(config_path: str | None) -> list[dict[str, Any]]:
    """Open each configured probe once, read its channels, close it."""
    config = load_config(config_path)
    report: list[dict[str, Any]] = []
    for name, options in config.probes.items():
        entry: dict[str, Any] = {"probe": name, "enabled": options.enabled}
        try:
            probe = probe_module(name).create(options)
            entry["rate_hz"] = options.rate_hz or probe.default_rate_hz
            entry["default_rate_hz"] = probe.default_rate_hz
            channels = probe.open()
            # How a probe that has more than one way in reached its source (RAPL: directly
            # or through the greenmon helper).
            describe_access = getattr(probe, "describe_access", None)
            entry["access"] = describe_access() if describe_access is not None else None
            probe.close()
        except ProbeUnavailable as error:
            entry.update(available=False, reason=str(error), channels=[])
        except Exception as error:
            entry.update(available=False, reason=f"{type(error).__name__}: {error}", channels=[])
        else:
            entry.update(
                available=True,
                reason=None,
                channels=[
                    {
                        "name": c.name,
                        "unit": c.unit,
                        "kind": c.kind,
                        "domain": c.domain,
                        "estimated": c.estimated,
                        "fallback_for": c.metadata.get("fallback_for"),
                    }
                    for c in channels
                ],
                findings=list(getattr(probe, "findings", [])),
            )
        report.append(entry)
    return report


def run(args: argparse.Namespace) -> int:
    report = describe_probes(args.config)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for entry in report:
        state = "available" if entry["available"] else "unavailable"
        if not entry["enabled"]:
            state += " (disabled in config)"
        rate = entry.get("rate_hz")
        access = f", read {entry['access']}" if entry.get("access") else ""
        print(f"{entry['probe']}: {state}" + (f", {rate:g} Hz" if rate else "") + access)
        if entry["reason"]:
            print(f"    why: {entry['reason']}")
        for finding in entry.get("findings", []):
            print(f"    finding: {finding}")
        for channel in entry["channels"]:
            marks = " [estimated]" if channel["estimated"] else ""
            if channel["fallback_for"]:
                fallback = channel["fallback_for"]
                marks = f" [estimated: a fallback, measured {fallback} channels come first]"
            domain = f", domain={channel['domain']}" if channel["domain"] else ""
            print(f"    {channel['name']} ({channel['unit']}, {channel['kind']}{domain}){marks}")
    return 0
