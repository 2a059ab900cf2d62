"""The privileged helper: the few things greenmon needs root for, behind a Unix socket.

This module is its client and the protocol's constants: it imports nothing but the
standard library and greenmon.errors, so the daemon, its probes and its hardware knobs use
it without loading the server (greenmon/privhelper/server.py), and the server, which runs
as root, loads nothing of the daemon.

Since the 2020 PLATYPUS disclosure RAPL's ``energy_uj`` is readable by root only, and
cpufreq limits and NVML power limits and clocks need root too.  Rather than run the whole
daemon (models, engines, plans, an API) as root, ``greenmon helper`` runs as root and does
only this, for the members of one group:

- read every RAPL zone's counter at once (``rapl_channels``, ``rapl_read``), through the
  RAPL probe's own code (probes/rapl.py) over the helper's own powercap root;
- read, and write then read back, one hardware setting (``setting_read``,
  ``setting_write``) named by its restore-journal *target* (greenmon/hardware/).  The
  daemon keeps the journal in its database as it does when root: the previous value is
  committed before it asks the helper for a change.

Terms:
- *protocol*: one JSON object per line each way (NDJSON) over a Unix stream socket; a
  connection may carry any number of requests.  A request is ``{"op": ..., ...}``; a reply
  is ``{"ok": true, ...}`` or ``{"ok": false, "error": message, "refused": bool}``.
- *access*: the socket is owner root, group ``--group``, mode 0660 (0600 without a group):
  the kernel lets only root and that group connect.  The caller's credentials
  (``SO_PEERCRED``: pid, uid, gid) are checked again and logged with every change.
- *allowlist*: a cpufreq target is a ``cpuN/cpufreq/scaling_{governor,min_freq,max_freq}``
  file under the configured cpufreq root, with no ``..`` and still inside the root once
  symlinks are resolved; its value a governor the CPU lists or a frequency within its
  range.  An NVML target must name the helper's own NVML module (a client never chooses
  what root imports), one of the four settings, a GPU NVML knows, and a value within
  that GPU's power-limit constraints or supported clocks (or ``reset``).  An amdsmi
  target likewise names the helper's own amdsmi module, an AMD GPU's power cap, and a
  value within its range.  RAPL requests name no path at all: the helper reads the zones
  it found under its powercap root.
- *event*: every change (and every refusal) is one line on the helper's stderr (the
  journal, under systemd) with the caller's uid and pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

from greenmon.errors import GreenmonError

DEFAULT_SOCKET_PATH = "/run/greenmon-helper.sock"
SOCKET_ENV = "GREENMON_HELPER_SOCKET"
CPUFREQ_FILES = frozenset({"scaling_governor", "scaling_min_freq", "scaling_max_freq"})
NVML_SETTINGS = frozenset(
    {
        "power_limit_mw",
        "gpu_locked_clocks_mhz",
        "memory_locked_clocks_mhz",
        "applications_clocks_mhz",
    }
)
MAX_REQUEST_BYTES = 64 * 1024
# A connection with no complete request for this long is dropped (a client that hangs
# must not hold a helper thread forever).
IDLE_TIMEOUT_S = 600.0
START_HELP = (
    "start it as root: `sudo greenmon helper --group GROUP` with the daemon's user in GROUP, "
    "or `sudo systemctl enable --now greenmon-helper.socket` (README: Running as a user)"
)


class HelperUnavailable(GreenmonError):
    title = "greenmon helper unavailable"


class HelperRefused(GreenmonError):
    title = "Refused by the greenmon helper"


def helper_socket_path(path: str | Path | None = None) -> Path:
    """An explicit path, else ``$GREENMON_HELPER_SOCKET``, else /run/greenmon-helper.sock."""
    if path:
        return Path(path)
    return Path(os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET_PATH)


class HelperClient:
    """One connection to the helper, opened on first use, reopened once if it broke.

    Thread-safe: one request at a time per client (a sampler and the runner each keep their
    own client)."""

    def __init__(self, path: str | Path | None = None, *, timeout_s: float = 10.0) -> None:
        self.path = helper_socket_path(path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.path))
        except OSError as error:
            sock.close()
            raise HelperUnavailable(
                f"no greenmon helper answers at {self.path} ({error.strerror or error}): "
                + START_HELP
                + "."
            ) from None
        self._sock = sock

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request; the reply's fields.  HelperRefused when the helper says no."""
        line = json.dumps({"op": op, **fields}).encode() + b"\n"
        with self._lock:
            for attempt in (1, 2):
                if self._sock is None:
                    self._connect()
                assert self._sock is not None
                try:
                    # Plain send / recv: a buffered file object costs more CPU per read
                    # than the request itself (bench/probes.py, helper).
                    self._sock.sendall(line)
                    answer = self._sock.recv(65536)
                    while not answer.endswith(b"\n"):
                        more = self._sock.recv(65536)
                        if not more:
                            raise ConnectionResetError("the helper closed the connection")
                        answer += more
                    break
                except OSError as error:
                    self._close_locked()
                    if attempt == 2:
                        raise HelperUnavailable(
                            f"the greenmon helper at {self.path} stopped answering "
                            f"({error}): " + START_HELP + "."
                        ) from None
        reply: dict[str, Any] = json.loads(answer)
        if not reply.get("ok"):
            raise HelperRefused(str(reply.get("error")))
        return reply

    def _close_locked(self) -> None:
        with contextlib.suppress(OSError):
            if self._sock is not None:
                self._sock.close()
        self._sock = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    # the requests, typed
    def rapl_channels(self) -> list[dict[str, Any]]:
        return list(self.request("rapl_channels")["channels"])

    def rapl_read(self) -> list[float | None]:
        return list(self.request("rapl_read")["values"])

    def setting_read(self, target: str) -> str:
        return str(self.request("setting_read", target=target)["value"])

    def setting_write(self, target: str, value: str) -> str:
        """Write one setting; the value in force afterwards."""
        return str(self.request("setting_write", target=target, value=value)["in_force"])


def helper_answers(path: str | Path | None = None) -> str | None:
    """None when a helper answers at ``path``; else why not (for notes and errors)."""
    client = HelperClient(path, timeout_s=2.0)
    try:
        client.request("hello")
    except GreenmonError as error:
        return str(error)
    finally:
        client.close()
    return None
