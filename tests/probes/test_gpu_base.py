"""Both GPU probes read their queries the same way (probes/gpu_base.py), each with its
own library's errors: a reading the driver stops giving mid-run is a missing value, any
other library error a transient failure naming its code, anything else raised as it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from greenmon.probes.amdsmi import AmdsmiProbe
from greenmon.probes.base import Channel, Probe
from greenmon.probes.nvml import NvmlProbe
from tests.fakes.amdsmi import FakeAmdGpu, FakeAmdsmi
from tests.fakes.nvml import FakeGpu, FakeNvml


@dataclass
class Setup:
    probe: Probe
    module: Any
    gpu: Any
    # a function of the library, and the channel it alone reads
    function: str
    channel: str
    # the transient error's words when the module is not initialised any more
    transient: str
    channels: list[Channel] = field(default_factory=list)


def _nvml() -> Setup:
    gpu = FakeGpu("GPU-a")
    module = FakeNvml([gpu])
    return Setup(NvmlProbe(nvml=module), module, gpu, "nvmlDeviceGetTemperature",
                 "gpu0.temperature_c", "NVML error 1")  # fmt: skip


def _amdsmi() -> Setup:
    gpu = FakeAmdGpu("u0")
    module = FakeAmdsmi([gpu])
    probe = AmdsmiProbe(amdsmi=module, sleep=module.sleep, clock=lambda: module.now_s)
    return Setup(probe, module, gpu, "amdsmi_get_power_cap_info", "gpu0.power_cap_mw",
                 "amdsmi error 32")  # fmt: skip


@pytest.fixture(params=[_nvml, _amdsmi], ids=["nvml", "amdsmi"])
def setup(request: pytest.FixtureRequest) -> Any:
    made: Setup = request.param()
    made.channels = list(made.probe.open())
    yield made
    made.probe.close()


def _read(setup: Setup) -> dict[str, float | None]:
    return {c.name: v for c, v in zip(setup.channels, setup.probe.read(), strict=True)}


def test_a_reading_the_driver_stops_giving_is_missing(setup: Setup) -> None:
    before = _read(setup)
    assert before[setup.channel] is not None
    setup.gpu.not_supported.add(setup.function)
    after = _read(setup)
    assert after[setup.channel] is None
    assert {k for k, v in after.items() if v is None} == {setup.channel}


def test_another_library_error_is_transient_and_names_its_code(setup: Setup) -> None:
    setup.module.initialised = False
    with pytest.raises(RuntimeError, match=setup.transient):
        setup.probe.read()
    setup.module.initialised = True
    assert _read(setup)[setup.channel] is not None  # the next read goes on


def test_an_error_not_of_the_library_is_raised_as_it_is(setup: Setup) -> None:
    failure = ValueError("a bug, not the driver")

    def broken(*_: Any) -> Any:
        raise failure

    setattr(setup.module, setup.function, broken)
    with pytest.raises(ValueError) as raised:
        setup.probe.read()
    assert raised.value is failure
