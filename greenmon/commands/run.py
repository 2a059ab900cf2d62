"""``greenmon run PLAN``: run an experiment with a live progress line.

When a daemon holds the database, the plan is submitted to it (queued behind any plan it
runs) and followed over its API; Ctrl-C then detaches and the plan keeps running there.
When none does, a daemon is started in this process — the same composition as
``greenmon daemon`` (greenmon/daemon.py ``build_daemon``), serving the API for the whole
run — so ``greenmon status``, ``sql`` and ``tui`` attach to it from other terminals;
Ctrl-C, SIGTERM or SIGHUP then stop it in order and the experiment can be resumed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from greenmon.commands.common import (
    add_db_argument,
    format_table,
    greenmon_error_in,
    resolve_db,
)
from greenmon.config import Config, config_from_tables
from greenmon.daemon import Daemon, build_daemon, open_daemon_store
from greenmon.errors import DatabaseLockedError, GreenmonError, PlanError
from greenmon.estimates import domains_of, legend, mark
from greenmon.interference import busy_note
from greenmon.livepower import PowerMeter
from greenmon.plan import Plan, load_plan, parse_shard
from greenmon.plan.check import check_plan
from greenmon.protocols import RunnerControl
from greenmon.runner import Submission, summary_rows
from greenmon.store import Store

if TYPE_CHECKING:
    from greenmon.analysis.footprint import Pricing
    from greenmon.api.messages import PlanSubmitted, Progress, ResultRow

# How often the progress line is redrawn on a terminal, and written when not on one.
LINE_PERIOD_S = 1.0
LOG_PERIOD_S = 10.0
# A daemon stopping after its last plan lets go of the file within seconds (its last flush
# and checkpoint); a client that outlived its API waits this long to read the results.
FILE_RELEASE_WAIT_S = 30.0
# An experiment's status once it ended (Store.end_experiment), which is its outcome.
ENDED = ("done", "failed", "cancelled", "interrupted")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser, socket=True)
    parser.add_argument("plan", help="plan file (TOML)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="only resume the unfinished experiment of this plan (found by name and hash)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="start a new experiment even though the plan changed or already finished",
    )
    parser.add_argument("--quiet", action="store_true", help="no live progress line")
    # one deterministic part of the plan's units, for campaigns across machines.
    parser.add_argument(
        "--shard", default=None, metavar="K/N",
        help="run only the K-th (from 0) of N parts of the units; 'auto' inside a SLURM array",
    )  # fmt: skip
    # -- carbon and cost in the summary (greenmon/analysis/footprint.py) --
    parser.add_argument(
        "--config", default=None,
        help="config file whose [report] table sets carbon intensity and electricity price "
        "for the summary (the daemon's probes come from the plan)",
    )  # fmt: skip


def probes_config(plan: Plan) -> Config:
    """The daemon config for a plan: its [probes.*] tables, as in a config file; errors
    name the plan's own lines."""
    return config_from_tables({"probes": plan.spec.probes}, plan.path, plan.text)


def progress_line(progress: Progress, meter: PowerMeter | None = None) -> str:
    unit = progress.unit
    parts = [f"unit {progress.unit_index}/{progress.units_total}"]
    if progress.status == "paused":
        parts.append("paused")
    if unit is not None:
        parts.append(f"{unit.model} {unit.configuration} rep {unit.repetition}")
    if progress.phase:
        phase = progress.phase
        if progress.phase_remaining_s is not None:
            phase += f" {progress.phase_remaining_s:.0f}s"
        parts.append(phase)
    if progress.phase == "measure":
        parts.append(f"request {progress.request_index}/{progress.requests_total}")
    if meter is not None:
        parts += [power.text() for power in meter.by_domain()]
    if progress.eta_s is not None:
        parts.append(f"ETA {progress.eta_s / 60:.1f} min")
    return " | ".join(parts)


