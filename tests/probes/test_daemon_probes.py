"""All the new probes inside one daemon, on one clock; a lost GPU stops only its probe."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from greenmon.config import parse_config
from greenmon.daemon import Daemon, DaemonSummary
from greenmon.probes.base import Probe
from greenmon.probes.energibridge import EnergiBridgeProbe
from greenmon.probes.energibridge import Options as EnergiBridgeOptions
from greenmon.probes.estimate import EstimateProbe
from greenmon.probes.netio import NetioProbe
from greenmon.probes.netio import Options as NetioOptions
from greenmon.probes.nvml import NvmlProbe
from greenmon.store import Store
from tests.fakes.energibridge import write_fake_energibridge
from tests.fakes.netio import NetioState, ServerThread
from tests.fakes.nvml import FakeGpu, FakeNvml

pytestmark = pytest.mark.anyio

CONFIG = """
[probes.nvml]
rate_hz = 50
[probes.netio]
rate_hz = 10
[probes.energibridge]
rate_hz = 20
[probes.estimate]
rate_hz = 20
"""


async def test_probes_share_the_daemon_and_a_lost_gpu_stops_alone(tmp_path: Path) -> None:
    gpu = FakeGpu("GPU-a")
    module = FakeNvml([gpu])
    fake_eb = write_fake_energibridge(tmp_path / "bin")
    with ServerThread(NetioState(cycle=True)) as device:
        probes: dict[str, Probe] = {
            "nvml": NvmlProbe(nvml=module),
            "netio": NetioProbe(  # type: ignore[dict-item]
                NetioOptions(enabled=True, host=device.host),
                environ={"GREENMON_NETIO_USER": "netio", "GREENMON_NETIO_PASSWORD": "s3cret-pw"},
            ),
            "energibridge": EnergiBridgeProbe(
                EnergiBridgeOptions(path=str(fake_eb.path), msr_device="", interval_ms=20)
            ),
            "estimate": EstimateProbe(),
        }
        store = Store.open(tmp_path / "db.duckdb")
        daemon = Daemon(store, parse_config(CONFIG), probes=probes, handle_signals=False)
        outcome: dict[str, DaemonSummary] = {}

        async def run() -> None:
            outcome["summary"] = await daemon.run(1.5)

        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await daemon.started.wait()  # every probe is open and sampling
            await anyio.sleep(0.3)
            gpu.lost = True
        summary = outcome["summary"]
        _, rows = store.query(
            "SELECT c.probe, count(*), min(s.t_ns), max(s.t_ns) "
            "FROM samples s JOIN channels c USING (channel_id) GROUP BY 1"
        )
        _, events = store.query("SELECT probe, message FROM events WHERE level = 'error'")
        store.close()
    states = {p.probe: p.state for p in summary.probes}
    assert states == {
        "nvml": "lost",
        "netio": "stopped",
        "energibridge": "stopped",
        "estimate": "stopped",
    }
    assert any(p == "nvml" and "GPU_IS_LOST" in m for p, m in events)
    spans = {probe: (count, lo, hi) for probe, count, lo, hi in rows}
    assert set(spans) == {"nvml", "netio", "energibridge", "estimate"}
    # the others went on after the GPU was lost, on the same monotonic clock
    nvml_end = spans["nvml"][2]
    for probe in ("netio", "energibridge", "estimate"):
        assert spans[probe][2] > nvml_end + 500_000_000, probe
    # EnergiBridge's epoch-ms stamps land inside the run on greenmon's clock
    run_lo = min(lo for _, lo, _ in spans.values())
    assert spans["energibridge"][1] >= run_lo - 1_000_000_000
