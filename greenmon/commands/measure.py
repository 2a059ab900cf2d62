"""``greenmon measure [options] -- CMD ARGS``: a command's energy, like ``perf stat``.

The command runs as a child inside one window of the daemon that holds the database (or of
an in-process daemon composed as ``greenmon daemon`` composes its own, when none runs);
the report goes to stderr (or ``--output``), so the child keeps stdout.  ``--baseline S``
takes an idle window of S seconds first and subtracts its mean power; ``--repeat N`` runs
the command N times, ``--cooldown`` seconds apart, and reports the median of each figure
with a 95% confidence interval for the median: a percentile bootstrap (scipy.stats.bootstrap,
9,999 resamples, seed 0).  SIGINT, SIGTERM and SIGHUP are forwarded to the child; greenmon
exits with the child's status (128 + N when a signal N ended it), after the window of the
interrupted run has been closed and reported.

``greenmon measure --pid PID [--duration S]`` measures a process tree that already runs
(PID and its descendants) for S seconds, or until it exits or greenmon is interrupted.
Either way the report adds the tree's attributed energy (``attributed_cpu_j``,
``attributed_dram_j``): the machine's energy in each sampling interval times the tree's
share of busy CPU time in it (greenmon/attribution.py) - attributed, not measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO

from greenmon.api.messages import WindowResult
from greenmon.attribution import CpuShareSampler, ProcessAttribution, pid_alive
from greenmon.commands.common import add_db_argument
from greenmon.errors import GreenmonError

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999


class MeasureError(GreenmonError):
    title = "Cannot measure"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    parser.add_argument("--config", default=None, help="TOML configuration (in-process daemon)")
    parser.add_argument("--socket", default=None, help="the daemon's API socket")
    parser.add_argument("--name", default=None, help="the window's name (default: the command)")
    parser.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag (repeatable)"
    )
    parser.add_argument(
        "--baseline", type=float, default=None, metavar="S",
        help="take an idle window of S seconds first and subtract its mean power",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="run it N times")
    parser.add_argument(
        "--cooldown", type=float, default=2.0, metavar="S",
        help="seconds of idle between repetitions (default 2)",
    )  # fmt: skip
    parser.add_argument(
        "--pid", type=int, default=None, metavar="PID",
        help="measure this running process and its descendants (attributed energy)",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S",
        help="with --pid: measure S seconds (default: until the process exits or Ctrl-C)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="report as JSON")
    parser.add_argument("-o", "--output", default=None, help="write the report to this file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS")


def _parse_tags(items: Sequence[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MeasureError(f"--tag {item!r} must look like KEY=VALUE (e.g. --tag batch=8).")
        tags[key] = value
    return tags


class _Forwarder:
    """Forwards SIGINT / SIGTERM / SIGHUP to the running child; remembers that one came."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Forwarder:
        for signum in FORWARDED_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)


def _run_child(command: Sequence[str], forwarder: _Forwarder, window: Any = None) -> int:
    try:
        child = subprocess.Popen(list(command))
    except OSError as error:
        raise MeasureError(
            f"Cannot start {command[0]!r}: {error.strerror or error}. Check the command "
            "after `--` (a path, or a program on PATH)."
        ) from None
    if window is not None:
        # The child's tree is attributed from its first instant (greenmon/monitor.py
        # stops the sampler and computes the share when the window closes).
        window.sampler = CpuShareSampler([child.pid]).start()
    forwarder.child = child
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # pragma: no cover - the handler replaces SIGINT
                continue
    finally:
        forwarder.child = None


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _process_command(pid: int) -> list[str]:
    """The command line of a running process (its name where /proc hides the line)."""
    try:
        raw = open(f"/proc/{pid}/cmdline", "rb").read()  # noqa: SIM115 - one read
    except OSError:
        return [f"pid {pid}"]
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part] or [f"pid {pid}"]


