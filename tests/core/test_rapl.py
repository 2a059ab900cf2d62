"""RAPL probe on a real powercap tree under tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from greenmon.energy import Window, window_energy
from greenmon.probes.base import ProbeUnavailable
from greenmon.probes.rapl import Options, RaplProbe
from greenmon.store import SampleBatch, Store
from tests.fakes.rapl import FakeRaplTree, standard_tree


def test_discovers_zones_without_counting_the_package_twice(tmp_path: Path) -> None:
    standard_tree(tmp_path)
    probe = RaplProbe(Options(sysfs_root=str(tmp_path)))
    channels = probe.open()
    probe.close()
    names = [c.name for c in channels]
    assert names == ["package-0.energy_uj", "package-0/core.energy_uj", "package-0/dram.energy_uj"]
    assert [c.domain for c in channels] == ["cpu", "cpu_core", "dram"]
    assert all(c.kind == "counter" and c.unit == "uJ" for c in channels)
    assert channels[0].metadata["max_energy_range_uj"] == 262_143_328_850


def test_mmio_only_package_is_read(tmp_path: Path) -> None:
    tree = FakeRaplTree(tmp_path)
    tree.add_zone("intel-rapl-mmio:0", "package-0")
    probe = RaplProbe(Options(sysfs_root=str(tmp_path)))
    assert [c.name for c in probe.open()] == ["package-0.energy_uj"]
    probe.close()


def test_no_powercap_tree_is_unavailable_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ProbeUnavailable, match="no RAPL zones"):
        RaplProbe(Options(sysfs_root=str(tmp_path / "missing"))).open()


def test_energy_over_two_wraps_equals_ground_truth(tmp_path: Path) -> None:
    max_range_uj = 1_000_000
    tree = FakeRaplTree(tmp_path / "sys")
    zone = tree.add_zone(
        "intel-rapl:0", "package-0", max_energy_range_uj=max_range_uj, start_uj=900_000
    )
    probe = RaplProbe(Options(sysfs_root=str(tmp_path / "sys")))
    channels = probe.open()
    with Store.open(tmp_path / "db.duckdb") as store:
        session = store.start_session({"host": "test"}, 0, 0)
        [channel_id] = store.register_channels(session, "rapl", channels, 20_000_000)
        batch = SampleBatch()
        steps_uj = [37_123, 250_000, 333_333, 90_001, 400_000, 5, 612_345, 10_000] * 3
        batch.append_row(0, [channel_id], probe.read())
        for index, step_uj in enumerate(steps_uj, start=1):
            zone.advance(step_uj)
            batch.append_row(index * 20_000_000, [channel_id], probe.read())
        store.write(batch, [], session)
        end_ns = len(steps_uj) * 20_000_000
        result = window_energy(store.con, [Window(1, channel_id, 0, end_ns)])[(1, channel_id)]
    probe.close()
    assert zone.total_uj == sum(steps_uj)
    assert zone.total_uj > 2 * (max_range_uj + 1)  # the counter wrapped at least twice
    assert result.wraps >= 2
    assert result.energy_native == zone.total_uj
    assert result.energy_j == pytest.approx(zone.total_uj * 1e-6, rel=1e-12)
    assert result.coverage == 1.0


UNREADABLE_SCRIPT = """
import os, sys
from greenmon.probes.rapl import Options, RaplProbe
from greenmon.probes.base import ProbeUnavailable
os.setgid(65534); os.setuid(65534)
try:
    RaplProbe(Options(sysfs_root=sys.argv[1])).open()
except ProbeUnavailable as error:
    print(error)
    raise SystemExit(3)
"""


def test_unreadable_energy_uj_gives_the_actionable_message(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    tree = FakeRaplTree(root)
    zone = tree.add_zone("intel-rapl:0", "package-0")
    os.chmod(zone.path / "energy_uj", 0o400)  # root-only, as patched kernels make it
    if os.geteuid() == 0:
        # root reads anything: drop to 'nobody' in a child to meet the permission check
        for path in [tmp_path, *tmp_path.parents]:
            if path == Path("/"):
                break
            os.chmod(path, os.stat(path).st_mode | 0o005)
        for path in root.rglob("*"):
            if path.name != "energy_uj":
                os.chmod(path, os.stat(path).st_mode | 0o005)
        os.chmod(root, 0o755)
        repo = Path(__file__).resolve().parents[2]
        result = subprocess.run(
            [sys.executable, "-c", UNREADABLE_SCRIPT, str(root)],
            capture_output=True,
            text=True,
            cwd=repo,
            env={**os.environ, "PYTHONPATH": str(repo)},
        )
        assert result.returncode == 3, result.stderr
        message = result.stdout
    else:
        with pytest.raises(ProbeUnavailable) as caught:
            RaplProbe(Options(sysfs_root=str(root))).open()
        message = str(caught.value)
    assert "PLATYPUS" in message
    assert "udev" in message
    assert "energy_uj" in message
