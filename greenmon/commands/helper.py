"""``greenmon helper``: the small privileged process (greenmon/privhelper/), run as root.

It reads RAPL counters and applies hardware settings for the members of one group, so the
daemon can run as an ordinary user.  Under systemd, ``greenmon-helper.socket`` (shipped in
greenmon/data/systemd/) creates the socket and starts the helper on first use.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from greenmon.privhelper.client import DEFAULT_SOCKET_PATH, HelperUnavailable, helper_socket_path
from greenmon.privhelper.server import HelperConfig, group_id, serve
from greenmon.probes.rapl import DEFAULT_SYSFS_ROOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        default=None,
        help=f"where to listen (default: $GREENMON_HELPER_SOCKET, else {DEFAULT_SOCKET_PATH})",
    )
    parser.add_argument(
        "--group",
        default=None,
        help="the group whose members may use the helper (socket mode 0660); "
        "default: root only (0600)",
    )
    parser.add_argument("--powercap-root", default=DEFAULT_SYSFS_ROOT, help="RAPL zones")
    parser.add_argument(
        "--cpufreq-root", default="/sys/devices/system/cpu", help="cpuN/cpufreq directories"
    )
    parser.add_argument(
        "--nvml-module",
        default="pynvml",
        help="the NVML module GPU settings go through (a plan's [hardware] nvml_module)",
    )
    parser.add_argument(
        "--amdsmi-module",
        default="amdsmi",
        help="the amdsmi module AMD power caps go through (a plan's [hardware] amdsmi_module)",
    )
    parser.add_argument(
        "--allow-non-root",
        action="store_true",
        help="start although not root (it can then do only what this user may)",
    )


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0 and not args.allow_non_root:
        raise HelperUnavailable(
            "greenmon helper must run as root: it exists to do, for an unprivileged daemon, "
            "the few things that need root. Start it with sudo, or with "
            "`systemctl enable --now greenmon-helper.socket` (README: Running as a user)."
        )
    config = HelperConfig(
        powercap_root=Path(args.powercap_root),
        cpufreq_root=Path(args.cpufreq_root),
        nvml_module=args.nvml_module,
        group_gid=group_id(args.group),
        amdsmi_module=args.amdsmi_module,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serve(config, helper_socket_path(args.socket), stop=stop, log=sys.stderr)
    return 0
