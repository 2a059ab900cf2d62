"""Probe options as typed structs: every ``[probes.<name>]`` table is decoded into one.

Unknown keys and wrong types are errors (``forbid_unknown_fields``), reported by
greenmon.config with the key and the file.  Each probe module defines
``class Options(ProbeOptions)`` with its own fields and ``def create(options) -> Probe``.
"""

from __future__ import annotations

import msgspec


class ProbeOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Probes that cannot work without settings (a wattmeter's address) default to off.
    enabled: bool = True
    # None: the probe's own default rate.
    rate_hz: float | None = None
