"""Hardware settings applied per unit (DVFS): checked, applied, read back, journaled, restored.

Modules, each importing only those above it:
- ``spec``: the hardware part of a plan (its hardware factors and ``[hardware]`` table);
  greenmon/plan/ imports it, and nothing here imports greenmon.plan.
- ``knob``: the knob protocol, ``SettingError``, and writing through the greenmon helper
  when this process is not root (greenmon/privhelper/).
- ``cpufreq``: CPU governor and maximum frequency through sysfs.
- ``nvml``: GPU power limits and clocks through an NVML module.
- ``checks``: whether a plan's hardware factors can be applied here (ranges, privileges).
- ``journal``: a unit's settings applied through the restore journal, and restored after
  (or after a crash, by the next daemon start or ``greenmon restore``).

The package imports nothing at import time: the root helper imports only the modules it
needs (cpufreq, nvml, knob).
"""