def _measure_pid(args: argparse.Namespace, tags: dict[str, str]) -> int:
    """``--pid``: one window over a running tree, until --duration, its exit or a signal."""
    pid = args.pid
    if pid <= 0 or not pid_alive(pid):
        raise MeasureError(
            f"No process {pid} runs here: give the id of a running process to --pid "
            "(`pgrep NAME` finds it), or measure a command with `greenmon measure -- CMD`."
        )
    if args.duration is not None and not 0 < args.duration <= 86400:
        raise MeasureError(f"--duration must be between 0 and 86400 seconds, not {args.duration}.")
    command = _process_command(pid)
    name = args.name or os.path.basename(command[0])
    from greenmon.monitor import Monitor

    with (
        Monitor(db=args.db, config=args.config, socket=args.socket, pid=pid) as monitor,
        _Forwarder() as fw,
    ):
        baseline = None
        if args.baseline is not None:
            baseline = monitor.take_baseline(args.baseline, name=f"{name} baseline")
        window = monitor.open_window(name, {**tags, "pid": pid, "command": command})
        deadline = time.monotonic() + args.duration if args.duration is not None else math.inf
        try:
            while fw.received is None and time.monotonic() < deadline and pid_alive(pid):
                time.sleep(min(0.05, max(deadline - time.monotonic(), 0.0)))
        finally:
            result = monitor.close_window(window)
    report = _report(command, [result], baseline, 0, 1, [window.attribution])
    report["pid"] = pid
    _emit(args, report)
    return 128 + fw.received if fw.received is not None else 0


def _emit(args: argparse.Namespace, report: dict[str, Any]) -> None:
    if args.output:
        with open(args.output, "w") as out:
            _print_report(out, report, as_json=args.json)
    else:
        _print_report(sys.stderr, report, as_json=args.json)


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.pid is not None:
        if command:
            raise MeasureError(
                "Give either --pid PID (a process that runs) or a command after `--`, not both."
            )
        if args.repeat != 1:
            raise MeasureError("--repeat runs a command again; a running --pid cannot repeat.")
        return _measure_pid(args, _parse_tags(args.tag))
    if args.duration is not None:
        raise MeasureError(
            "--duration goes with --pid; a command after `--` is measured until it exits."
        )
    if not command:
        raise MeasureError(
            "Give the command to measure after `--`, e.g. `greenmon measure -- sleep 1`."
        )
    if args.repeat < 1:
        raise MeasureError(f"--repeat must be at least 1, not {args.repeat}.")
    if args.baseline is not None and not 0 < args.baseline <= 3600:
        raise MeasureError(f"--baseline must be between 0 and 3600 seconds, not {args.baseline}.")
    if args.cooldown < 0:
        raise MeasureError(f"--cooldown cannot be negative ({args.cooldown}).")
    tags = _parse_tags(args.tag)
    name = args.name or os.path.basename(command[0])
    if args.repeat > 1:
        _require_scipy()

    from greenmon.monitor import Monitor

    results: list[WindowResult] = []
    attributions: list[ProcessAttribution | None] = []
    baseline: WindowResult | None = None
    status = 0
    with Monitor(db=args.db, config=args.config, socket=args.socket) as monitor, _Forwarder() as fw:
        if args.baseline is not None:
            baseline = monitor.take_baseline(args.baseline, name=f"{name} baseline")
        for repetition in range(args.repeat):
            if repetition and args.cooldown:
                time.sleep(args.cooldown)
            if fw.received is not None:
                break
            run_tags: dict[str, Any] = {**tags, "command": command}
            if args.repeat > 1:
                run_tags["repetition"] = repetition
            window = monitor.open_window(name, run_tags)
            try:
                returncode = _run_child(command, fw, window)
            finally:
                results.append(monitor.close_window(window))
                attributions.append(window.attribution)
            status = _exit_status(returncode)
            if status != 0 or fw.received is not None:
                break
    if fw.received is not None and not results:
        status = 128 + fw.received  # stopped before the command ran (during the baseline)
    report = _report(command, results, baseline, status, args.repeat, attributions)
    _emit(args, report)
    return status


# -- the report ------------------------------------------------------------------------------


def _require_scipy() -> None:
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        raise MeasureError(
            "--repeat reports a bootstrap confidence interval, which needs scipy: "
            "`pip install 'greenmon[analysis]'` (or measure once, without --repeat)."
        ) from None


