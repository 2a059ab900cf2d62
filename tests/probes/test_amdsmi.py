"""amdsmi probe against a fake amdsmi module: channels, the counter at the edges (with its
wrap), the start-up counter check, and which channel answers for the GPU domain."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from greenmon.energy import Window, window_energy
from greenmon.probes.amdsmi import AmdsmiProbe, Options
from greenmon.probes.base import ProbeUnavailable
from greenmon.probes.nvml import NvmlProbe
from greenmon.store import SampleBatch, Store
from tests.fakes import amdsmi as fake
from tests.fakes.amdsmi import FakeAmdGpu, FakeAmdsmi
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.measure.support import greenmon_command

TICK_NS = 50_000_000


def probe_for(module: FakeAmdsmi, **options: object) -> AmdsmiProbe:
    return AmdsmiProbe(
        Options(**options),  # type: ignore[arg-type]
        amdsmi=module,
        sleep=module.sleep,
        clock=lambda: module.now_s,
    )


def test_every_gpu_gets_its_channels_with_units_and_domains() -> None:
    module = FakeAmdsmi([FakeAmdGpu("u0"), FakeAmdGpu("u1", power_w=150.0)])
    probe = probe_for(module)
    channels = {c.name: c for c in probe.open()}
    values = dict(zip(channels, probe.read(), strict=True))
    probe.close()
    for n in (0, 1):
        energy = channels[f"gpu{n}.energy_uj"]
        assert (energy.kind, energy.domain, energy.unit) == ("counter", "gpu", "uJ")
        assert energy.metadata["counter_check"] == "agrees"
        assert energy.metadata["counter_range"] == pytest.approx(2.0**64 * 15.3)
        # energy from the counter: the power gauge carries no domain (never counted twice)
        assert channels[f"gpu{n}.power_mw"].domain is None
        assert channels[f"gpu{n}.power_mw"].metadata["power_field"] == "current"
    assert channels["gpu0.energy_uj"].metadata["uuid"] == "u0"
    assert values["gpu1.power_mw"] == 150_000.0
    assert values["gpu0.util_gfx_percent"] == 40.0
    assert values["gpu0.util_memory_percent"] == 15.0
    assert values["gpu0.memory_used_bytes"] == 12 * 2**30
    assert values["gpu0.power_cap_mw"] == 750_000.0
    assert probe.findings == []
    assert module.shutdowns == 1


def test_processes_split_into_greenmons_own_and_background(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, parent in ((100, 1), (101, 100), (200, 1)):
        (proc / str(pid) / "task" / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(f"{pid} (p) S {parent} 0 0 0 0 0 0 0 0 0 0 0 0 0")
        children = "101 " if pid == 100 else ""
        (proc / str(pid) / "task" / str(pid) / "children").write_text(children)
    gpu = FakeAmdGpu("u0", processes=[(101, 3 * 2**30), (200, 2**30), (300, 2**20)])
    probe = probe_for(FakeAmdsmi([gpu]), tree_pids=[100], proc_root=str(proc))
    names = [c.name for c in probe.open()]
    values = dict(zip(names, probe.read(), strict=True))
    probe.close()
    assert values["gpu0.background_processes"] == 2.0
    assert values["gpu0.own_vram_bytes"] == 3 * 2**30


def test_average_power_where_the_current_one_is_missing() -> None:
    gpu = FakeAmdGpu("u0", power_na={"current_socket_power"})
    probe = probe_for(FakeAmdsmi([gpu]))
    channels = {c.name: c for c in probe.open()}
    probe.close()
    assert channels["gpu0.power_mw"].metadata["power_field"] == "average"


def test_unsupported_readings_leave_their_channels_out() -> None:
    gpu = FakeAmdGpu("u0", not_supported={"amdsmi_get_energy_count", "amdsmi_get_gpu_activity"})
    probe = probe_for(FakeAmdsmi([gpu]))
    channels = {c.name: c for c in probe.open()}
    probe.close()
    assert "gpu0.energy_uj" not in channels
    assert "gpu0.util_gfx_percent" not in channels
    # no counter: power answers for the GPU
    assert channels["gpu0.power_mw"].domain == "gpu"


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (fake.AMDSMI_STATUS_NO_PERM, "render"),
        (fake.AMDSMI_STATUS_DRIVER_NOT_LOADED, "modprobe amdgpu"),
        (fake.AMDSMI_STATUS_NO_DRV, "modprobe amdgpu"),
    ],
)
def test_missing_driver_or_access_is_unavailable_with_the_fix(code: int, words: str) -> None:
    with pytest.raises(ProbeUnavailable, match=words):
        probe_for(FakeAmdsmi([FakeAmdGpu("u0")], init_error=code)).open()


def test_no_gpu_and_no_library_are_unavailable() -> None:
    with pytest.raises(ProbeUnavailable, match="no AMD GPU"):
        probe_for(FakeAmdsmi([])).open()
    with pytest.raises(ProbeUnavailable, match=r"pip install 'greenmon\[amd\]'"):
        AmdsmiProbe(Options(module="greenmon_no_such_amdsmi")).open()


def test_a_module_spec_names_a_factory() -> None:
    probe = AmdsmiProbe(Options(module="tests.fakes.amdsmi:one_gpu", counter_check_s=0.0))
    names = [c.name for c in probe.open()]
    probe.close()
    assert "gpu0.energy_uj" in names


def record(store: Store, probe: AmdsmiProbe, ticks: int, probe_name: str = "amdsmi") -> list[int]:
    """Open, register and read ``probe`` ``ticks + 1`` times, one tick apart."""
    session = store.start_session({"host": "test"}, 0, 0)
    channels = list(probe.open())
    ids = store.register_channels(session, probe_name, channels, TICK_NS)
    batch = SampleBatch()
    for tick in range(ticks + 1):
        batch.append_row(tick * TICK_NS, ids, probe.read())
    store.write(batch, [], session)
    probe.close()
    return ids


@pytest.mark.parametrize("wraps", [False, True])
def test_window_energy_is_the_counter_difference_at_the_edges(tmp_path: Path, wraps: bool) -> None:
    # 32 bits of 15.3 uJ wrap every 65.7 kJ: start 300 J below the top; the start-up check
    # draws about 180 J, the window 600 J, so the wrap falls inside the window.
    top = 2**32
    gpu = FakeAmdGpu(
        "u0",
        counter_bits=32 if wraps else 64,
        accumulator=top - 300e6 / 15.3 if wraps else 1_000_000.0,
    )
    module = FakeAmdsmi([gpu])
    probe = probe_for(module, counter_bits=32 if wraps else 64)
    with Store.open(tmp_path / "db.duckdb") as store:
        ids = record(store, probe, 40)
        names = [c for (c,) in store.query("SELECT name FROM channels ORDER BY channel_id")[1]]
        energy_id = ids[names.index("gpu0.energy_uj")]
        result = window_energy(store.con, [Window(1, energy_id, 0, 40 * TICK_NS)])
        _, sources = store.query("SELECT probe, name FROM energy_sources WHERE domain = 'gpu'")
    # the fake's own log: the last 41 energy reads are the samples
    first, last = gpu.log[-41][1], gpu.log[-1][1]
    truth_uj = ((last - first) % 2**gpu.counter_bits) * gpu.counter_resolution_uj
    assert (last < first) is wraps
    assert result[(1, energy_id)].energy_j == pytest.approx(truth_uj * 1e-6, rel=1e-9)
    assert result[(1, energy_id)].coverage == 1.0
    # 300 W for 40 reads of 0.05 s each on the fake's clock
    assert truth_uj * 1e-6 == pytest.approx(300.0 * 40 * 0.05, rel=1e-3)
    assert sources == [("amdsmi", "gpu0.energy_uj")]


def test_a_counter_that_disagrees_with_power_is_flagged_and_power_answers(
    tmp_path: Path,
) -> None:
    gpu = FakeAmdGpu("u0", counter_scale=0.01)
    probe = probe_for(FakeAmdsmi([gpu]))
    with Store.open(tmp_path / "db.duckdb") as store:
        record(store, probe, 10)
        _, sources = store.query("SELECT name FROM energy_sources WHERE domain = 'gpu'")
        _, meta = store.query("SELECT metadata FROM channels WHERE name = 'gpu0.energy_uj'")
    assert sources == [("gpu0.power_mw",)]
    [finding] = probe.findings
    assert "disagrees with its power readings" in finding and "integrates its power" in finding
    metadata = json.loads(meta[0][0])
    assert metadata["counter_check"] == "disagrees"
    assert metadata["finding"] == finding


def test_an_nvidia_and_an_amd_gpu_both_answer_for_the_gpu_domain(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db.duckdb") as store:
        session = store.start_session({"host": "test"}, 0, 0)
        nvml = NvmlProbe(nvml=FakeNvml([FakeGpu("GPU-a")]))
        store.register_channels(session, "nvml", list(nvml.open()), TICK_NS)
        nvml.close()
        module = FakeAmdsmi([FakeAmdGpu("u0")])
        amd = probe_for(module)
        store.register_channels(session, "amdsmi", list(amd.open()), TICK_NS)
        amd.close()
        _, sources = store.query(
            "SELECT probe, name FROM energy_sources WHERE domain = 'gpu' ORDER BY probe"
        )
    assert sources == [("amdsmi", "gpu0.energy_uj"), ("nvml", "gpu0.energy_mj")]


def test_greenmon_probes_says_why_amd_is_unavailable_and_what_to_install(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        greenmon_command("probes", "--json"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=True,
    )
    [entry] = [e for e in json.loads(result.stdout) if e["probe"] == "amdsmi"]
    assert entry["available"] is False
    # here: no amdsmi package, or one without ROCm's library; either way the fix is named
    assert "greenmon[amd]" in entry["reason"] or "ROCm" in entry["reason"]


def test_the_daemon_records_the_finding_as_a_warning(tmp_path: Path) -> None:
    import anyio

    from greenmon.config import parse_config
    from greenmon.daemon import Daemon

    module = FakeAmdsmi([FakeAmdGpu("u0", counter_scale=0.01)])

    async def run() -> None:
        with Store.open(tmp_path / "db.duckdb") as store:
            probes = {"amdsmi": probe_for(module)}
            daemon = Daemon(store, parse_config(""), probes=probes, handle_signals=False)  # type: ignore[dict-item]
            await daemon.run(0.3)

    anyio.run(run)
    with Store.open(tmp_path / "db.duckdb", read_only=True) as store:
        _, events = store.query("SELECT level, probe, message FROM events WHERE level = 'warning'")
    assert [(level, probe) for level, probe, _ in events] == [("warning", "amdsmi")]
    assert "disagrees with its power readings" in events[0][2]


def test_an_amdsmi_without_rocm_is_unavailable_and_prints_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # what amdsmi 7.0.2 does on import when libamd_smi.so is missing (tried here from the
    # registry's wheel): prints, then fails with a KeyError, not an ImportError
    (tmp_path / "greenmon_test_broken_amdsmi.py").write_text(
        "print('Unable to find libamd_smi.so')\nraise KeyError('libamd_smi.so')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ProbeUnavailable, match=r"cannot load libamd_smi\.so.*ROCm"):
        AmdsmiProbe(Options(module="greenmon_test_broken_amdsmi")).open()
    assert capsys.readouterr().out == ""


def test_the_real_amdsmi_here_opens_or_says_why() -> None:
    import importlib.util

    if importlib.util.find_spec("amdsmi") is None:
        pytest.skip("amdsmi is not installed here")
    probe = AmdsmiProbe()
    try:
        channels = probe.open()
    except ProbeUnavailable as error:
        assert any(word in str(error) for word in ("ROCm", "amdgpu", "render", "no AMD GPU"))
    else:
        assert any(c.domain == "gpu" for c in channels)
    finally:
        probe.close()


def test_greenmon_probes_prints_the_finding_of_a_failed_counter_check(tmp_path: Path) -> None:
    config = tmp_path / "greenmon.toml"
    config.write_text('[probes.amdsmi]\nmodule = "tests.fakes.amdsmi:disagreeing"\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(
        greenmon_command("probes", "--config", str(config)),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=True,
        env=env,
    )
    section = result.stdout.split("amdsmi: ", 1)[1].split("\nnetio", 1)[0]
    assert section.startswith("available")
    assert "finding: AMD GPU 0: its energy counter disagrees with its power readings" in section
    # the counter is listed without a domain, power answers for the GPU
    assert "gpu0.energy_uj (uJ, counter)" in section
    assert "gpu0.power_mw (mW, gauge, domain=gpu)" in section
