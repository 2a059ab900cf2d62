"""EnergiBridge probe driving a fake ``energibridge`` executable that writes the real format."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from greenmon.clock import ClockAnchor, now_ns
from greenmon.energy import Window, window_energy
from greenmon.probes.base import ProbeLost, ProbeUnavailable, Values
from greenmon.probes.energibridge import (
    EnergiBridgeCrashed,
    EnergiBridgeProbe,
    Options,
    column_channel,
)
from greenmon.store import SampleBatch, Store
from tests.fakes.energibridge import (
    INTEL_GPU_COLUMNS,
    read_sample,
    write_fake_energibridge,
)


def _options(path: Path, **extra: object) -> Options:
    return Options(path=str(path), msr_device="", **extra)  # type: ignore[arg-type]


def _read_rows(
    probe: EnergiBridgeProbe, count: int, timeout_s: float = 5.0
) -> list[tuple[int, Values]]:
    rows: list[tuple[int, Values]] = []
    deadline = time.monotonic() + timeout_s
    while len(rows) < count:
        assert time.monotonic() < deadline, f"only {len(rows)} of {count} rows arrived"
        rows.extend(probe.read().rows)
        time.sleep(0.01)
    return rows


def test_real_amd_file_gives_the_counter_difference_as_joules(tmp_path: Path) -> None:
    header, sample_rows = read_sample()
    fake = write_fake_energibridge(
        tmp_path / "bin", header=header, rows=sample_rows, generate=False
    )
    first_epoch_ms = int(sample_rows[0][1])
    # any anchor will do; this one puts the study's rows one second into the clock
    anchor = ClockAnchor(t_ns=0, anchor_ns=first_epoch_ms * 1_000_000 - 1_000_000_000)
    probe = EnergiBridgeProbe(_options(fake.path), anchor=anchor)
    channels = list(probe.open())
    names = [c.name for c in channels]
    cpu = channels[names.index("cpu.energy_j")]
    assert (cpu.unit, cpu.kind, cpu.domain) == ("J", "counter", "cpu")
    assert cpu.metadata == {"column": "CPU_ENERGY (J)"}  # no counter_range: unknown here
    assert channels[names.index("core0.energy_j")].domain == "cpu_core"
    assert {"cpu0.usage_percent", "cpu31.freq_mhz", "core15.volt_v", "ram.used_bytes"} <= set(names)
    rows = _read_rows(probe, len(sample_rows))
    probe.close()
    assert [t for t, _ in rows] == [1_000_000_000, 1_001_000_000, 1_201_000_000]
    cpu_index = names.index("cpu.energy_j")
    column = header.index("CPU_ENERGY (J)")
    expected_j = float(sample_rows[-1][column]) - float(sample_rows[0][column])
    with Store.open(tmp_path / "db.duckdb") as store:
        session = store.start_session({"host": "test"}, 0, 0)
        ids = store.register_channels(session, "energibridge", channels, 200_000_000)
        batch = SampleBatch()
        for t_ns, values in rows:
            batch.append_row(t_ns, ids, values)
        store.write(batch, [], session)
        window = Window(1, ids[cpu_index], rows[0][0], rows[-1][0])
        result = window_energy(store.con, [window])[(1, ids[cpu_index])]
    assert result.energy_j == pytest.approx(expected_j, rel=1e-12)
    assert expected_j == pytest.approx(9.914428710938, rel=1e-9)
    assert result.resets == 0 and result.coverage == 1.0


def test_intel_columns_live_rows_on_the_monotonic_clock(tmp_path: Path) -> None:
    fake = write_fake_energibridge(tmp_path / "bin", energy_step_j=2.5)
    probe = EnergiBridgeProbe(_options(fake.path, interval_ms=20, counter_range_j=65536.0))
    channels = {c.name: c for c in probe.open()}
    assert {n: (c.kind, c.domain) for n, c in channels.items() if c.kind == "counter"} == {
        "dram.energy_j": ("counter", "dram"),
        "package.energy_j": ("counter", "cpu"),
        "pp0.energy_j": ("counter", "cpu_core"),
        "pp1.energy_j": ("counter", "cpu_uncore"),
    }
    assert channels["package.energy_j"].metadata["counter_range"] == 65536.0
    rows = _read_rows(probe, 3)
    child = probe._child
    assert child is not None
    probe.close()
    assert child.process.poll() is not None  # stopped and reaped
    [argv] = fake.argvs()
    assert argv[argv.index("-i") + 1] == "20" and "-m" not in argv
    assert argv[-3:] == ["--", "sleep", "infinity"]
    # EnergiBridge's epoch-ms Time lands within a second of greenmon's own clock
    assert all(abs(t_ns - now_ns()) < 2_000_000_000 for t_ns, _ in rows)
    package = list(channels).index("package.energy_j")
    energies = [float(values[package] or 0.0) for _, values in rows]
    assert energies == sorted(energies) and energies[1] - energies[0] == pytest.approx(2.5)


def test_crash_mid_line_is_an_error_then_a_restart(tmp_path: Path) -> None:
    header, sample_rows = read_sample()
    fake = write_fake_energibridge(
        tmp_path / "bin", header=header, rows=sample_rows, generate=False, die_on_runs=[1]
    )
    probe = EnergiBridgeProbe(_options(fake.path, restart_backoff_s=0.0))
    probe.open()
    rows = _read_rows(probe, 3)
    deadline = time.monotonic() + 5
    with pytest.raises(EnergiBridgeCrashed, match=r"exited with code 3.*panicked"):
        while time.monotonic() < deadline:
            rows += probe.read().rows
            time.sleep(0.01)
    assert len(rows) == 3  # the torn fourth row was never returned
    # the next read restarts it (backoff 0 here); the second run does not die
    again = _read_rows(probe, 3)
    assert fake.runs == 2 and len(again) == 3
    probe.close()


def test_a_child_that_keeps_crashing_loses_the_probe(tmp_path: Path) -> None:
    header, sample_rows = read_sample()
    fake = write_fake_energibridge(
        tmp_path / "bin", header=header, rows=sample_rows[:1], generate=False, die_on_runs=[1, 2, 3]
    )
    probe = EnergiBridgeProbe(_options(fake.path, restart_backoff_s=0.0, max_restarts=1))
    probe.open()
    errors: list[BaseException] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            probe.read()
        except EnergiBridgeCrashed as error:
            errors.append(error)
        except ProbeLost as lost:
            errors.append(lost)
            break
        time.sleep(0.01)
    probe.close()
    assert [type(e) for e in errors] == [EnergiBridgeCrashed, ProbeLost]
    assert fake.runs == 2


def test_missing_binary_is_unavailable_with_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ProbeUnavailable, match="EnergiBridge/releases"):
        EnergiBridgeProbe(_options(tmp_path / "nowhere" / "energibridge")).open()


def test_missing_msr_device_says_load_the_module(tmp_path: Path) -> None:
    fake = write_fake_energibridge(tmp_path / "bin")
    options = Options(path=str(fake.path), msr_device=str(tmp_path / "cpu0msr"))
    with pytest.raises(ProbeUnavailable, match=r"modprobe msr"):
        EnergiBridgeProbe(options).open()
    assert fake.runs == 0


def test_msr_permission_failure_says_setcap(tmp_path: Path) -> None:
    fake = write_fake_energibridge(
        tmp_path / "bin",
        fail_stderr="thread 'main' panicked at src/cpu/msr/linux.rs: called `Result::unwrap()` "
        'on an `Err` value: Os { code: 13, kind: PermissionDenied, message: "Permission denied" }',
    )
    with pytest.raises(ProbeUnavailable, match=r"setcap cap_sys_rawio=ep"):
        EnergiBridgeProbe(_options(fake.path)).open()


def test_gpu_and_unknown_columns_map_to_channels() -> None:
    gpu = column_channel("GPU0_POWER (mWatts)", None)
    assert (gpu.name, gpu.unit, gpu.domain, gpu.metadata["measures"]) == (
        "gpu0.power_mw",
        "mW",
        None,
        "gpu",
    )
    assert column_channel("PACAKGE_ENERGY (J)", None).name == "package.energy_j"
    assert column_channel("CORE12_FREQ (MHZ)", None).name == "core12.freq_mhz"
    system = column_channel("SYSTEM_POWER (Watts)", None)
    assert (system.name, system.unit, system.domain) == ("system.power_w", "W", None)
    assert column_channel("CPU_TEMP_3", None).name == "cpu3.temperature_c"
    other = column_channel("FAN_SPEED (RPM)", None)
    assert (other.name, other.unit, other.kind) == ("fan_speed_rpm", "1", "gauge")
    assert "GPU0_POWER (mWatts)" in INTEL_GPU_COLUMNS