def median_ci(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """The median and a 95% percentile-bootstrap interval for it (None with one value)."""
    import statistics

    median = statistics.median(values)
    if len(values) < 2 or len(set(values)) < 2:
        return (
            median,
            (median if len(values) >= 2 else None),
            (median if len(values) >= 2 else None),
        )
    import numpy as np
    from scipy.stats import bootstrap

    result = bootstrap(
        (np.asarray(values, dtype=float),),
        np.median,
        confidence_level=CONFIDENCE,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    interval = result.confidence_interval
    return median, float(interval.low), float(interval.high)


def _figures(result: WindowResult, attribution: Any = None) -> dict[str, float]:
    """The numbers of one run that a repeat summarises, by name."""
    figures = {"duration_s": result.duration_s}
    if attribution is not None:
        for domain, value in attribution.attributed_j.items():
            figures[f"attributed_{domain}_j"] = value
    for domain, value in result.energy_j.items():
        figures[f"energy_{domain}_j"] = value
    for domain, value in result.dynamic_j.items():
        figures[f"dynamic_{domain}_j"] = value
    for domain, value in result.mean_power_w.items():
        figures[f"power_{domain}_w"] = value
    return figures


def _report(
    command: Sequence[str],
    results: Sequence[WindowResult],
    baseline: WindowResult | None,
    status: int,
    repeat: int,
    attributions: Sequence[ProcessAttribution | None] = (),
) -> dict[str, Any]:
    attributed = list(attributions) + [None] * (len(results) - len(attributions))
    runs = []
    for result, attribution in zip(results, attributed, strict=True):
        run = result.as_dict()
        if attribution is not None:
            # Attributed, not measured: the tree's share of the machine's figures.
            run.update(
                {k: v for k, v in attribution.as_dict().items() if k.startswith("attributed_")}
            )
            # flagged there ("attributed"); the run's own flags stay its validity flags
            run["attribution"] = attribution.as_dict()
        runs.append(run)
    report: dict[str, Any] = {
        "command": list(command),
        "exit_status": status,
        "runs": runs,
        "baseline": baseline.as_dict() if baseline else None,
        "flags": sorted({flag for r in runs for flag in r["flags"]}),
    }
    if repeat > 1 and results:
        pairs = list(zip(results, attributed, strict=True))
        names = sorted({k for r, a in pairs for k in _figures(r, a)})
        summary: dict[str, dict[str, Any]] = {}
        for key in names:
            values = [f[key] for r, a in pairs if key in (f := _figures(r, a))]
            median, low, high = median_ci(values)
            summary[key] = {"median": median, "ci_low": low, "ci_high": high, "n": len(values)}
        report["summary"] = {
            "statistic": "median",
            "interval": f"{CONFIDENCE:.0%} percentile bootstrap",
            "figures": summary,
        }
    return report


def _format_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.3f}"


def _print_report(out: TextIO, report: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2, default=str), file=out)
        return
    runs = report["runs"]
    what = " ".join(report["command"])
    n = len(runs)
    print(
        f"\n Energy stats for '{what}' ({n} run{'s' if n != 1 else ''}, "
        f"exit status {report['exit_status']}):\n",
        file=out,
    )
    if "summary" in report:
        figures = report["summary"]["figures"]
        print(f"  {'median':>14}  {'95% CI (bootstrap)':>27}", file=out)
        for key, item in figures.items():
            ci = f"[{_format_number(item['ci_low'])}, {_format_number(item['ci_high'])}]"
            print(f"  {_format_number(item['median']):>14}  {ci:>27}  {key}", file=out)
    elif runs:
        run = runs[0]
        for domain, energy_j in run["energy_j"].items():
            power_w = run["mean_power_w"].get(domain)
            dynamic = run["dynamic_j"].get(domain)
            extra = f"   {_format_number(dynamic)} J above baseline" if dynamic is not None else ""
            print(
                f"  {_format_number(energy_j):>14} J  energy {domain:<7}"
                f"  ({_format_number(power_w)} W){extra}",
                file=out,
            )
        attribution = run.get("attribution")
        if attribution is not None:
            share = attribution["cpu_time_share"]
            for domain in ("cpu", "dram", "gpu"):
                value = run.get(f"attributed_{domain}_j")
                if value is not None:
                    how = (
                        f"the process tree's share of busy CPU time: {share:.1%}"
                        if domain != "gpu"
                        else "the process tree's share of per-process GPU utilisation"
                    )
                    print(
                        f"  {_format_number(value):>14} J  attributed {domain:<7}  ({how})",
                        file=out,
                    )
        print(f"  {run['duration_s']:>14.6f} s  duration", file=out)
        if run["coverage"] is not None:
            print(f"  {run['coverage']:>14.3f}    coverage", file=out)
        # Counters are read at both edges; say where a stream had to be interpolated.
        if interpolated := run.get("interpolated"):
            print(
                f"  {'':>14}    energy interpolated at the edges for {', '.join(interpolated)}"
                " (a stream greenmon cannot ask for a reading)",
                file=out,
            )
    baseline = report["baseline"]
    if baseline:
        watts = ", ".join(f"{d} {w:.3f} W" for d, w in baseline["mean_power_w"].items())
        print(f"\n  baseline: {baseline['duration_s']:.2f} s idle, {watts}", file=out)
    print(f"\n  flags: {', '.join(report['flags']) or 'none'}\n", file=out)
