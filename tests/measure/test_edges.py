"""Edge reads: a window's counters are read at the very instant of its edges, so its energy
is their exact difference, whatever the polling rate; a stream that cannot be asked
(EnergiBridge) is interpolated and says so."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from greenmon.api.messages import WindowResult
from greenmon.config import parse_config
from greenmon.daemon import Daemon
from greenmon.monitor import Monitor
from greenmon.probes.base import Probe
from greenmon.probes.energibridge import EnergiBridgeProbe
from greenmon.probes.energibridge import Options as EnergiBridgeOptions
from greenmon.store import Store
from greenmon.windows import windows_service
from tests.fakes.energibridge import write_fake_energibridge
from tests.fakes.rapl import FakeRaplTree
from tests.measure.support import cli_env, greenmon_command

# The test is the hardware: it steps the counter itself, just inside each edge.  At 1 Hz
# the poll around an edge is up to a second away, so an interpolated edge would spread
# each step over that second and miss most of it.
CONFIG = """
[probes.rapl]
rate_hz = 1
sysfs_root = "{root}"
[probes.host]
enabled = false
[probes.nvml]
enabled = false
[probes.estimate]
enabled = false
[probes.energibridge]
enabled = false
"""


def test_a_step_just_inside_a_monitor_window_is_counted_exactly(
    tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENMON_SOCKET", str(short_dir / "d.sock"))
    tree = FakeRaplTree(tmp_path / "powercap")
    zone = tree.add_zone("intel-rapl:0", "package-0", start_uj=123_456_789)
    config = tmp_path / "greenmon.toml"
    config.write_text(CONFIG.format(root=tmp_path / "powercap"))
    db = tmp_path / "edges.duckdb"
    written: list[int] = []  # every value the fake counter held, in order
    with Monitor(db=db, config=config) as m:
        results = []
        for step_uj in (10_000_000, 60_000_000, 1_234_567):
            written.append(zone.value_uj)
            with m.window("step", step_uj=step_uj) as w:
                zone.advance(step_uj)  # the power rises just after the window opens
                written.append(zone.value_uj)
                time.sleep(0.15)
                zone.advance(3 * step_uj)  # and again just before it closes
                written.append(zone.value_uj)
            results.append((w, step_uj))
    for w, step_uj in results:
        assert w.energy_j["cpu"] == pytest.approx(4 * step_uj * 1e-6, rel=1e-12, abs=0)
        assert w.interpolated == []
        assert w.coverage == 1.0
        assert "short_window" not in w.flags
    # the edges are ordinary samples, stamped exactly at the window's start and end
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            """SELECT w.window_id, s0.value, s1.value FROM windows w
               JOIN samples s0 ON s0.t_ns = w.start_ns
               JOIN samples s1 ON s1.t_ns = w.end_ns ORDER BY w.window_id"""
        )
    assert [(v0, v1) for _, v0, v1 in rows] == [
        (float(written[3 * i]), float(written[3 * i + 2])) for i in range(3)
    ]


@pytest.mark.anyio
async def test_an_energibridge_window_is_interpolated_and_says_so(tmp_path: Path) -> None:
    fake = write_fake_energibridge(tmp_path / "bin", energy_step_j=2.5)
    probes: dict[str, Probe] = {
        "energibridge": EnergiBridgeProbe(
            EnergiBridgeOptions(path=str(fake.path), msr_device="", interval_ms=50)
        )
    }
    store = Store.open(tmp_path / "eb.duckdb")
    daemon = Daemon(
        store,
        parse_config("[probes.host]\nenabled = false\n"),
        probes=probes,
        services=[windows_service()],
        handle_signals=False,
    )
    result: list[WindowResult] = []
    async with anyio.create_task_group() as group:
        group.start_soon(daemon.run)
        await daemon.started.wait()
        assert daemon.windows is not None
        window = await daemon.windows.open_window("eb")
        await anyio.sleep(0.6)
        result.append(await daemon.windows.close_window(window.window_id))
        daemon.request_stop()
    store.close()
    (w,) = result
    assert "cpu" in w.energy_j
    assert "cpu" in w.interpolated


def test_greenmon_measure_records_what_measuring_cost(tmp_path: Path, short_dir: Path) -> None:
    """The observer is a channel: after `greenmon measure` (a separate process) the file
    holds greenmon's own CPU seconds, read at the window's edges like the energy."""
    tree = FakeRaplTree(tmp_path / "powercap")
    tree.add_zone("intel-rapl:0", "package-0")
    config = tmp_path / "greenmon.toml"
    config.write_text(
        CONFIG.format(root=tmp_path / "powercap").replace(
            "[probes.host]\nenabled = false\n", "[probes.host]\n"
        )
    )
    db = tmp_path / "m.duckdb"
    result = subprocess.run(
        greenmon_command(
            "measure", "--db", str(db), "--config", str(config), "--",
            sys.executable, "-c", "import time; time.sleep(0.5)",
        ),
        capture_output=True, text=True, cwd=tmp_path,
        env=cli_env(short_dir / "d.sock"), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            """SELECT c.name, c.kind, c.unit, count(*), min(s.value), max(s.value),
                      count(*) FILTER (WHERE s.t_ns IN (w.start_ns, w.end_ns))
               FROM samples s JOIN channels c USING (channel_id)
               JOIN windows w ON w.session_id = c.session_id
               WHERE c.probe = 'host' AND c.name LIKE 'greenmon.%'
               GROUP BY ALL ORDER BY c.name"""
        )
    by_name = {r[0]: r[1:] for r in rows}
    assert set(by_name) == {"greenmon.cpu_s", "greenmon.sampling_cpu_s"}
    for kind, unit, count, low, high, at_edges in by_name.values():
        assert (kind, unit) == ("counter", "s")
        assert count >= 2 and 0 <= low <= high
        assert at_edges == 2  # read at the window's start and end
    # the daemon process spent CPU (starting up alone costs far more than a tick)
    assert by_name["greenmon.cpu_s"][4] > 0
