"""Each probe failing in each way it can, inside a daemon beside a healthy probe.

Every case runs the failing probe next to a reference probe (a CountingProbe at 100 Hz)
and asserts what was kept: the reference's achieved rate stays near its target (a
generous tolerance: the machine may be loaded), the failure is an event naming the probe,
and the failing probe's health says what happened (``unavailable`` with the reason,
``lost``, or errors counted while it retries); where the source comes back, so do samples.

RAPL as root: permission bits do not stop root, and the probe reads descriptors it opened
at start (as the kernel checks permission only at open), so "permission revoked mid-run"
is simulated by chmod 000 and asserted to change nothing; a zone removed mid-run (the
rapl module unloaded: reads of an open sysfs file then fail) is simulated by pointing
the probe's open descriptor at a directory, so every read fails with EISDIR.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from greenmon.api.messages import ProbeStatusDetail
from greenmon.config import parse_config
from greenmon.daemon import Daemon, DaemonSummary
from greenmon.probes.base import Probe
from greenmon.probes.energibridge import EnergiBridgeProbe
from greenmon.probes.energibridge import Options as EnergiBridgeOptions
from greenmon.probes.netio import NetioProbe
from greenmon.probes.netio import Options as NetioOptions
from greenmon.probes.nvml import NvmlProbe
from greenmon.probes.rapl import Options as RaplOptions
from greenmon.probes.rapl import RaplProbe
from greenmon.store import Store
from tests.fakes.energibridge import INTEL_COLUMNS, write_fake_energibridge
from tests.fakes.netio import NetioState, ServerThread
from tests.fakes.nvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    FakeGpu,
    FakeNvml,
)
from tests.fakes.probes import CountingProbe
from tests.fakes.rapl import standard_tree
from tests.faults.support import alive

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REFERENCE_HZ = 100.0
# Achieved / target for the healthy probe: far below it only if the failure stalls it.
RATE_TOLERANCE = 0.7
CONFIG = """
[daemon]
max_backoff_s = 0.2
[probes.netio]
rate_hz = 10
[probes.nvml]
rate_hz = 50
[probes.rapl]
rate_hz = 100
[probes.energibridge]
rate_hz = 20
"""
NETIO_ENV = {"GREENMON_NETIO_USER": "netio", "GREENMON_NETIO_PASSWORD": "s3cret-pw"}


@dataclass
class Outcome:
    summary: DaemonSummary
    events: list[tuple[str | None, str, str, int]]  # probe, level, message, t_ns
    samples: dict[str, list[int]]  # probe -> sample times

    def health(self, probe: str) -> ProbeStatusDetail:
        return next(p for p in self.summary.probes if p.probe == probe)

    def messages(self, probe: str) -> list[str]:
        return [m for p, _, m, _ in self.events if p == probe]

    def assert_reference_kept_its_rate(self) -> None:
        reference = self.health("reference")
        assert reference.state == "stopped", reference
        assert reference.achieved_hz >= RATE_TOLERANCE * REFERENCE_HZ, reference


async def run_with_reference(
    tmp_path: Path,
    name: str,
    probe: Probe,
    *,
    duration_s: float = 1.0,
    during: Callable[[Daemon], Awaitable[None]] | None = None,
) -> Outcome:
    reference = CountingProbe("reference")
    store = Store.open(tmp_path / "faults.duckdb")
    daemon = Daemon(
        store,
        parse_config(CONFIG),
        probes={name: probe, "reference": reference},
        handle_signals=False,
    )
    result: dict[str, DaemonSummary] = {}

    async def run() -> None:
        result["summary"] = await daemon.run(duration_s)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await daemon.started.wait()
            if during is not None:
                await during(daemon)
        _, events = store.query("SELECT probe, level, message, t_ns FROM events ORDER BY t_ns")
        _, rows = store.query(
            "SELECT c.probe, list(s.t_ns ORDER BY s.t_ns) FROM samples s "
            "JOIN channels c USING (channel_id) GROUP BY 1"
        )
    finally:
        store.close()
    return Outcome(result["summary"], events, dict(rows))


# -- NVML ----------------------------------------------------------------------------------


async def test_nvml_python_library_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    outcome = await run_with_reference(tmp_path, "nvml", NvmlProbe(), duration_s=0.6)
    nvml = outcome.health("nvml")
    assert nvml.state == "unavailable" and "nvidia-ml-py is not installed" in nvml.reason
    assert any("unavailable: nvidia-ml-py" in m for m in outcome.messages("nvml"))
    outcome.assert_reference_kept_its_rate()


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so was not found"),
        (NVML_ERROR_DRIVER_NOT_LOADED, "driver is not loaded"),
    ],
)
async def test_nvml_driver_library_missing(tmp_path: Path, code: int, reason: str) -> None:
    module = FakeNvml([FakeGpu("GPU-a")], init_error=code)
    outcome = await run_with_reference(tmp_path, "nvml", NvmlProbe(nvml=module), duration_s=0.6)
    nvml = outcome.health("nvml")
    assert nvml.state == "unavailable" and reason in nvml.reason
    assert any(reason in m for m in outcome.messages("nvml"))
    assert "nvml" not in outcome.samples
    outcome.assert_reference_kept_its_rate()


async def test_nvml_gpu_lost_mid_run(tmp_path: Path) -> None:
    gpu = FakeGpu("GPU-a")
    lost_at: list[int] = []

    async def lose(daemon: Daemon) -> None:
        await anyio.sleep(0.3)
        lost_at.append(time.monotonic_ns())
        gpu.lost = True

    outcome = await run_with_reference(
        tmp_path, "nvml", NvmlProbe(nvml=FakeNvml([gpu])), during=lose
    )
    nvml = outcome.health("nvml")
    assert nvml.state == "lost" and "GPU_IS_LOST" in nvml.reason
    assert any(
        p == "nvml" and level == "error" and "GPU_IS_LOST" in m for p, level, m, _ in outcome.events
    )
    assert outcome.samples["nvml"] and max(outcome.samples["nvml"]) <= lost_at[0] + 50_000_000
    assert max(outcome.samples["reference"]) > lost_at[0] + 400_000_000
    outcome.assert_reference_kept_its_rate()


# -- RAPL ----------------------------------------------------------------------------------


async def test_rapl_permission_revoked_mid_run_changes_nothing(tmp_path: Path) -> None:
    tree = standard_tree(tmp_path / "powercap")
    changed_at: list[int] = []

    async def revoke(daemon: Daemon) -> None:
        await anyio.sleep(0.3)
        for zone in tree.zones.values():
            (zone.path / "energy_uj").chmod(0)
        changed_at.append(time.monotonic_ns())

    probe = RaplProbe(RaplOptions(sysfs_root=str(tmp_path / "powercap")))
    outcome = await run_with_reference(tmp_path, "rapl", probe, during=revoke)
    rapl = outcome.health("rapl")
    assert rapl.state == "stopped" and rapl.errors == 0, rapl
    assert max(outcome.samples["rapl"]) > changed_at[0] + 400_000_000
    outcome.assert_reference_kept_its_rate()


async def test_rapl_zone_removed_mid_run_leaves_gaps_and_events(tmp_path: Path) -> None:
    standard_tree(tmp_path / "powercap")
    probe = RaplProbe(RaplOptions(sysfs_root=str(tmp_path / "powercap")))
    removed_at: list[int] = []

    async def remove(daemon: Daemon) -> None:
        await anyio.sleep(0.3)
        directory = os.open(tmp_path, os.O_RDONLY)
        try:
            os.dup2(directory, probe._fds[0])  # the package zone's descriptor
        finally:
            os.close(directory)
        removed_at.append(time.monotonic_ns())

    outcome = await run_with_reference(tmp_path, "rapl", probe, during=remove)
    rapl = outcome.health("rapl")
    assert rapl.errors >= 2 and "Is a directory" in (rapl.last_error or ""), rapl
    assert rapl.state == "stopped"  # transient: it kept retrying with backoff
    # Backoff (max 0.2 s here) keeps a dead source from flooding: far fewer tries than ticks.
    assert rapl.errors < 20
    warnings = [m for m in outcome.messages("rapl") if "read failed, gap left" in m]
    assert warnings
    assert max(outcome.samples["rapl"]) <= removed_at[0] + 50_000_000  # no made-up values
    outcome.assert_reference_kept_its_rate()


# -- NETIO ---------------------------------------------------------------------------------


def netio_probe(host: str, password: str = "s3cret-pw", timeout_s: float = 0.3) -> NetioProbe:
    return NetioProbe(
        NetioOptions(enabled=True, host=host, timeout_s=timeout_s),
        environ={**NETIO_ENV, "GREENMON_NETIO_PASSWORD": password},
    )


@pytest.fixture
def device() -> Iterator[ServerThread]:
    with ServerThread(NetioState(cycle=True, stall_s=1.0)) as server:
        yield server


OPEN_FAILURES = {
    "401": (None, "wrong user or password"),
    "403": ("forbidden", "JSON API disabled"),
    "500": ("error500", "answered HTTP 500"),
    "malformed": ("malformed", "the answer is not JSON"),
    "stall": ("stall", "cannot reach the NETIO device"),
}


@pytest.mark.parametrize("case", list(OPEN_FAILURES))
async def test_netio_failing_at_open_is_unavailable_with_the_reason(
    tmp_path: Path, device: ServerThread, case: str
) -> None:
    mode, reason = OPEN_FAILURES[case]
    if mode is not None:
        device.state.mode = mode
    probe = netio_probe(device.host, password="wrong" if case == "401" else "s3cret-pw")
    outcome = await run_with_reference(tmp_path, "netio", probe, duration_s=0.6)
    netio = outcome.health("netio")
    assert netio.state == "unavailable" and reason in netio.reason, netio
    assert "s3cret-pw" not in netio.reason
    assert any(reason in m for m in outcome.messages("netio"))
    outcome.assert_reference_kept_its_rate()


async def test_netio_connection_refused_at_open(tmp_path: Path) -> None:
    with ServerThread(NetioState()) as server:
        host = server.host  # a port nothing listens on once the server is gone
    outcome = await run_with_reference(tmp_path, "netio", netio_probe(host), duration_s=0.6)
    netio = outcome.health("netio")
    assert netio.state == "unavailable" and "cannot reach" in netio.reason
    outcome.assert_reference_kept_its_rate()


MID_RUN_FAILURES = {
    "401": ("unauthorized", "wrong user or password"),
    "403": ("forbidden", "JSON API disabled"),
    "500": ("error500", "answered HTTP 500"),
    "malformed": ("malformed", "the answer is not JSON"),
    "stall": ("stall", "did not answer within 0.3 s"),
}


@pytest.mark.parametrize("case", list(MID_RUN_FAILURES))
async def test_netio_failing_mid_run_leaves_gaps_then_recovers(
    tmp_path: Path, device: ServerThread, case: str
) -> None:
    mode, reason = MID_RUN_FAILURES[case]
    marks: dict[str, int] = {}

    async def fail_then_recover(daemon: Daemon) -> None:
        await anyio.sleep(0.3)
        device.state.mode = mode
        marks["failed"] = time.monotonic_ns()
        await anyio.sleep(0.6)
        device.state.mode = "ok"
        marks["recovered"] = time.monotonic_ns()

    outcome = await run_with_reference(
        tmp_path, "netio", netio_probe(device.host), duration_s=1.5, during=fail_then_recover
    )
    netio = outcome.health("netio")
    assert netio.errors >= 1 and reason in (netio.last_error or ""), netio
    assert netio.state == "stopped"
    assert any(reason in m and "gap left" in m for m in outcome.messages("netio"))
    times = outcome.samples["netio"]
    assert any(t < marks["failed"] for t in times)
    assert any(t > marks["recovered"] for t in times), "no sample after the device recovered"
    outcome.assert_reference_kept_its_rate()


async def test_netio_connection_refused_mid_run(tmp_path: Path) -> None:
    server = ServerThread(NetioState(cycle=True)).__enter__()
    stopped = False

    async def stop_device(daemon: Daemon) -> None:
        nonlocal stopped
        await anyio.sleep(0.3)
        await anyio.to_thread.run_sync(server.__exit__, None, None, None)
        stopped = True

    try:
        outcome = await run_with_reference(
            tmp_path, "netio", netio_probe(server.host), during=stop_device
        )
    finally:
        if not stopped:
            server.__exit__(None, None, None)
    netio = outcome.health("netio")
    assert netio.errors >= 1 and "request failed" in (netio.last_error or ""), netio
    assert any("gap left" in m for m in outcome.messages("netio"))
    assert outcome.samples["netio"]
    outcome.assert_reference_kept_its_rate()


# -- EnergiBridge ----------------------------------------------------------------------------


def energibridge_probe(path: Path, **options: Any) -> EnergiBridgeProbe:
    return EnergiBridgeProbe(
        EnergiBridgeOptions(
            path=str(path), msr_device="", interval_ms=20, restart_backoff_s=0.1, **options
        )
    )


async def test_energibridge_missing(tmp_path: Path) -> None:
    probe = energibridge_probe(tmp_path / "nowhere" / "energibridge")
    outcome = await run_with_reference(tmp_path, "energibridge", probe, duration_s=0.6)
    health = outcome.health("energibridge")
    assert health.state == "unavailable" and "is not an executable file" in health.reason
    outcome.assert_reference_kept_its_rate()


async def test_energibridge_refused_msr_access_at_start(tmp_path: Path) -> None:
    fake = write_fake_energibridge(
        tmp_path / "bin", fail_stderr="Error: failed to open /dev/cpu/0/msr: Permission denied"
    )
    outcome = await run_with_reference(
        tmp_path, "energibridge", energibridge_probe(fake.path), duration_s=0.6
    )
    health = outcome.health("energibridge")
    assert health.state == "unavailable" and "cap_sys_rawio" in health.reason
    outcome.assert_reference_kept_its_rate()


def rows_at_now(count: int) -> list[list[str]]:
    """Complete CSV rows (INTEL_COLUMNS) with energies 5, 6, ... J, stamped now."""
    now_ms = int(time.time() * 1000)
    rows = []
    for i in range(count):
        values = {
            "Delta": "20",
            "Time": str(now_ms + 20 * i),
            "PACKAGE_ENERGY (J)": str(5.0 + i),
        }
        rows.append([values.get(column, "1.0") for column in INTEL_COLUMNS])
    return rows


async def test_energibridge_crash_with_a_torn_row_restarts_and_keeps_complete_rows(
    tmp_path: Path,
) -> None:
    # Run 1 writes 4 complete rows, half a row, and dies; run 2 works.
    fake = write_fake_energibridge(tmp_path / "bin", rows=rows_at_now(4), die_on_runs=[1])
    probe = energibridge_probe(fake.path)
    outcome = await run_with_reference(tmp_path, "energibridge", probe, duration_s=1.5)
    health = outcome.health("energibridge")
    assert health.state == "stopped" and health.errors >= 1, health
    assert fake.runs == 2
    assert any("exited with code 3" in m for m in outcome.messages("energibridge"))
    assert probe.skipped_rows == 0  # the torn row was never parsed, let alone stored
    with Store.open(tmp_path / "faults.duckdb", read_only=True) as store:
        _, values = store.query(
            "SELECT s.value FROM samples s JOIN channels c USING (channel_id) "
            "WHERE c.name = 'package.energy_j' ORDER BY s.t_ns"
        )
    # Each run starts with the same 4 rows: every complete row of the crashed child is kept.
    fixed_rows = sorted(v for (v,) in values if v < 1000)
    assert fixed_rows == [5.0, 5.0, 6.0, 6.0, 7.0, 7.0, 8.0, 8.0]
    assert any(v >= 1000 for (v,) in values)  # and the restarted child's rows
    outcome.assert_reference_kept_its_rate()


async def test_energibridge_crashing_for_good_is_lost_and_leaves_no_child(
    tmp_path: Path,
) -> None:
    fake = write_fake_energibridge(tmp_path / "bin", die_on_runs=list(range(1, 50)))
    probe = energibridge_probe(fake.path, max_restarts=2)
    me = psutil.Process()
    # Children this test did not start (a multiprocessing resource tracker an earlier test
    # left running for the session) are not the probe's to reap.
    before = set(me.children(recursive=True))
    seen: list[psutil.Process] = []

    async def watch(daemon: Daemon) -> None:
        for _ in range(80):
            seen.extend(c for c in me.children(recursive=True) if c not in seen and c not in before)
            await anyio.sleep(0.01)

    outcome = await run_with_reference(
        tmp_path, "energibridge", probe, duration_s=1.5, during=watch
    )
    health = outcome.health("energibridge")
    assert health.state == "lost", health
    assert any(
        level == "error" and "probe lost" in m
        for p, level, m, _ in outcome.events
        if p == "energibridge"
    )
    assert fake.runs == 3  # the first start and two restarts
    assert alive(seen) == []
    outcome.assert_reference_kept_its_rate()
