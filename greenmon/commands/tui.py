"""``greenmon tui``: watch the daemon of a database live; start one in-process when none runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from greenmon.commands.common import add_db_argument, resolve_db
from greenmon.errors import GreenmonError

if TYPE_CHECKING:
    from greenmon.api.client import ApiClient
    from greenmon.tui.app import GreenmonApp
    from greenmon.tui.embedded import BackgroundDaemon


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser, socket=True)
    parser.add_argument("--config", default=None, help="TOML configuration (in-process daemon)")
    parser.add_argument(
        "--new", action="store_true",
        help="create the database (and its directory) when it does not exist",
    )  # fmt: skip


def attach(args: argparse.Namespace) -> tuple[ApiClient, BackgroundDaemon | None, Path]:
    """A client for the daemon holding the file, starting one in-process when none does."""
    from greenmon.api.client import ApiClient, find_daemon
    from greenmon.api.sockets import resolve_socket_path
    from greenmon.config import load_config

    config = load_config(args.config)
    db_path = resolve_db(args.db, config.daemon.db)
    socket_path = resolve_socket_path(args.socket, db_path)
    client = find_daemon(db_path, args.socket)
    if client is not None:
        return client, None, socket_path
    if not db_path.exists() and not getattr(args, "new", False):
        # a mistyped path must not silently become a new, empty database
        raise GreenmonError(
            f"{db_path} does not exist and no daemon holds it. Check the path given to "
            "--db (or $GREENMON_DB), or add --new to create a new database there.",
            title="No such database",
        )
    # Only a TUI that hosts the daemon loads the server (and with it the store and DuckDB).
    from greenmon.api.server import ApiOptions
    from greenmon.tui.embedded import BackgroundDaemon

    background = BackgroundDaemon(db_path, config, ApiOptions(socket_path=socket_path))
    print(
        f"greenmon tui: no daemon holds {db_path}; starting one in this process (it stops "
        "when you quit; plans submitted to it stop with it and resume when run again)",
        file=sys.stderr,
    )
    background.start()
    return ApiClient(socket_path), background, socket_path


def build_app(args: argparse.Namespace) -> tuple[GreenmonApp, BackgroundDaemon | None]:
    """The app ``greenmon tui`` runs (tests drive the same one with Textual's pilot)."""
    try:
        from greenmon.tui.app import GreenmonApp
    except ImportError as error:
        raise GreenmonError(
            f"The TUI needs textual and textual-plotext ({error}). Install them with "
            "`pip install 'greenmon[tui]'`.",
            title="TUI not installed",
        ) from None
    client, background, socket_path = attach(args)
    app = GreenmonApp(client, owns_daemon=background is not None, where=str(socket_path))
    return app, background


def run(args: argparse.Namespace) -> int:
    app, background = build_app(args)
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
