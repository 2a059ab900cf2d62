"""Fixtures shared by the API tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from greenmon.api import ApiOptions
from greenmon.config import parse_config
from greenmon.tui.embedded import BackgroundDaemon
from tests.api.fakes import short_socket_dir
from tests.fakes.probes import CountingProbe


@pytest.fixture
def background(db_path: Path) -> Iterator[tuple[BackgroundDaemon, Path]]:
    """A daemon serving its API from a background thread, as `greenmon tui` starts one."""
    with short_socket_dir() as directory:
        path = directory / "d.sock"
        daemon = BackgroundDaemon(
            db_path, parse_config(""), ApiOptions(socket_path=path),
            probes={"counting": CountingProbe()},
        )  # fmt: skip
        daemon.start()
        try:
            yield daemon, path
        finally:
            daemon.stop()
