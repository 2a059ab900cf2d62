"""NVML probe against a fake NVML module with stateful GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmon.energy import Window, window_energy
from greenmon.probes.base import ProbeLost, ProbeUnavailable
from greenmon.probes.nvml import NvmlProbe, Options
from greenmon.store import SampleBatch, Store
from tests.fakes import nvml as fake
from tests.fakes.nvml import FakeGpu, FakeNvml, two_gpus

FULL_SET = [
    "energy_mj",
    "power_mw",
    "util_gpu_percent",
    "util_memory_percent",
    "memory_used_bytes",
    "memory_total_bytes",
    "memory_percent",
    "sm_clock_mhz",
    "memory_clock_mhz",
    "temperature_c",
    "power_limit_mw",
    "background_processes",
]


def test_every_gpu_gets_the_full_channel_set_with_units_and_domains() -> None:
    module = two_gpus()
    probe = NvmlProbe(nvml=module)
    channels = probe.open()
    assert [c.name for c in channels] == [f"gpu{i}.{n}" for i in (0, 1) for n in FULL_SET]
    by_name = {c.name: c for c in channels}
    energy = by_name["gpu0.energy_mj"]
    assert (energy.unit, energy.kind, energy.domain) == ("mJ", "counter", "gpu")
    power = by_name["gpu0.power_mw"]
    # with a counter present, the power gauge must not add into the GPU total again
    assert (power.unit, power.kind, power.domain) == ("mW", "gauge", None)
    assert power.metadata["power_field"] == "instant"
    assert power.metadata["uuid"] == "GPU-11111111-aaaa-bbbb-cccc-000000000000"
    values = probe.read()
    row = dict(zip([c.name for c in channels], values, strict=True))
    assert row["gpu0.power_mw"] == 75_001.0  # the instant field, not nvmlDeviceGetPowerUsage
    assert row["gpu0.memory_percent"] == pytest.approx(25.0)
    assert row["gpu1.sm_clock_mhz"] == 1410.0
    probe.close()
    probe.close()
    assert module.shutdowns == 1


def test_power_falls_back_to_power_usage_and_records_it() -> None:
    gpu = FakeGpu("GPU-a", has_instant_power_field=False)
    probe = NvmlProbe(nvml=FakeNvml([gpu]))
    channels = {c.name: c for c in probe.open()}
    assert channels["gpu0.power_mw"].metadata["power_field"] == "usage_1s_average"
    values = dict(zip(channels, probe.read(), strict=True))
    assert values["gpu0.power_mw"] == 75_000.0
    probe.close()


def test_not_supported_functions_leave_their_channels_out() -> None:
    gpu = FakeGpu(
        "GPU-old",
        not_supported={
            "nvmlDeviceGetTotalEnergyConsumption",
            "nvmlDeviceGetFieldValues",
            "nvmlDeviceGetClockInfo",
        },
    )
    probe = NvmlProbe(nvml=FakeNvml([gpu]))
    channels = {c.name: c for c in probe.open()}
    assert "gpu0.energy_mj" not in channels
    assert "gpu0.sm_clock_mhz" not in channels and "gpu0.memory_clock_mhz" not in channels
    # no counter: the power gauge is the GPU's energy source, so it carries the domain
    assert channels["gpu0.power_mw"].domain == "gpu"
    assert channels["gpu0.power_mw"].metadata["power_field"] == "usage_1s_average"
    assert len(probe.read()) == len(channels)
    # a driver that stops supporting a reading mid-run gives a missing value, not a failure
    gpu.not_supported.add("nvmlDeviceGetTemperature")
    values = dict(zip(channels, probe.read(), strict=True))
    assert values["gpu0.temperature_c"] is None
    assert values["gpu0.power_mw"] == 75_000.0
    probe.close()


def test_devices_by_index_and_uuid() -> None:
    module = two_gpus()
    probe = NvmlProbe(Options(devices=["GPU-22222222-aaaa-bbbb-cccc-000000000000"]), nvml=module)
    assert {c.name.split(".")[0] for c in probe.open()} == {"gpu1"}
    probe.close()
    probe = NvmlProbe(Options(devices=[0]), nvml=module)
    assert {c.name.split(".")[0] for c in probe.open()} == {"gpu0"}
    probe.close()
    with pytest.raises(ProbeUnavailable, match=r"GPU-nope.*GPUs here: 0: GPU-1111"):
        NvmlProbe(Options(devices=["GPU-nope"]), nvml=module).open()
    assert not module.initialised  # a failed open shuts NVML down again


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (fake.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so was not found"),
        (fake.NVML_ERROR_DRIVER_NOT_LOADED, "driver is not loaded"),
        (fake.NVML_ERROR_NO_PERMISSION, "/dev/nvidia"),
    ],
)
def test_missing_library_or_driver_is_unavailable_with_the_reason(code: int, words: str) -> None:
    with pytest.raises(ProbeUnavailable, match=words):
        NvmlProbe(nvml=FakeNvml([], init_error=code)).open()


def test_no_gpu_is_unavailable() -> None:
    with pytest.raises(ProbeUnavailable, match="no NVIDIA GPU"):
        NvmlProbe(nvml=FakeNvml([])).open()


def test_real_pynvml_without_a_driver_is_unavailable() -> None:
    pytest.importorskip("pynvml")
    probe = NvmlProbe()
    try:
        probe.open()
    except ProbeUnavailable as error:
        assert "NVIDIA" in str(error) or "NVML" in str(error)
    else:  # a machine with a GPU
        probe.close()


def test_lost_gpu_stops_the_probe_and_transient_errors_are_gaps() -> None:
    gpu = FakeGpu("GPU-a")
    probe = NvmlProbe(nvml=FakeNvml([gpu]))
    probe.open()
    probe.read()
    original = gpu.energy_mj
    gpu.lost = True
    with pytest.raises(ProbeLost, match="GPU_IS_LOST"):
        probe.read()
    assert gpu.energy_mj == original
    probe.close()


def test_energy_over_a_window_is_the_counter_difference(tmp_path: Path) -> None:
    gpu = FakeGpu("GPU-a", energy_step_mj=2_345)
    probe = NvmlProbe(nvml=FakeNvml([gpu]))
    channels = list(probe.open())
    names = [c.name for c in channels]
    with Store.open(tmp_path / "db.duckdb") as store:
        session = store.start_session({"host": "test"}, 0, 0)
        ids = store.register_channels(session, "nvml", channels, 50_000_000)
        batch = SampleBatch()
        for tick in range(41):
            batch.append_row(tick * 50_000_000, ids, probe.read())
        store.write(batch, [], session)
        energy_id = ids[names.index("gpu0.energy_mj")]
        power_id = ids[names.index("gpu0.power_mw")]
        end_ns = 40 * 50_000_000
        result = window_energy(
            store.con, [Window(1, energy_id, 0, end_ns), Window(2, power_id, 0, end_ns)]
        )
    probe.close()
    assert result[(1, energy_id)].energy_j == pytest.approx(40 * 2_345 * 1e-3)
    assert result[(1, energy_id)].coverage == 1.0
    # the instant power gauge integrates to power x time (75.001 W for 2 s)
    assert result[(2, power_id)].energy_j == pytest.approx(75.001 * 2.0)
