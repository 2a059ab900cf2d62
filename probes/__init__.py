"""Probes: one module per measured source behind the Probe contract (probes/base.py).

``REGISTRY`` maps a probe name (the TOML table ``[probes.<name>]``) to the module that
implements it.  Modules are imported only when their probe is configured, so a missing
vendor library costs nothing until that probe is asked for.
"""

from __future__ import annotations

REGISTRY: dict[str, str] = {
    "host": "greenmon.probes.host",
    "rapl": "greenmon.probes.rapl",
    "nvml": "greenmon.probes.nvml",
    "amdsmi": "greenmon.probes.amdsmi",
    "netio": "greenmon.probes.netio",
    "energibridge": "greenmon.probes.energibridge",
    "estimate": "greenmon.probes.estimate",
}
