"""The privileged helper's server (``greenmon helper``, run as root): RAPL reads and the
allowlisted hardware settings, for the members of one group (greenmon/privhelper/client.py
says what and how).

Runs as root, so it loads as little as it can: the standard library, the RAPL probe's own
reader, the hardware knobs it writes through, and the API's socket helpers; never the
daemon, the store, DuckDB or aiohttp (tests/privilege checks the process's modules).
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import os
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from greenmon.api.sockets import socket_is_live
from greenmon.errors import GreenmonError
from greenmon.privhelper.client import (
    CPUFREQ_FILES,
    IDLE_TIMEOUT_S,
    MAX_REQUEST_BYTES,
    NVML_SETTINGS,
    HelperRefused,
    HelperUnavailable,
)

if TYPE_CHECKING:
    from greenmon.hardware.amd import AmdPowerCapKnob
    from greenmon.hardware.cpufreq import CpufreqKnob
    from greenmon.hardware.knob import Knob
    from greenmon.hardware.nvml import NvmlKnob


@dataclasses.dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Caller:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return Caller(pid, uid, gid)


def _caller_groups(caller: Caller) -> set[int]:
    groups = {caller.gid}
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{caller.pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                groups.update(int(g) for g in line.split()[1:])
    return groups


@dataclasses.dataclass
class HelperConfig:
    powercap_root: Path
    cpufreq_root: Path
    nvml_module: str = "pynvml"
    group_gid: int | None = None
    amdsmi_module: str = "amdsmi"


class Helper:
    """What the helper does for one request; no socket code here, so tests can call it."""

    def __init__(self, config: HelperConfig, log: TextIO | None = None) -> None:
        from greenmon.hardware.nvml import NvmlSession
        from greenmon.probes.base import ProbeUnavailable
        from greenmon.probes.rapl import Options, RaplProbe

        self.config = config
        self.log = log or sys.stderr
        self._log_lock = threading.Lock()
        self._settings_lock = threading.Lock()
        self._nvml = NvmlSession()
        self._rapl: RaplProbe | None = RaplProbe(Options(sysfs_root=str(config.powercap_root)))
        self._rapl_lock = threading.Lock()
        self.rapl_channels: list[dict[str, Any]] = []
        self.rapl_problem: str | None = None
        try:
            self.rapl_channels = [dataclasses.asdict(c) for c in self._rapl.open()]
        except ProbeUnavailable as error:
            self._rapl, self.rapl_problem = None, str(error)

    def close(self) -> None:
        if self._rapl is not None:
            self._rapl.close()
        self._nvml.close()

    def event(self, caller: Caller, message: str) -> None:
        with self._log_lock:
            print(
                f"greenmon helper: uid {caller.uid} (pid {caller.pid}): {message}",
                file=self.log,
                flush=True,
            )

    def allowed(self, caller: Caller) -> bool:
        if caller.uid in (0, os.geteuid()):
            return True
        gid = self.config.group_gid
        return gid is not None and gid in _caller_groups(caller)

    def handle(self, request: Mapping[str, Any], caller: Caller) -> dict[str, Any]:
        op = request.get("op")
        if not self.allowed(caller):
            self.event(caller, f"refused {op!r}: not root and not in the helper's group")
            raise HelperRefused(
                f"uid {caller.uid} is not in the greenmon helper's group: add the user to it"
            )
        if op == "hello":
            return {"uid": caller.uid, "rapl_channels": len(self.rapl_channels)}
        if op == "rapl_channels":
            if self._rapl is None:
                raise HelperRefused(f"the helper has no RAPL counters: {self.rapl_problem}")
            return {"channels": self.rapl_channels}
        if op == "rapl_read":
            if self._rapl is None:
                raise HelperRefused(f"the helper has no RAPL counters: {self.rapl_problem}")
            with self._rapl_lock:
                return {"values": list(self._rapl.read())}
        if op in ("setting_read", "setting_write"):
            target = request.get("target")
            if not isinstance(target, str):
                raise HelperRefused(f"{op} needs a target (a restore-journal target string)")
            knob = self.knob(target)
            with self._settings_lock:
                if op == "setting_read":
                    return {"value": knob.read()}
                value = request.get("value")
                if not isinstance(value, str):
                    raise HelperRefused("setting_write needs a value (a string)")
                self.check_value(knob, value)
                before = knob.read()
                try:
                    knob.write(value)
                except Exception as error:
                    self.event(caller, f"change failed: {_describe(knob)} to {value!r}: {error}")
                    raise
                in_force = knob.read()
                self.event(
                    caller,
                    f"changed {_describe(knob)} from {before!r} to {value!r} "
                    f"(in force: {in_force!r})",
                )
                return {"in_force": in_force, "previous": before}
        raise HelperRefused(
            f"unknown request {op!r}: the helper reads RAPL counters "
            "(rapl_channels, rapl_read) and reads or writes hardware settings "
            "(setting_read, setting_write), nothing else"
        )

    # -- the allowlist -------------------------------------------------------------------
    def knob(self, target: str) -> CpufreqKnob | NvmlKnob | AmdPowerCapKnob:
        from greenmon.hardware.cpufreq import CpufreqKnob
        from greenmon.hardware.nvml import NvmlKnob

        try:
            data = json.loads(target)
            kind = data["kind"]
        except (ValueError, TypeError, KeyError):
            raise HelperRefused(f"not a setting target: {target!r}") from None
        if kind == "cpufreq":
            return CpufreqKnob(self.cpufreq_path(str(data.get("path"))))
        if kind == "amdsmi":
            return self._amd_knob(data)
        if kind == "nvml":
            module, setting = data.get("module"), data.get("setting")
            if module != self.config.nvml_module:
                raise HelperRefused(
                    f"NVML module {module!r} is not the helper's ({self.config.nvml_module!r}): "
                    "start the helper with --nvml-module naming the plan's [hardware] "
                    "nvml_module"
                )
            if setting not in NVML_SETTINGS:
                raise HelperRefused(f"NVML setting {setting!r} is not one the helper changes")
            knob = NvmlKnob(self._nvml, module, str(data.get("gpu")), setting)
            try:
                knob.session.handle(module, knob.uuid)
            except GreenmonError:
                raise
            except Exception as error:  # the vendor's error: translated here
                raise HelperRefused(f"NVML knows no GPU {knob.uuid!r}: {error}") from None
            return knob
        raise HelperRefused(f"setting kind {kind!r} is not one the helper changes")

    def _amd_knob(self, data: Mapping[str, Any]) -> AmdPowerCapKnob:
        from greenmon.hardware.amd import POWER_CAP_SETTING, AmdPowerCapKnob

        module = data.get("module")
        if module != self.config.amdsmi_module:
            raise HelperRefused(
                f"amdsmi module {module!r} is not the helper's ({self.config.amdsmi_module!r}): "
                "start the helper with --amdsmi-module naming the plan's [hardware] "
                "amdsmi_module"
            )
        if data.get("setting") != POWER_CAP_SETTING:
            raise HelperRefused(f"amdsmi setting {data.get('setting')!r} is not one it changes")
        knob = AmdPowerCapKnob(self._nvml.amdsmi, module, str(data.get("gpu")))
        try:
            knob.session.handle(module, knob.uuid)
        except Exception as error:  # greenmon's or the vendor's: a refusal either way
            raise HelperRefused(f"amdsmi knows no GPU {knob.uuid!r}: {error}") from None
        return knob

    def cpufreq_path(self, text: str) -> Path:
        root = self.config.cpufreq_root
        path = Path(text)
        why = (
            f"{text!r} is not a cpufreq scaling file under {root} (only "
            f"{root}/cpuN/cpufreq/{{{','.join(sorted(CPUFREQ_FILES))}}})"
        )
        if not path.is_absolute() or ".." in path.parts:
            raise HelperRefused(why)
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            raise HelperRefused(why) from None
        if (
            len(parts) != 3
            or not parts[0].startswith("cpu")
            or not parts[0][3:].isdigit()
            or parts[1] != "cpufreq"
            or parts[2] not in CPUFREQ_FILES
        ):
            raise HelperRefused(why)
        try:
            real = path.resolve(strict=True)
        except OSError:
            raise HelperRefused(f"{text!r} does not exist") from None
        # sysfs links cpuN/cpufreq to ../cpufreq/policyN: still inside the root.
        if not real.is_relative_to(root.resolve()) or real.name != parts[2]:
            raise HelperRefused(f"{text!r} leads outside {root} (to {real})")
        return path

    def check_value(self, knob: CpufreqKnob | NvmlKnob | AmdPowerCapKnob, value: str) -> None:
        from greenmon.hardware.amd import AmdPowerCapKnob, check_power_cap_value
        from greenmon.hardware.cpufreq import CpufreqKnob

        if isinstance(knob, CpufreqKnob):
            self._check_cpufreq(knob.path, value)
        elif isinstance(knob, AmdPowerCapKnob):
            amdsmi = knob.session.module(knob.module_spec)
            handle = knob.session.handle(knob.module_spec, knob.uuid)
            problem = check_power_cap_value(amdsmi, handle, value)
            if problem:
                raise HelperRefused(f"AMD GPU {knob.uuid}: {problem}")
        else:
            self._check_nvml(knob, value)

    def _check_cpufreq(self, path: Path, value: str) -> None:
        from greenmon.hardware.cpufreq import cpufreq_range

        limits = cpufreq_range(path.parent)
        if path.name == "scaling_governor":
            if value not in limits.governors:
                raise HelperRefused(
                    f"governor {value!r} is not available on {path.parent} "
                    f"({', '.join(sorted(limits.governors))})"
                )
            return
        if not value.isdigit() or not limits.min_khz <= int(value) <= limits.max_khz:
            raise HelperRefused(
                f"{value!r} kHz is outside {path.parent}'s range "
                f"{limits.min_khz}..{limits.max_khz} kHz"
            )

    def _check_nvml(self, knob: NvmlKnob, value: str) -> None:
        from greenmon.hardware.nvml import check_nvml_value

        nvml = self._nvml.module(knob.module_spec)
        problem = check_nvml_value(nvml, knob.session.handle(knob.module_spec, knob.uuid),
                                   knob.setting, value)  # fmt: skip
        if problem:
            raise HelperRefused(f"GPU {knob.uuid}: {problem}")


def _describe(knob: Knob) -> str:
    from greenmon.hardware.knob import describe_target

    return describe_target(knob.target)


class _Handler(socketserver.StreamRequestHandler):
    server: HelperServer

    def handle(self) -> None:
        helper = self.server.helper
        caller = peer_credentials(self.request)
        self.request.settimeout(IDLE_TIMEOUT_S)
        while True:
            try:
                line = self.rfile.readline(MAX_REQUEST_BYTES)
            except OSError:
                return
            if not line:
                return
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                reply = {"ok": True, **helper.handle(request, caller)}
            except HelperRefused as error:
                reply = {"ok": False, "refused": True, "error": str(error)}
            except ValueError as error:
                reply = {"ok": False, "refused": True, "error": f"not a JSON request: {error}"}
            except Exception as error:
                reply = {"ok": False, "refused": False, "error": f"{type(error).__name__}: {error}"}
            try:
                self.wfile.write(json.dumps(reply).encode() + b"\n")
                self.wfile.flush()
            except OSError:
                return


class HelperServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, helper: Helper, sock: socket.socket) -> None:
        super().__init__(str(sock.getsockname()), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.helper = helper


def group_id(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise HelperUnavailable(
            f"group {name!r} does not exist: create it (`sudo groupadd {name}`) and add the "
            "daemon's user to it (`sudo usermod -aG GROUP USER`)"
        ) from None


def systemd_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    return socket.socket(fileno=3)


def bind_socket(path: Path, gid: int | None) -> socket.socket:
    """Listen at ``path``: owner root, the group's, 0660 (0600 without a group)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if socket_is_live(path):
            raise HelperUnavailable(f"a greenmon helper already answers at {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # never, even for an instant, wider than 0600
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    if gid is not None:
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    sock.listen(16)
    return sock


def serve(
    config: HelperConfig,
    socket_path: Path,
    *,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
    log: TextIO | None = None,
) -> None:
    """Serve until ``stop`` is set (or forever)."""
    helper = Helper(config, log)
    activated = systemd_socket()
    sock = activated or bind_socket(socket_path, config.group_gid)
    server = HelperServer(helper, sock)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.start()
    rapl = (
        f"{len(helper.rapl_channels)} RAPL zones under {config.powercap_root}"
        if helper.rapl_problem is None
        else f"no RAPL counters ({helper.rapl_problem})"
    )
    helper.event(
        Caller(os.getpid(), os.geteuid(), os.getegid()),
        f"listening at {sock.getsockname()}: {rapl}; cpufreq under {config.cpufreq_root}; "
        f"NVML module {config.nvml_module}",
    )
    if ready is not None:
        ready.set()
    try:
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        helper.close()
        if activated is None:
            with contextlib.suppress(OSError):
                socket_path.unlink()