class ProgressPrinter:
    """The live line on stderr: redrawn in place on a terminal, logged every 10 s if not.

    A terminal that went away (SIGHUP, a closed SSH session) makes writes fail: printing
    then stops, and the run goes on to an orderly stop.
    """

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.interactive = sys.stderr.isatty()
        self._last_s = 0.0
        self._open_line = False

    def show(self, line: str) -> None:
        now_s = time.monotonic()
        period_s = LINE_PERIOD_S if self.interactive else LOG_PERIOD_S
        if self.quiet or now_s - self._last_s < period_s:
            return
        self._last_s = now_s
        if self.interactive:
            self._write("\r\033[K" + line)
            self._open_line = True
        else:
            self._write(line + "\n")

    def say(self, message: str) -> None:
        """A message of its own line (never over the progress line)."""
        self.end_line()
        self._write(message + "\n")

    def end_line(self) -> None:
        if self._open_line:
            self._write("\n")
            self._open_line = False

    def _write(self, text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except OSError:
            self.quiet = True


def announce(printer: ProgressPrinter, submission: PlanSubmitted, db: Path) -> None:
    experiment_id = submission.experiment_id
    done, total = submission.units_done, submission.units_total
    if submission.resumed:
        printer.say(f"resuming experiment {experiment_id}: {done} of {total} units done")
    else:
        printer.say(f"experiment {experiment_id}: {total} units")
    ahead = submission.queued_behind
    if ahead:
        printer.say(
            f"queued behind {len(ahead)} plan(s) in the daemon holding {db}: {', '.join(ahead)}"
        )
    printer.say(f"watch it from another terminal: greenmon tui --db {db}")


class RunInterrupted(Exception):
    """The experiment stopped before every unit ran; what finished is kept."""

    def __init__(self, experiment_id: str, status: str, summary: list[ResultRow]) -> None:
        super().__init__(status)
        self.experiment_id = experiment_id
        self.status = status
        self.summary = summary


def unwrap(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


# -- in this process ---------------------------------------------------------------------


async def run_experiment(
    plan: Plan,
    db: Path,
    *,
    resume: bool,
    force: bool,
    quiet: bool,
    socket_path: str | Path | None = None,
    library_log: bool = False,
    **runner_options: Any,
) -> tuple[str, list[ResultRow]]:
    """Start a daemon on ``db`` in this process, run ``plan`` in it, stop when it ends.

    The daemon serves its API for the whole run.  Raises RunInterrupted when the plan
    did not finish (a signal, a cancel from the TUI, a failure before the first unit).
    ``library_log``: library log records and warnings go to the events table and
    ``<db>.log`` instead of the terminal (the commands; tests keep Python's defaults).
    """
    from greenmon.api.server import ApiOptions
    from greenmon.liblog import library_logs

    printer = ProgressPrinter(quiet)
    config = probes_config(plan)
    store = open_daemon_store(db, config)
    try:
        daemon = build_daemon(
            store,
            config,
            api=ApiOptions(socket_path=Path(socket_path) if socket_path else None),
            runner_options=runner_options,
        )
        logs = (
            library_logs(daemon.library_event, f"{db}.log")
            if library_log
            else contextlib.nullcontext()
        )
        with logs:
            submission, refused = await _run_daemon_with_plan(
                daemon, plan, db, printer, force=force, resume=resume
            )
        printer.end_line()
        if refused is not None:
            raise refused
        assert submission is not None
        experiment_id = submission.experiment_id
        summary = _runner(daemon).summary_rows(experiment_id)
        outcome = submission.outcome or "interrupted"
        if outcome != "done":
            raise RunInterrupted(experiment_id, outcome, summary)
        return experiment_id, summary
    finally:
        store.close()


async def _run_daemon_with_plan(
    daemon: Daemon, plan: Plan, db: Path, printer: ProgressPrinter, *, force: bool, resume: bool
) -> tuple[Submission | None, PlanError | None]:
    """Run ``daemon`` until ``plan``, submitted to its runner, ends (or is refused), then
    stop it: (the submission, or the PlanError that refused it)."""
    submission: Submission | None = None
    refused: PlanError | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(daemon.run)
        await daemon.started.wait()
        try:
            submission = await _runner(daemon).submit_plan(plan, force=force, resume=resume)
        except PlanError as error:
            refused = error
        else:
            announce(printer, submission.submitted([]), db)  # nothing runs before it here
            await _follow_here(daemon, submission, printer)
        daemon.request_stop()
    return submission, refused


def _runner(daemon: Daemon) -> RunnerControl:
    if daemon.runner is None:
        raise GreenmonError("the daemon stopped before its runner started")
    return daemon.runner


async def _follow_here(daemon: Daemon, submission: Submission, printer: ProgressPrinter) -> None:
    """Print progress until the plan ends, then serve plans others queued meanwhile."""
    from greenmon.api.snapshot import channel_table, channel_values

    runner = _runner(daemon)
    meter = PowerMeter(channel_table(daemon))
    while not submission.done.is_set() and not daemon.stopping:
        meter.ingest(channel_values(daemon))
        if runner.current is submission:
            printer.show(progress_line(runner.progress(), meter))
        with anyio.move_on_after(0.25):
            await submission.done.wait()
    if runner.busy and not daemon.stopping:
        printer.say(
            f"{len(runner.queue) + (runner.current is not None)} plan(s) submitted by other "
            "clients are still queued here; this process serves them until they finish "
            "(Ctrl-C stops it; they resume when run again)."
        )
        while runner.busy and not daemon.stopping:
            await anyio.sleep(0.5)


# -- through a running daemon ------------------------------------------------------------


async def follow_remote(
    socket_path: Path, plan: Plan, db: Path, *, resume: bool, force: bool, quiet: bool
) -> tuple[str, str, list[ResultRow]]:
    """Submit to the daemon at ``socket_path`` and follow the plan: (id, outcome, summary)."""
    from greenmon.api.client import ApiClient
    from greenmon.api.errors import DaemonUnreachable
    from greenmon.api.messages import Progress

    printer = ProgressPrinter(quiet)
    async with ApiClient(socket_path) as client:
        path = str(plan.path.resolve()) if plan.path else None
        shard = f"{plan.shard.index}/{plan.shard.count}" if plan.shard else None
        submission = await client.submit(
            plan.text, path, force=force, resume=resume, shard=shard
        )
        experiment_id = submission.experiment_id
        announce(printer, submission, db)
        if plan.spec.probes:
            printer.say(
                "note: the plan's [probes.*] tables are not used: the running daemon samples "
                "with its own configuration"
            )
        meter = PowerMeter((await client.status()).channels)
        outcome: str | None = None
        try:
            async for snap in client.stream():
                progress = snap.progress or Progress()
                ended = [f for f in progress.finished if f.experiment_id == experiment_id]
                if ended:
                    outcome = str(ended[0].outcome)
                    break
                meter.ingest(snap.values)
                if progress.experiment_id == experiment_id:
                    printer.show(progress_line(progress, meter))
        except DaemonUnreachable:
            pass  # the file says below whether the plan ended first
        printer.end_line()
        try:
            if outcome is None:
                raise DaemonUnreachable("the stream ended before the plan's outcome")
            summary = await client.experiment_results(experiment_id)
        except DaemonUnreachable:
            # The daemon ended, perhaps as the plan did (a `greenmon run` hosting it stops
            # when its queue is empty, and can go before its last snapshot reaches this
            # client): the file says how the plan ended once the daemon lets go of it.
            status, summary = await anyio.to_thread.run_sync(result_from_file, db, experiment_id)
            outcome = status if status in ENDED else None
        if outcome is None:
            printer.say("the daemon stopped before the plan ended; run the same command to resume")
        return experiment_id, outcome or "interrupted", summary


def result_from_file(
    db: Path, experiment_id: str, wait_s: float = FILE_RELEASE_WAIT_S
) -> tuple[str | None, list[ResultRow]]:
    """(status, summary) of ``experiment_id`` read from ``db`` itself, waiting up to
    ``wait_s`` for a daemon that is stopping to release it; (None, []), said, if it is
    still held then."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with Store.open(db, read_only=True) as store:
                rows = store.execute(
                    "SELECT status FROM experiments WHERE experiment_id = ?", [experiment_id]
                )
                return (str(rows[0][0]) if rows else None), summary_rows(store, experiment_id)
        except DatabaseLockedError:
            if time.monotonic() > deadline:
                print(
                    f"greenmon: {db} is still held by a daemon; its results are not shown "
                    f"here. Read them later with `greenmon status --db {db}`.",
                    file=sys.stderr,
                )
                return None, []
            time.sleep(0.2)


# -- the command ---------------------------------------------------------------------------


def _figure(value: Any) -> str:
    """A summary cell as format_table writes it, so a mark can follow."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def print_summary(db: Path, experiment_id: str, summary: list[ResultRow]) -> None:
    columns = [
        "configuration",
        "units",
        "median_energy_j",
        "median_duration_s",
        "median_j_per_token",
        "flags",
    ]
    # the summary's columns by name: the table's header is the wire's field names
    rows = [
        [
            ",".join(row.flags) if c == "flags"
            else mark(_figure(getattr(row, c)), c, domains_of(row.estimated_domains))
            for c in columns
        ]
        for row in summary
    ]  # fmt: skip
    print(f"experiment {experiment_id}: medians per configuration over finished units")
    print(format_table(columns, rows))
    note = legend(set().union(*(domains_of(r.estimated_domains) for r in summary)))
    if note:
        print(note)
    print(f'database: {db}  (greenmon sql --db {db} "SELECT * FROM unit_results")')


# -- carbon and cost in the summary: one call each in ``run`` --------------------------


def _pricing(args: argparse.Namespace) -> Pricing | None:
    from greenmon.commands.analyze import load_pricing

    return load_pricing(getattr(args, "config", None))


def print_footprint(pricing: Pricing | None, summary: list[ResultRow]) -> None:
    """CO2e and cost per configuration under the summary (nothing without [report])."""
    if pricing is None:
        return
    from greenmon.analysis.footprint import summary_lines

    for line in summary_lines(pricing, summary, time.time_ns()):
        print(line)


# -- end of carbon and cost -------------------------------------------------------------


def _stopped_early(db: Path, stopped: RunInterrupted) -> int:
    print_summary(db, stopped.experiment_id, stopped.summary)
    print(
        f"greenmon: experiment {stopped.experiment_id} {stopped.status} before every unit "
        "ran; finished units are kept. Run the same command again to resume it.",
        file=sys.stderr,
    )
    return 130 if stopped.status == "interrupted" else 1


def say_if_busy(plan: Plan) -> None:
    """A machine busy with other work is said before the first unit, not found
    in the results afterwards."""
    busy = busy_note(
        plan.spec.cooldown.background_cpu_percent_max,
        plan.spec.cooldown.wait_for_quiet_s,
        host_options=plan.spec.probes.get("host"),
    )
    if busy:
        print(f"greenmon: warning: {busy}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from greenmon.api.client import find_daemon
    from greenmon.api.sockets import resolve_socket_path

    plan = load_plan(args.plan)
    if args.shard is not None:
        plan = dataclasses.replace(plan, shard=parse_shard(args.shard))
    # deep: an unknown model or a broken workload file stops here, with the reason, rather
    # than failing every unit of an experiment that then reports nothing.
    check = check_plan(plan, deep=True)
    if check.problems:
        raise GreenmonError(" ".join(check.problems), title="Plan cannot run here")
    db = resolve_db(args.db)
    pricing = _pricing(args)  # a bad [report] table stops here, before any unit runs
    say_if_busy(plan)
    started = time.monotonic()
    if find_daemon(db, args.socket) is not None:
        socket_path = resolve_socket_path(args.socket, db)
        try:
            experiment_id, outcome, summary = anyio.run(
                lambda: follow_remote(
                    socket_path, plan, db, resume=args.resume, force=args.force, quiet=args.quiet
                )
            )
        except KeyboardInterrupt:
            print(
                f"\ndetached: the plan keeps running in the daemon holding {db}. Follow it "
                f"with `greenmon tui --db {db}`; cancel it there (c c) or with "
                f"`greenmon cancel --db {db}`.",
                file=sys.stderr,
            )
            return 130
        if outcome != "done":
            return _stopped_early(db, RunInterrupted(experiment_id, outcome, summary))
    else:
        try:
            experiment_id, summary = anyio.run(
                lambda: run_experiment(
                    plan,
                    db,
                    resume=args.resume,
                    force=args.force,
                    quiet=args.quiet,
                    socket_path=args.socket,
                    library_log=True,
                )
            )
        except RunInterrupted as stopped:
            return _stopped_early(db, stopped)
        except BaseExceptionGroup as group:
            inner = greenmon_error_in(group)
            if inner is not None:
                raise inner from None
            raise
    print_summary(db, experiment_id, summary)
    print_footprint(pricing, summary)
    print(f"took {time.monotonic() - started:.0f} s")
    return 0
