"""The ``greenmon`` command.

Each subcommand lives in ``greenmon.commands.<module>`` and is imported only when chosen.
Errors derived from GreenmonError are printed as one paragraph with their title and exit
status 2; a KeyboardInterrupt exits with 130; a reader that closes the output early
(``greenmon sql ... | head -1``) ends the command quietly with 141, as SIGPIPE ends other
command-line tools.  Nothing else in greenmon prints.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import select
import sys
import threading
import time
from collections.abc import Sequence

from greenmon import __version__
from greenmon.errors import GreenmonError

# subcommand -> (module under greenmon.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "daemon": ("daemon", "run the probes headless and store samples until stopped"),
    "probes": ("probes", "list every known probe: available here or not, and why"),
    "sql": ("sql", "run a read-only SQL query on a greenmon database"),
    "plan": ("plan", "validate a plan file: `greenmon plan check PLAN`"),
    "run": ("run", "run an experiment plan headless, with live progress"),
    "demo": ("demo", "a complete small experiment on the embedded tiny model, then a report"),
    "engines": ("engines", "list every engine x provider: usable here or not, and why"),
    "cancel": ("cancel", "cancel the plan running (or a queued one) in the daemon of a file"),
    "status": ("status", "what the running daemon (or, without one, the database) is doing"),
    "tui": ("tui", "watch power, utilisation and plan progress live; pause, resume, cancel"),
    "analyze": ("analyze", "the study's tables and tests for an experiment, stored and printed"),
    "report": ("report", "write a self-contained HTML report (and Markdown) of an experiment"),
    "recommend": ("recommend", "the least-energy configuration under a latency/quality bound"),
    "export": ("export", "export samples, units, phases and results as Parquet or CSV"),
    "measure": ("measure", "run a command inside a measured window and print its energy"),
    "restore": ("restore", "put back GPU/CPU settings a killed or crashed run left changed"),
    "slurm": ("slurm", "write (and --submit) a SLURM array job running a plan's shards"),
    "merge": ("merge", "merge the shards of one plan (database files or exports) into one"),
    "helper": ("helper", "as root: read RAPL, apply hardware settings for a daemon run as a user"),
    "serve": ("serve", "serve a model over an OpenAI-compatible HTTP API with a greenmon engine"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greenmon",
        description="Measure the energy, time and utilisation of serving a language model.",
    )
    parser.add_argument("--version", action="version", version=f"greenmon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module_name, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


# The exit status of a command whose output pipe was closed: 128 + SIGPIPE, as a shell
# reports `yes | head -1`.
EXIT_CLOSED_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _main(list(sys.argv[1:] if argv is None else argv))
        release_native_objects()
        # Flush here, so a reader that went away is met inside this try, not in the
        # interpreter's own flush at exit (which would print "Exception ignored ...").
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        if not _stdout_pipe_closed():
            raise  # a socket's broken pipe, not the output's: a bug to show
        # Python's documented recipe: point stdout at devnull so the final flush at
        # exit has somewhere to go, and end without a word.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_CLOSED_PIPE


# How long a finished command waits for the daemon's stopping threads before it collects.
RELEASE_WAIT_S = 2.0


def release_native_objects() -> None:
    """Free, while DuckDB's module is still alive, what only garbage or a stopping thread holds.

    DuckDB's bindings (nanobind) report every one of their objects still alive when the
    interpreter tears them down as "leaked", 45 lines on stderr after the command's last
    word.  The owner closes what it opened (``Database.close`` lets go of its connection,
    whoever still holds the Database); this frees the rest: cycles the daemon's cancelled
    tasks left, and frames of its worker threads that have been told to stop but have not
    returned yet.  ``tests/journeys/test_exit_clean.py`` checks, as the last thing before
    the teardown, that no DuckDB object and no thread is left.
    """
    if "duckdb" not in sys.modules:
        return
    # The daemon's worker threads were told to stop when its event loop ended, but may not
    # have yet: until one returns, its frame still holds the last call it ran (a Store
    # method, and with it the connection), and what it drops then is only collected at
    # interpreter exit, after DuckDB's bindings are gone.  Wait for them, boundedly.
    deadline = time.monotonic() + RELEASE_WAIT_S
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    gc.collect()


def _stdout_pipe_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # stdout closed or not a real file
        return False


def _main(args_list: list[str]) -> int:
    parser = build_parser()
    # Parse the command name first, then let only that command's module add its options.
    if args_list and args_list[0] in COMMANDS:
        name = args_list[0]
        module = importlib.import_module(f"greenmon.commands.{COMMANDS[name][0]}")
        sub_parser = argparse.ArgumentParser(prog=f"greenmon {name}", description=COMMANDS[name][1])
        module.add_arguments(sub_parser)
        args = sub_parser.parse_args(args_list[1:])
        try:
            return int(module.run(args))
        except GreenmonError as error:
            print(f"greenmon: {error.title}: {error.message}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    parser.parse_args(args_list)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
