"""Hardware settings against a fake cpufreq tree and the fake NVML module, no runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from greenmon.errors import PlanError
from greenmon.hardware.checks import check_hardware, has_cap_sys_admin, require_hardware
from greenmon.hardware.cpufreq import online_cpufreq_dirs
from greenmon.hardware.journal import UnitSettings, restore_journal
from greenmon.plan import Plan, check_plan, parse_plan
from greenmon.store import Store
from tests.fakes.cpufreq import FakeCpufreqTree
from tests.fakes.nvml import FakeGpu, FakeNvml

PLAN = """
models = ["tiny"]
configurations = ["fake/cpu"]
repetitions = 1
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine" }}

[factors]
{factors}

[hardware]
cpufreq_root = "{root}"
nvml_module = "fake-nvml"
"""


def _plan(root: Path, factors: str) -> Plan:
    return parse_plan(PLAN.format(root=root, factors=factors))


def _nvml() -> FakeNvml:
    nvml = FakeNvml([FakeGpu("GPU-aaaa"), FakeGpu("GPU-bbbb")])
    return nvml


def _journal(store: Store) -> list[tuple[object, ...]]:
    return store.execute(
        "SELECT target, previous_value, applied_value, read_back, status, "
        "applied_ns IS NOT NULL, restored_ns IS NOT NULL FROM restore_journal ORDER BY journal_id"
    )


def test_online_cpus_only(tmp_path: Path) -> None:
    tree = FakeCpufreqTree(tmp_path / "cpu", cpus=4, offline=(2,))
    assert [d.parent.name for d in online_cpufreq_dirs(tree.root)] == ["cpu0", "cpu1", "cpu3"]
    (tree.root / "online").unlink()  # then each cpuN/online says
    assert [d.parent.name for d in online_cpufreq_dirs(tree.root)] == ["cpu0", "cpu1", "cpu3"]


def test_each_setting_applied_read_back_journaled_and_restored(tmp_path: Path) -> None:
    tree = FakeCpufreqTree(tmp_path / "cpu", cpus=3, offline=(1,))
    nvml = _nvml()
    store = Store.open(tmp_path / "db.duckdb")
    unit = UnitSettings(store, _plan(tree.root, "").spec.hardware, "s", "e", 7, nvml=nvml)
    levels = {
        "cpu_governor": "performance",
        "cpu_max_freq_khz": 2_000_000,
        "gpu_power_limit_w": 200,
        "gpu_locked_clocks_mhz": [1000, 1400, 5001],
    }
    record = unit.apply(levels)

    # in force now: the online CPUs and both GPUs; the offline CPU untouched
    assert [tree.read(n, "scaling_governor") for n in (0, 2)] == ["performance"] * 2
    assert [tree.read(n, "scaling_max_freq") for n in (0, 2)] == ["2000000"] * 2
    assert tree.read(1, "scaling_governor") == "powersave"
    for gpu in nvml.gpus:
        assert gpu.power_limit_mw == 200_000
        # 1400 MHz is not a supported clock: the fake driver snaps to 1395 as a real one does
        assert gpu.locked_sm_clocks_mhz == [1005, 1395]
        assert gpu.locked_memory_clocks_mhz == [5001, 5001]
    # recorded: what was asked and what is in force (the clamped clock)
    assert record["cpu_governor"] == {"requested": "performance", "in_force": "performance"}
    assert record["cpu_max_freq_khz"]["in_force"] == "2000000"
    assert record["gpu_power_limit_mw"] == {"requested": 200_000, "in_force": "200000"}
    assert record["gpu_sm_clock_mhz"] == {"requested": [1000, 1400], "in_force": "1395"}
    assert record["gpu_memory_clock_mhz"]["in_force"] == "5001"
    assert record["gpu_clock_method"]["in_force"] == "locked"

    rows = _journal(store)
    assert len(rows) == 2 + 2 + 2 * 3
    assert all(status == "applied" and applied and not restored
               for *_, status, applied, restored in rows)  # fmt: skip
    first = rows[0]
    assert json.loads(str(first[0]))["path"].endswith("cpu0/cpufreq/scaling_governor")
    assert first[1:4] == ("powersave", "performance", "performance")
    power = [r for r in rows if "power_limit_mw" in str(r[0])]
    assert power[0][1:4] == ("300000", "200000", "200000")
    clocks = [r for r in rows if "gpu_locked_clocks_mhz" in str(r[0])]
    assert clocks[0][1:4] == ("reset", "1000,1400", "1395")

    assert unit.restore() == []
    assert tree.values("scaling_governor") == ["powersave"] * 3
    assert tree.values("scaling_max_freq") == ["3600000"] * 3
    for gpu in nvml.gpus:
        assert gpu.power_limit_mw == 300_000
        assert gpu.locked_sm_clocks_mhz is None and gpu.locked_memory_clocks_mhz is None
        assert gpu.sm_clock_mhz == gpu.default_sm_clock_mhz
    assert all(status == "restored" and restored for *_, status, _a, restored in _journal(store))
    assert restore_journal(store) == []  # nothing left
    store.close()


def test_older_gpu_gets_application_clocks(tmp_path: Path) -> None:
    old = FakeGpu(
        "GPU-old",
        not_supported={"nvmlDeviceSetGpuLockedClocks", "nvmlDeviceSetMemoryLockedClocks"},
    )
    nvml = FakeNvml([old])
    store = Store.open(tmp_path / "db.duckdb")
    unit = UnitSettings(store, _plan(tmp_path, "").spec.hardware, "s", "e", 1, nvml=nvml)
    record = unit.apply({"gpu_locked_clocks_mhz": [900, 1000, 5001]})
    assert old.applications_clocks_mhz == [5001, 990]  # highest supported SM clock <= 1000
    assert record["gpu_clock_method"]["in_force"] == "applications"
    assert record["gpu_sm_clock_mhz"]["in_force"] == "990"
    statuses = [r[4] for r in _journal(store)]
    assert statuses == ["unchanged", "applied"]  # the refused lock changed nothing
    unit.restore()
    assert old.applications_clocks_mhz == [9501, 1410]
    store.close()


def test_a_refused_write_is_restored_but_not_journaled_as_applied(tmp_path: Path) -> None:
    tree = FakeCpufreqTree(tmp_path / "cpu", cpus=2)
    store = Store.open(tmp_path / "db.duckdb")
    nvml = FakeNvml([FakeGpu("GPU-x", no_permission=True)])
    unit = UnitSettings(store, _plan(tree.root, "").spec.hardware, "s", "e", 1, nvml=nvml)
    with pytest.raises(Exception, match="root or CAP_SYS_ADMIN"):
        unit.apply({"cpu_governor": "performance", "gpu_power_limit_w": 200})
    assert tree.values("scaling_governor") == ["performance"] * 2
    assert unit.restore() == []
    assert tree.values("scaling_governor") == ["powersave"] * 2
    assert [r[4] for r in _journal(store)] == ["restored", "restored", "unchanged"]
    store.close()


def test_out_of_range_levels_are_refused_with_the_range(tmp_path: Path) -> None:
    tree = FakeCpufreqTree(tmp_path / "cpu", listed_khz=(1_200_000, 2_400_000, 3_000_000))
    plan = _plan(
        tree.root,
        'cpu_governor = ["performance", "turbo"]\n'
        "cpu_max_freq_khz = [1000000, 2400000]\n"
        "gpu_power_limit_w = [90, 200]\n"
        "gpu_locked_clocks_mhz = [[200, 1400], [900, 900, 20000]]",
    )
    problems = check_plan(plan, deep=False).problems
    text = "\n".join(problems)
    assert "'turbo' is not available here" in text and "performance, powersave" in text
    assert "1000000 is outside this CPU's range 1200000..3000000 kHz" in text
    assert "90 is outside GPU" not in text  # the NVML module 'fake-nvml' cannot be imported
    with pytest.raises(PlanError, match=r"range 1200000\.\.3000000 kHz"):
        require_hardware(plan, nvml=_nvml())
    gpu_problems = "\n".join(p for p in check_hardware(plan, nvml=_nvml()) if "GPU" in p)
    assert "gpu_power_limit_w level 90 is outside GPU GPU-aaaa's range 100..350 W" in gpu_problems
    assert "SM clocks 200..1400 MHz are outside GPU GPU-aaaa's supported 210..1410" in gpu_problems
    assert "memory clock 20000 MHz is outside GPU GPU-aaaa's supported 810..9501" in gpu_problems


def test_no_hardware_factor_reads_nothing(tmp_path: Path) -> None:
    # cpufreq_root does not exist and the NVML module cannot be imported: nothing looks.
    plan = _plan(tmp_path / "absent", "batch_size = [1, 2]")
    assert check_plan(plan, deep=False).problems == []
    require_hardware(plan)


def test_missing_privileges_are_explained(tmp_path: Path) -> None:
    tree = FakeCpufreqTree(tmp_path / "cpu", cpus=2)
    plan = _plan(tree.root, 'cpu_governor = ["performance"]\ngpu_power_limit_w = [200]')
    unprivileged = _nvml()
    unprivileged.GREENMON_FAKE_PRIVILEGED = False  # type: ignore[misc]
    if os.geteuid() != 0:
        (tree.root / "cpu1" / "cpufreq" / "scaling_governor").chmod(0o444)
    text = "\n".join(check_hardware(plan, nvml=unprivileged))
    if os.geteuid() != 0:
        assert "cpu1/cpufreq/scaling_governor" in text and "run greenmon as root" in text
    if not has_cap_sys_admin():
        assert "need root or CAP_SYS_ADMIN" in text
