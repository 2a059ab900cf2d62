"""The daemon's local API: an aiohttp server on a Unix socket, and its client.

The TUI, ``greenmon status``, ``greenmon sql`` and ``greenmon run`` talk to a running
daemon only through this API; the daemon alone holds the DuckDB file read-write.

One module per concern, every name importable from ``greenmon.api`` as before, and
loaded only when first used (PEP 562): a client (the TUI, ``greenmon status``) that
imports ``ApiClient`` from here loads neither the server nor the store nor DuckDB.
Modules inside greenmon import from the submodule itself, so the module graph says what
each one needs:

- ``sockets``: the socket path of a database file (``--socket``, ``$GREENMON_SOCKET``),
  and binding it 0600 in a 0700 directory.
- ``sql``: the read-only guard for ``POST /sql`` and what its refusals say.
- ``snapshot``: the lossy ``GET /stream`` hub (snapshots come from ``Daemon.snapshot``).
- ``server``: ``ApiServer``, its handlers, and ``api_service`` for the daemon.
- ``client``: ``ApiClient``, ``find_daemon`` and ``call_daemon`` for the CLI.
- ``messages``: the typed messages of the wire (msgspec Structs) both sides share.
- ``wire`` and ``errors``: JSON and the error shape both sides share.

Endpoints: ``GET /status``, ``GET /stream``, ``GET /events?limit=N``, ``POST /plans``,
``POST /pause``, ``POST /resume``, ``POST /cancel`` (``{"experiment_id": ...}`` for a
queued plan), ``GET /experiments`` (every experiment in the file),
``GET /experiments/{id}`` (its medians per configuration), ``POST /sql`` (read-only),
and the window endpoints (greenmon/windows_api.py).
Errors come back as ``{"error": message, "title": title, "kind": error class}``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenmon.api.client import (
        CLIENT_READ_BUFSIZE,
        ApiClient,
        call_daemon,
        find_daemon,
    )
    from greenmon.api.errors import (
        ApiError,
        DaemonUnreachable,
        QueryFailed,
        QueryRefused,
    )
    from greenmon.api.messages import (
        SqlResult,
    )
    from greenmon.api.server import (
        ApiOptions,
        ApiServer,
        api_service,
        experiment_rows,
    )
    from greenmon.api.snapshot import (
        STREAM_HZ,
        STREAM_WRITE_TIMEOUT_S,
        SnapshotHub,
        channel_table,
        channel_values,
        probe_summary,
        runner_progress,
        snapshot,
    )
    from greenmon.api.sockets import (
        bind_unix_socket,
        prepare_socket_path,
        resolve_socket_path,
        runtime_dir,
        socket_is_live,
        socket_path_for,
    )
    from greenmon.api.sql import (
        DAEMON_FILE_HOW,
        FILE_ACCESS_REFUSED,
        SQL_ROW_LIMIT,
        SQL_TIMEOUT_S,
        check_read_only,
        refused_by_confinement,
        run_read_only,
    )
    from greenmon.api.wire import (
        dumps,
    )

# Which submodule defines each name the package offers.
_SUBMODULE = {
    "CLIENT_READ_BUFSIZE": "client",
    "ApiClient": "client",
    "call_daemon": "client",
    "find_daemon": "client",
    "ApiError": "errors",
    "DaemonUnreachable": "errors",
    "QueryFailed": "errors",
    "QueryRefused": "errors",
    "ApiOptions": "server",
    "ApiServer": "server",
    "api_service": "server",
    "experiment_rows": "server",
    "STREAM_HZ": "snapshot",
    "STREAM_WRITE_TIMEOUT_S": "snapshot",
    "SnapshotHub": "snapshot",
    "channel_table": "snapshot",
    "channel_values": "snapshot",
    "probe_summary": "snapshot",
    "runner_progress": "snapshot",
    "snapshot": "snapshot",
    "bind_unix_socket": "sockets",
    "prepare_socket_path": "sockets",
    "resolve_socket_path": "sockets",
    "runtime_dir": "sockets",
    "socket_is_live": "sockets",
    "socket_path_for": "sockets",
    "DAEMON_FILE_HOW": "sql",
    "FILE_ACCESS_REFUSED": "sql",
    "SQL_ROW_LIMIT": "sql",
    "SQL_TIMEOUT_S": "sql",
    "check_read_only": "sql",
    "refused_by_confinement": "sql",
    "run_read_only": "sql",
    "SqlResult": "messages",
    "dumps": "wire",
}

__all__ = [
    "CLIENT_READ_BUFSIZE",
    "DAEMON_FILE_HOW",
    "FILE_ACCESS_REFUSED",
    "SQL_ROW_LIMIT",
    "SQL_TIMEOUT_S",
    "STREAM_HZ",
    "STREAM_WRITE_TIMEOUT_S",
    "ApiClient",
    "ApiError",
    "ApiOptions",
    "ApiServer",
    "DaemonUnreachable",
    "QueryFailed",
    "QueryRefused",
    "SnapshotHub",
    "SqlResult",
    "api_service",
    "bind_unix_socket",
    "call_daemon",
    "channel_table",
    "channel_values",
    "check_read_only",
    "dumps",
    "experiment_rows",
    "find_daemon",
    "prepare_socket_path",
    "probe_summary",
    "refused_by_confinement",
    "resolve_socket_path",
    "run_read_only",
    "runner_progress",
    "runtime_dir",
    "snapshot",
    "socket_is_live",
    "socket_path_for",
]


def __getattr__(name: str) -> Any:
    module = _SUBMODULE.get(name)
    if module is None:
        raise AttributeError(f"module 'greenmon.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"greenmon.api.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULE))
