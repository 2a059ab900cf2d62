"""The typed messages of the daemon's wire, shared by the server and its clients.

Each endpoint that a client reads field by field answers one of these msgspec Structs:
the server builds it, ``greenmon.api.wire`` encodes it, and a client decodes the JSON
back into the same Struct (``decode``), so a renamed or missing field fails at the
boundary with a message instead of as a KeyError deep in the TUI.  Imports nothing of the
server, the store or DuckDB, so a client that loads it stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


@dataclass
class SqlResult:
    """``POST /sql``: the columns, the rows (at most the row limit), and whether more
    rows were cut."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False


def decode(data: Any, kind: type[T]) -> T:
    """A message of type ``kind`` from its JSON-decoded form (``dict`` from the wire)."""
    return msgspec.convert(data, kind)
