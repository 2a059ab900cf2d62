"""``greenmon tui``: watch a daemon live; start one in-process when none runs."""

from __future__ import annotations

import argparse
import sys

from greenmon.commands.common import add_db_argument, resolve_db
from greenmon.errors import GreenmonError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    parser.add_argument("--config", default=None, help="TOML configuration (in-process daemon)")
    parser.add_argument(
        "--socket", default=None, help="the daemon's API socket (default: the runtime dir)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        from greenmon.tui.app import GreenmonApp
    except ImportError as error:
        raise GreenmonError(
            f"The TUI needs textual and textual-plotext ({error}). Install them with "
            "`pip install 'greenmon[tui]'`.",
            title="TUI not installed",
        ) from None
    from greenmon.api import ApiClient, ApiOptions, find_daemon, resolve_socket_path
    from greenmon.config import load_config

    socket_path = resolve_socket_path(args.socket)
    client = find_daemon(socket_path)
    background = None
    if client is None:
        from greenmon.tui.embedded import BackgroundDaemon

        config = load_config(args.config)
        db_path = resolve_db(args.db, config.daemon.db)
        background = BackgroundDaemon(db_path, config, ApiOptions(socket_path=socket_path))
        print(
            f"greenmon tui: no daemon runs; starting one in-process on {db_path}", file=sys.stderr
        )
        background.start()
        client = ApiClient(socket_path)
    elif args.db:
        print(
            f"greenmon tui: a daemon already runs at {socket_path}; attaching to it "
            "(--db is ignored: the daemon owns its file).",
            file=sys.stderr,
        )
    app = GreenmonApp(client, owns_daemon=background is not None, where=str(socket_path))
    try:
        message = app.run()
    finally:
        if background is not None:
            summary = background.stop()
            if summary is not None:
                print(
                    f"session {summary.session_id}: {summary.duration_s:.1f} s, "
                    f"{summary.samples_written} samples written",
                    file=sys.stderr,
                )
    if message:
        print(message)
    return 0
