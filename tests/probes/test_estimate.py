"""Estimate probe: a labelled CPU power model from utilisation."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmon.probes.base import ProbeUnavailable
from greenmon.probes.estimate import EstimateProbe, Options, linear_power_w
from greenmon.probes.procstat import tick_ns


class ScriptedCpuTimes:
    """cpu_times() returning scripted (busy, total) seconds."""

    def __init__(self, readings: list[tuple[float, float]]) -> None:
        self.readings = list(readings)

    def __call__(self) -> tuple[float, float]:
        return self.readings.pop(0)


def test_channel_is_labelled_estimated_and_a_cpu_fallback() -> None:
    probe = EstimateProbe(Options(tdp_w=100.0, idle_fraction=0.3))
    power, utilisation = probe.open()
    assert (power.name, power.unit, power.kind, power.domain) == (
        "cpu.power_w",
        "W",
        "gauge",
        "cpu",
    )
    assert power.estimated
    assert power.metadata["fallback_for"] == "cpu"
    assert power.metadata["tdp_w"] == 100.0 and power.metadata["idle_w"] == pytest.approx(30.0)
    # read at a window's edges, it resolves time to the tick of the counters it comes from
    assert power.metadata["interval_mean"] is True
    assert power.metadata["counter_update_ns"] == tick_ns() == 10_000_000
    assert utilisation.domain is None
    values = probe.read()
    assert len(values) == 2
    probe.close()


def test_linear_model_over_scripted_utilisation() -> None:
    times = ScriptedCpuTimes([(0.0, 0.0), (0.0, 2.0), (1.0, 4.0), (3.0, 6.0), (3.0, 6.0)])
    probe = EstimateProbe(Options(tdp_w=100.0, idle_fraction=0.3), cpu_times=times)
    probe.open()
    assert list(probe.read()) == pytest.approx([30.0, 0.0])  # idle
    assert list(probe.read()) == pytest.approx([65.0, 50.0])  # half busy
    assert list(probe.read()) == pytest.approx([100.0, 100.0])  # saturated
    assert list(probe.read()) == [None, None]  # no kernel tick between reads: missing, not zero
    probe.close()


def test_default_tdp_follows_the_per_cpu_coefficients() -> None:
    probe = EstimateProbe(logical_cpus=8)
    [power, _] = probe.open()
    probe.close()
    assert power.metadata["tdp_w"] == pytest.approx(28.0)
    assert power.metadata["idle_w"] == pytest.approx(0.74 * 8)
    assert linear_power_w(2.0, 1.0, 3.0) == 3.0  # clamped


def test_nonsense_tdp_is_refused_with_the_key() -> None:
    with pytest.raises(ProbeUnavailable, match="tdp_w"):
        EstimateProbe(Options(tdp_w=-5.0)).open()


def test_steal_is_not_counted_as_busy(tmp_path: Path) -> None:
    """On a VM, time the hypervisor gave another guest is not this machine's work: over an
    interval of 300 ticks (100 user, 100 idle, 100 stolen) the estimate's input is 100 busy
    ticks, not 200."""
    from greenmon.probes.estimate import ProcStatTimes

    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  1000 0 0 5000 0 0 0 200 0 0\ncpu0 1000 0 0 5000 0 0 0 200 0 0\n")
    times = ProcStatTimes(str(tmp_path))  # the proc root
    busy0_s, total0_s = times()
    stat.write_text("cpu  1100 0 0 5100 0 0 0 300 0 0\ncpu0 1100 0 0 5100 0 0 0 300 0 0\n")
    busy1_s, total1_s = times()
    times.close()
    assert (busy1_s - busy0_s) / (total1_s - total0_s) == pytest.approx(100 / 300)
