"""Fixtures for the window tests: a short socket directory and a powered fake RAPL tree."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.measure.support import MarkedPower


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for sockets (a Unix socket path has a 108-byte limit)."""
    path = Path(tempfile.mkdtemp(prefix="gm15-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def marked_power(tmp_path: Path) -> Iterator[MarkedPower]:
    source = MarkedPower(tmp_path / "powercap", tmp_path / "busy.marker")
    source.start()
    yield source
    source.stop()
