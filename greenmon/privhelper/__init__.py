"""The privileged helper: a client (``client``, standard library only) and the server that
``greenmon helper`` runs as root (``server``).

Every name is importable from ``greenmon.privhelper`` as before the split.  The client's
load with the package; the server's only when one is first used (PEP 562), so a daemon
that talks to the helper never loads the server's RAPL and NVML code, and the server's
imports never reach back into the daemon.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from greenmon.privhelper.client import (
    CPUFREQ_FILES,
    DEFAULT_SOCKET_PATH,
    IDLE_TIMEOUT_S,
    MAX_REQUEST_BYTES,
    NVML_SETTINGS,
    SOCKET_ENV,
    START_HELP,
    HelperClient,
    HelperRefused,
    HelperUnavailable,
    helper_answers,
    helper_socket_path,
)

if TYPE_CHECKING:
    from greenmon.privhelper.server import (
        Caller,
        Helper,
        HelperConfig,
        HelperServer,
        bind_socket,
        group_id,
        peer_credentials,
        serve,
        systemd_socket,
    )

_SERVER_NAMES = frozenset(
    {
        "Caller",
        "Helper",
        "HelperConfig",
        "HelperServer",
        "bind_socket",
        "group_id",
        "peer_credentials",
        "serve",
        "systemd_socket",
    }
)

__all__ = [
    "CPUFREQ_FILES",
    "DEFAULT_SOCKET_PATH",
    "IDLE_TIMEOUT_S",
    "MAX_REQUEST_BYTES",
    "NVML_SETTINGS",
    "SOCKET_ENV",
    "START_HELP",
    "Caller",
    "Helper",
    "HelperClient",
    "HelperConfig",
    "HelperRefused",
    "HelperServer",
    "HelperUnavailable",
    "bind_socket",
    "group_id",
    "helper_answers",
    "helper_socket_path",
    "peer_credentials",
    "serve",
    "systemd_socket",
]


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        return getattr(importlib.import_module("greenmon.privhelper.server"), name)
    raise AttributeError(f"module 'greenmon.privhelper' has no attribute {name!r}")
