"""Estimate probe: a labelled CPU power model from utilisation."""

from __future__ import annotations

import pytest

from greenmon.probes.base import ProbeUnavailable
from greenmon.probes.estimate import EstimateProbe, Options, linear_power_w


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
