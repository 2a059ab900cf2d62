"""``greenmon daemon``: the daemon headless — probes, writer, experiment runner and API.

It samples until stopped, takes plans (`greenmon run PLAN --db FILE` submits to it) and
serves the local API for `greenmon status`, `sql` and `tui`.
"""

from __future__ import annotations

import argparse
import sys

import anyio

from greenmon.commands.common import add_db_argument, greenmon_error_in, resolve_db
from greenmon.config import load_config
from greenmon.daemon import DaemonSummary, build_daemon, open_daemon_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser, socket=True)
    parser.add_argument("--config", default=None, help="TOML configuration file")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (default: run until SIGINT or SIGTERM)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def summary_lines(summary: DaemonSummary) -> list[str]:
    lines = [
        f"session {summary.session_id}: {summary.duration_s:.1f} s, "
        f"{summary.samples_written} samples written"
    ]
    for probe in summary.probes:
        if probe.state == "unavailable":
            lines.append(f"  {probe.probe:<12} unavailable: {probe.reason}")
            continue
        p99 = probe.jitter_p99_us
        lines.append(
            f"  {probe.probe:<12} {probe.state:<8} {probe.achieved_hz:.2f}/"
            f"{probe.target_hz:g} Hz, {probe.samples} samples, "
            f"{probe.missed_ticks} missed ticks, {probe.errors} errors"
            + (f", p99 jitter {p99:.0f} us" if p99 is not None else "")
            + (f", last error: {probe.last_error}" if probe.last_error else "")
        )
    return lines


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path = resolve_db(args.db, config.daemon.db)
    with open_daemon_store(path, config) as store:
        from greenmon.api.server import ApiOptions

        daemon = build_daemon(store, config, api=ApiOptions(socket_path=args.socket))

        summary_holder: list[DaemonSummary] = []

        async def capture() -> None:
            async with anyio.create_task_group() as group:

                async def run_daemon() -> None:
                    summary_holder.append(await daemon.run(args.duration))

                group.start_soon(run_daemon)
                await daemon.started.wait()
                print(
                    f"greenmon daemon started: {path}, session {daemon.session_id}, "
                    f"{len(daemon.samplers)} probes sampling, API {daemon.socket_path}; "
                    f"submit plans with `greenmon run PLAN --db {path}`",
                    file=sys.stderr,
                    flush=True,
                )

        try:
            # Library logs (engines run in this process) go to the events table and
            # <db>.log, as under `greenmon run`.
            from greenmon.liblog import library_logs

            with library_logs(daemon.library_event, f"{path}.log"):
                anyio.run(capture)
        except BaseExceptionGroup as group:
            # A socket path taken, a full disk: shown as one paragraph, not a traceback.
            error = greenmon_error_in(group)
            if error is not None:
                raise error from None
            raise
        summary = summary_holder[0]
    if args.json:
        from greenmon.api.wire import dumps

        print(dumps(summary, indent=2))
    else:
        print("\n".join(summary_lines(summary)))
    return 0
