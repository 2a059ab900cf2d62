"""``greenmon cancel``: cancel the plan running (or one queued) in the daemon of a file."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from greenmon.commands.common import add_db_argument, resolve_db
from greenmon.errors import GreenmonError

if TYPE_CHECKING:
    from greenmon.api.messages import ControlReply


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser, socket=True)
    parser.add_argument(
        "--experiment", default=None, help="a queued experiment's id (default: the running one)"
    )


def run(args: argparse.Namespace) -> int:
    from greenmon.api.client import call_daemon, find_daemon

    db = resolve_db(args.db)
    client = find_daemon(db, args.socket)
    if client is None:
        raise GreenmonError(
            f"No greenmon daemon holds {db}, so no plan runs there. An interrupted experiment "
            "stays resumable: `greenmon run PLAN` resumes it.",
            title="Nothing to cancel",
        )
    answer: ControlReply = call_daemon(client, lambda c: c.cancel(args.experiment))
    progress = answer.progress
    which = args.experiment or (progress.experiment_id if progress is not None else None)
    print(f"cancel requested for experiment {which}; finished units are kept")
    return 0
