"""EnergiBridge probe: CPU (and optionally GPU) energy from EnergiBridge's CSV, read as it grows.

EnergiBridge (github.com/tdurieux/EnergiBridge) reads the RAPL / AMD energy MSRs through
``/dev/cpu/N/msr`` and writes one CSV row per interval while a command runs; it has no
monitor mode.  So the probe runs it as a long-lived child around a command that only waits::

    energibridge -o FILE -i INTERVAL_MS [-g] -- sleep infinity

(no ``-m``: the default is no time limit, and releases disagree on how to spell "none",
``0`` in older ones, ``-1`` in the current README), reads complete lines of FILE as they
appear (EnergiBridge writes each field with its own unbuffered write, so a half-written row
is normal and is left for the next read), and stops the child with SIGINT in ``close()``,
then kills what is left of its process group and reaps it.

Terms:
- *row*: ``Delta`` (ms since the previous row), ``Time`` (Unix epoch ms at which the row's
  values were collected), then one column per quantity, sorted by name.  ``Time`` is
  converted to greenmon's monotonic clock with a ClockAnchor (refreshed every minute), so
  the probe returns ``Stamped`` rows carrying EnergiBridge's own collection times.
- *energy columns* are raw cumulative counters in J (the MSR value times the energy unit),
  not wrap-corrected by EnergiBridge: they are stored as kind ``counter`` and
  greenmon/energy.py takes deltas.  Where they wrap is not in the CSV (32-bit MSRs times
  an energy unit the CSV does not state; AMD Zen with the usual 2^-16 J unit wraps at
  65536 J, every ten minutes or so at 100 W), so ``counter_range`` is set only when the
  option ``counter_range_j`` gives it; without it a wrap shows as a reset (that interval's
  energy unknown and not covered) rather than as a wrong number.

Channels (name <- column; all carry metadata ``column``):
- ``cpu.energy_j`` <- ``CPU_ENERGY (J)`` (AMD package), ``package.energy_j`` <-
  ``PACKAGE_ENERGY (J)`` (Intel; older releases spell it ``PACAKGE``): counters, domain
  ``cpu``; ``dram.energy_j`` <- ``DRAM_ENERGY (J)``: domain ``dram``; ``pp0.energy_j``,
  ``coreN.energy_j`` <- ``PP0_ENERGY (J)``, ``CORE<N>_ENERGY (J)``: domain ``cpu_core``;
  ``pp1.energy_j`` <- ``PP1_ENERGY (J)``: domain ``cpu_uncore``.
- ``cpuN.usage_percent``, ``cpuN.freq_mhz``, ``coreN.freq_mhz``, ``coreN.pstate``,
  ``coreN.volt_v``, ``cpuN.temperature_c``, ``cpu.power_w`` / ``system.power_w`` (macOS
  builds, no domain), ``ram.total_bytes``, ``ram.used_bytes``, ``swap.total_bytes``,
  ``swap.used_bytes``.
- with ``gpu = true`` (``-g``): ``gpuN.power_mw`` <- ``GPU<N>_POWER (mWatts)``, with no
  domain (metadata ``measures: "gpu"``): the NVML probe is greenmon's GPU source, and the
  same GPU must not be counted twice.
- any other column: its name lower-cased, unit ``1``, gauge.
Run either this probe or RAPL as the CPU source: both would carry domain ``cpu``.

Failures: a missing binary or MSR device, or an EnergiBridge that cannot read the MSRs,
make the probe unavailable with the fix.  A crash mid-run raises from ``read()`` (a gap and
an event) and the child is restarted on a later read, after 1, 2, 4 ... s (capped at 60 s);
after ``max_restarts`` crashes in a row (a child that lived a minute resets the count) the
probe is lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, ClassVar

from greenmon.clock import ANCHOR_REFRESH_S, ClockAnchor, now_ns
from greenmon.probes.base import Channel, ProbeLost, ProbeUnavailable, Stamped, Values
from greenmon.probes.options import ProbeOptions

MSR_MODULE_HELP = (
    "{device} does not exist: load the msr kernel module (`sudo modprobe msr`; list `msr` "
    "in /etc/modules-load.d/greenmon.conf to load it at boot)."
)
MSR_PERMISSION_HELP = (
    "EnergiBridge may not read the MSR devices (/dev/cpu/*/msr): give the binary raw I/O "
    "access (`sudo setcap cap_sys_rawio=ep {path}`) and make the devices readable by the "
    "user running greenmon (`sudo chmod o+r /dev/cpu/*/msr`, or a udev rule), or run the "
    "daemon as root."
)
MISSING_HELP = (
    "energibridge was not found on PATH: install a release from "
    "https://github.com/tdurieux/EnergiBridge/releases and put it on PATH, or set "
    "[probes.energibridge] path. On machines with powercap, the rapl probe needs no helper."
)
RESTART_BACKOFF_MAX_S = 60.0
STABLE_CHILD_S = 60.0

_ENERGY = re.compile(r"^(?:CORE(\d+)_ENERGY|([A-Z0-9]+)_ENERGY) \(J\)$")
_NAMED_ENERGY = {
    "CPU": ("cpu", "cpu"),
    "PACKAGE": ("package", "cpu"),
    "PACAKGE": ("package", "cpu"),
    "DRAM": ("dram", "dram"),
    "PP0": ("pp0", "cpu_core"),
    "PP1": ("pp1", "cpu_uncore"),
}
# column pattern -> (channel name template, unit)
_GAUGES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"^CPU_USAGE_(\d+)$"), "cpu{}.usage_percent", "%"),
    (re.compile(r"^CPU_FREQUENCY_(\d+)$"), "cpu{}.freq_mhz", "MHz"),
    (re.compile(r"^CPU_TEMP_(\d+)$"), "cpu{}.temperature_c", "C"),
    (re.compile(r"^CORE(\d+)_FREQ \(MHZ\)$"), "core{}.freq_mhz", "MHz"),
    (re.compile(r"^CORE(\d+)_PSTATE$"), "core{}.pstate", "1"),
    (re.compile(r"^CORE(\d+)_VOLT \(V\)$"), "core{}.volt_v", "V"),
    (re.compile(r"^GPU(\d+)_USAGE$"), "gpu{}.usage_percent", "%"),
    (re.compile(r"^GPU(\d+)_MEMORY_USED$"), "gpu{}.memory_used_mib", "MiB"),
    (re.compile(r"^GPU(\d+)_MEMORY_TOTAL$"), "gpu{}.memory_total_mib", "MiB"),
    (re.compile(r"^GPU(\d+)_TEMPERATURE$"), "gpu{}.temperature_c", "C"),
]
_GPU_POWER = re.compile(r"^GPU(\d+)_POWER(?: \(mWatts\))?$")
# Power gauges where a platform has no counters (macOS); no domain: Linux reads counters.
_POWER = {"CPU_POWER (Watts)": "cpu.power_w", "SYSTEM_POWER (Watts)": "system.power_w"}
_MEMORY = {
    "TOTAL_MEMORY": "ram.total_bytes",
    "USED_MEMORY": "ram.used_bytes",
    "TOTAL_SWAP": "swap.total_bytes",
    "USED_SWAP": "swap.used_bytes",
}
_TIME_COLUMNS = ("Delta", "Time")


class Options(ProbeOptions, kw_only=True, forbid_unknown_fields=True):
    # The energibridge executable; None looks it up on PATH.
    path: str | None = None
    # EnergiBridge's own sampling interval (-i), in ms.
    interval_ms: int = 200
    # Also record GPU columns (-g).
    gpu: bool = False
    # Where the energy counters wrap, in J (e.g. 65536 on AMD Zen); None: unknown.
    counter_range_j: float | None = None
    # Checked before starting: EnergiBridge reads MSRs through it ("" skips the check).
    msr_device: str = "/dev/cpu/0/msr" if sys.platform.startswith("linux") else ""
    start_timeout_s: float = 10.0
    max_restarts: int = 5
    restart_backoff_s: float = 1.0


class EnergiBridgeCrashed(Exception):
    """The child exited mid-run; it is restarted on a later read."""


def column_channel(column: str, counter_range_j: float | None) -> Channel:
    """The channel one EnergiBridge CSV column maps to."""
    meta: dict[str, object] = {"column": column}
    match = _ENERGY.match(column)
    if match:
        core, named = match.groups()
        if core is not None:
            label, domain = f"core{core}", "cpu_core"
        else:
            label, domain = _NAMED_ENERGY.get(named, (named.lower(), None))  # type: ignore[assignment]
        if counter_range_j is not None:
            meta["counter_range"] = counter_range_j
        return Channel(f"{label}.energy_j", "J", "counter", domain, meta)
    if column in _POWER:
        return Channel(_POWER[column], "W", "gauge", None, meta)
    if column in _MEMORY:
        return Channel(_MEMORY[column], "B", "gauge", None, meta)
    match = _GPU_POWER.match(column)
    if match:
        meta["measures"] = "gpu"
        return Channel(f"gpu{match.group(1)}.power_mw", "mW", "gauge", None, meta)
    for pattern, template, unit in _GAUGES:
        match = pattern.match(column)
        if match:
            return Channel(template.format(match.group(1)), unit, "gauge", None, meta)
    name = re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_")
    return Channel(name, "1", "gauge", None, meta)


class _Child:
    """One running energibridge and the CSV it writes."""

    def __init__(self, argv: list[str], csv_path: Path, stderr_path: Path) -> None:
        self.csv_path = csv_path
        self.stderr_path = stderr_path
        self.started_ns = now_ns()
        self._stderr = stderr_path.open("wb")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            # its own process group: a terminal's Ctrl-C does not reach it before the
            # daemon stops it, and close() can kill `sleep infinity` with it
            start_new_session=True,
        )
        self._csv: IO[bytes] | None = None
        self._buffer = b""

    def stderr_tail(self, limit: int = 400) -> str:
        with contextlib.suppress(OSError):
            text = self.stderr_path.read_text(errors="replace").strip()
            return text[-limit:]
        return ""

    def lines(self) -> list[bytes]:
        """Complete lines written since the last call (the header included)."""
        if self._csv is None:
            try:
                self._csv = self.csv_path.open("rb")
            except FileNotFoundError:
                return []
        self._buffer += self._csv.read()
        *complete, self._buffer = self._buffer.split(b"\n")
        return complete

    def stop(self) -> None:
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=3.0)
        # whatever is left of its group (the waiting command) goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=3.0)
        if self._csv is not None:
            self._csv.close()
        self._stderr.close()


class EnergiBridgeProbe:
    name: ClassVar[str] = "energibridge"
    default_rate_hz: ClassVar[float] = 5.0
    # A read may restart the child and wait up to start_timeout_s for its CSV header: it
    # gets a sampling thread of its own so it never delays the other probes.
    blocking_reads: ClassVar[bool] = True

    def __init__(
        self,
        options: Options | None = None,
        *,
        anchor: ClockAnchor | None = None,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self.options = options or Options()
        self._fixed_anchor = anchor
        self._anchor = anchor
        self._clock = clock
        self._executable: str | None = None
        self._workdir: Path | None = None
        self._child: _Child | None = None
        self._starts = 0
        self._channels: list[Channel] = []
        self._columns: list[str] = []
        # per CSV column: the channel index it feeds (None: Delta, Time, unknown columns)
        self._targets: list[int | None] = []
        self._time_index = 1
        self._backlog: list[bytes] = []
        self._crashes = 0
        self._restart_at_ns = 0
        self.skipped_rows = 0

    # -- the child -----------------------------------------------------------------------
    def _find_executable(self) -> str:
        if self.options.path:
            path = Path(self.options.path)
            if not path.is_file() or not os.access(path, os.X_OK):
                raise ProbeUnavailable(
                    f"[probes.energibridge] path {path} is not an executable file. "
                    + MISSING_HELP.split(": ", 1)[1]
                )
            return str(path)
        found = shutil.which("energibridge")
        if found is None:
            raise ProbeUnavailable(MISSING_HELP)
        return found

    def _argv(self, csv_path: Path) -> list[str]:
        assert self._executable is not None
        argv = [self._executable, "-o", str(csv_path), "-i", str(self.options.interval_ms)]
        if self.options.gpu:
            argv.append("-g")
        return [*argv, "--", "sleep", "infinity"]

    def _start(self) -> list[str]:
        """Start a child and wait for its header; returns the header's columns."""
        assert self._workdir is not None
        self._starts += 1
        csv_path = self._workdir / f"energibridge-{self._starts}.csv"
        stderr_path = self._workdir / f"energibridge-{self._starts}.stderr"
        child = _Child(self._argv(csv_path), csv_path, stderr_path)
        deadline = time.monotonic() + self.options.start_timeout_s
        pending: list[bytes] = []
        while True:
            pending = child.lines()
            if pending:
                break
            if child.process.poll() is not None:
                code = child.process.returncode
                tail = child.stderr_tail()
                child.stop()
                raise ProbeUnavailable(self._explain_exit(code, tail))
            if time.monotonic() > deadline:
                child.stop()
                raise ProbeUnavailable(
                    f"energibridge wrote no CSV header within {self.options.start_timeout_s} s"
                    f" (stderr: {child.stderr_tail() or 'empty'})"
                )
            # Waiting for a child to start is the one wait a probe makes, in open().
            time.sleep(0.01)
        header, rows = pending[0], pending[1:]
        self._child = child
        self._backlog = rows
        return header.decode(errors="replace").strip().split(",")

    def _explain_exit(self, code: int | None, stderr: str) -> str:
        lowered = stderr.lower()
        if "permission denied" in lowered or "permissiondenied" in lowered:
            return MSR_PERMISSION_HELP.format(path=self._executable) + f" (stderr: {stderr})"
        if "msr" in lowered and ("no such file" in lowered or "notfound" in lowered):
            return MSR_MODULE_HELP.format(device="/dev/cpu/N/msr") + f" (stderr: {stderr})"
        return f"energibridge exited with code {code} before writing its header: {stderr}"

    # -- open ----------------------------------------------------------------------------
    def open(self) -> Sequence[Channel]:
        self._executable = self._find_executable()
        device = self.options.msr_device
        if device and not Path(device).exists():
            raise ProbeUnavailable(MSR_MODULE_HELP.format(device=device))
        self._workdir = Path(tempfile.mkdtemp(prefix="greenmon-energibridge-"))
        try:
            columns = self._start()
            if "Time" not in columns:
                raise ProbeUnavailable(f"energibridge wrote an unexpected header: {columns}")
            self._time_index = columns.index("Time")
            channels: list[Channel] = []
            for column in columns:
                if column in _TIME_COLUMNS:
                    continue
                channels.append(column_channel(column, self.options.counter_range_j))
            self._channels = channels
            self._set_columns(columns)
        except BaseException:
            self.close()
            raise
        if self._anchor is None:
            self._anchor = ClockAnchor.read()
        return channels

    def _set_columns(self, columns: list[str]) -> None:
        """Map a (possibly restarted) child's header onto the channels found at open()."""
        index = {c.metadata["column"]: i for i, c in enumerate(self._channels)}
        self._columns = columns
        self._targets = [index.get(column) for column in columns]
        self._time_index = columns.index("Time")

    # -- read ----------------------------------------------------------------------------
    def _parse(self, lines: list[bytes]) -> list[tuple[int, Values]]:
        assert self._anchor is not None
        rows: list[tuple[int, Values]] = []
        width = len(self._columns)
        for line in lines:
            fields = line.decode(errors="replace").strip().split(",")
            if len(fields) != width:
                self.skipped_rows += 1
                continue
            try:
                epoch_ms = int(float(fields[self._time_index]))
                values: list[float | None] = [None] * len(self._channels)
                for target, text in zip(self._targets, fields, strict=True):
                    if target is not None:
                        values[target] = float(text)
            except ValueError:
                self.skipped_rows += 1
                continue
            rows.append((self._anchor.from_epoch_ns(epoch_ms * 1_000_000), values))
        return rows

    def _refresh_anchor(self) -> None:
        if self._fixed_anchor is None and (
            self._anchor is None or self._clock() - self._anchor.t_ns > ANCHOR_REFRESH_S * 1e9
        ):
            self._anchor = ClockAnchor.read()

    def _schedule_restart(self) -> float:
        self._crashes += 1
        delay_s: float = min(
            RESTART_BACKOFF_MAX_S, self.options.restart_backoff_s * 2.0 ** (self._crashes - 1)
        )
        self._restart_at_ns = self._clock() + int(delay_s * 1e9)
        return delay_s

    def _restart(self) -> None:
        try:
            columns = self._start()
        except ProbeUnavailable as error:
            if self._crashes >= self.options.max_restarts:
                raise ProbeLost(f"energibridge cannot be restarted: {error}") from None
            delay_s = self._schedule_restart()
            raise EnergiBridgeCrashed(
                f"restart failed, next try in {delay_s:g} s: {error}"
            ) from None
        self._set_columns(columns)

    def read(self) -> Stamped:
        self._refresh_anchor()
        if self._child is None:
            if self._workdir is None:
                raise ProbeLost("read() after close()")
            if self._clock() < self._restart_at_ns:
                return Stamped([])
            self._restart()
        child = self._child
        assert child is not None
        lines = self._backlog + child.lines()
        self._backlog = []
        rows = self._parse(lines)
        if rows or child.process.poll() is None:
            if self._crashes and self._clock() - child.started_ns > STABLE_CHILD_S * 1e9:
                self._crashes = 0
            return Stamped(rows)
        # The child is gone and everything it finished writing has been returned; a
        # torn last line stays unread: its values were never complete.
        code = child.process.returncode
        tail = child.stderr_tail()
        child.stop()
        self._child = None
        if self._crashes >= self.options.max_restarts:
            raise ProbeLost(
                f"energibridge exited with code {code} after {self._crashes} restarts: {tail}"
            )
        delay_s = self._schedule_restart()
        raise EnergiBridgeCrashed(
            f"energibridge exited with code {code}; restart {self._crashes}/"
            f"{self.options.max_restarts} in {delay_s:g} s (stderr: {tail or 'empty'})"
        )

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def create(options: Options) -> EnergiBridgeProbe:
    return EnergiBridgeProbe(options)
