"""What every hardware setting shares: the knob protocol, its error, and how it is written.

Terms:
- *knob*: one thing that can be set, named by its *target* (a JSON string stored in the
  restore journal, enough to find the knob again in another process): a cpufreq file
  (greenmon/hardware/cpufreq.py), or one NVML setting of one GPU (by UUID) through one NVML
  module (greenmon/hardware/nvml.py).
- *setting*: a value written to a knob; the value read back after the write is the one
  *in force* (hardware clamps or rounds: cpufreq to a listed frequency, NVML to a supported
  clock).
- *writer*: who writes a knob: this process when it is root, else the greenmon helper
  (greenmon/privhelper/).  Reading needs no privilege and is always direct.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from greenmon.errors import GreenmonError

if TYPE_CHECKING:
    from greenmon.hardware.spec import Hardware
    from greenmon.privhelper.client import HelperClient


class SettingError(GreenmonError):
    title = "Hardware setting failed"


class Knob(Protocol):
    @property
    def target(self) -> str: ...

    def read(self) -> str: ...

    def write(self, value: str) -> None: ...


@dataclass
class HelperKnob:
    """A knob the greenmon helper writes (greenmon/privhelper/), for a process that is
    not root; reading needs no privilege and stays direct."""

    knob: Knob
    helper: HelperClient

    @property
    def target(self) -> str:
        return self.knob.target

    def read(self) -> str:
        return self.knob.read()

    def write(self, value: str) -> None:
        from greenmon.privhelper.client import HelperRefused

        try:
            self.helper.setting_write(self.target, value)
        except HelperRefused as error:
            raise SettingError(str(error), title=error.title) from None


def settings_helper(hardware: Hardware | None = None) -> HelperClient | None:
    """Who writes hardware settings: None when this process is root (directly), else a
    client of the greenmon helper (connected on first use)."""
    if os.geteuid() == 0:
        return None
    from greenmon.privhelper.client import HelperClient

    return HelperClient(hardware.helper_socket if hardware is not None else None)


def writer(knob: Knob, helper: HelperClient | None) -> Knob:
    """``knob`` as this process writes it: directly (no helper), or through the helper."""
    return knob if helper is None else HelperKnob(knob, helper)


def describe_target(target: str) -> str:
    """A knob's target in words, for messages and the helper's log."""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        data = json.loads(target)
        if data["kind"] == "cpufreq":
            return str(data["path"])
        vendor = "AMD GPU" if data["kind"] == "amdsmi" else "GPU"
        return f"{vendor} {data['gpu']} {data['setting']} (via {data['module']})"
    return target
