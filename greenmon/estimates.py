"""Estimated figures: which figures rest on an estimated source, and how a person is told.

Terms:
- *estimated domain*: a domain (``cpu``, ``dram``, ``gpu``, ``wall``) whose energy source,
  as the store's ``energy_sources`` view chose it (measured before estimated), is an
  estimated channel.  Today that is the estimate probe's ``cpu.power_w``: CPU power
  modelled from utilisation (greenmon/probes/estimate.py), used only where nothing
  measures the CPU.  ``unit_results`` lists them per unit in ``estimated_domains``.
- *figure*: one number a person reads, named by its results column (``energy_global_j``,
  ``median_j_per_token``); ``FIGURE_DOMAINS`` says which domains' energy it contains.
  A figure is estimated when any of its domains is.

Every surface (the ``greenmon run`` summary, ``status``, the TUI, the findings, the report,
``analyze --json``) labels through these functions, so the word and its meaning are
written once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

WORD = "estimated"

# "global" energy is CPU + GPU, as in unit_results (greenmon/views.py).
_GLOBAL = ("cpu", "gpu")
FIGURE_DOMAINS: dict[str, tuple[str, ...]] = {
    **{f"{kind}_{domain}_j": (domain,) for kind in ("energy", "dynamic")
       for domain in ("cpu", "dram", "gpu", "wall")},
    **{f"baseline_{domain}_w": (domain,) for domain in ("cpu", "dram", "gpu", "wall")},
    **dict.fromkeys(
        ("energy_global_j", "dynamic_global_j", "j_per_request", "j_per_inference", "j_per_token",
         "j_per_correct", "steady_energy_j", "steady_j_per_token", "load_energy_j",
         "tail_energy_j", "median_energy_j", "median_j_per_token", "median_j_per_correct"),
        _GLOBAL,
    ),
    # the reconciliation against the wall: CPU + DRAM + GPU
    **dict.fromkeys(("components_j", "unaccounted_j"), ("cpu", "dram", "gpu")),
}  # fmt: skip

DOMAIN_NAMES = {"cpu": "CPU", "dram": "DRAM", "gpu": "GPU", "wall": "wall"}

# What an estimate from utilisation can and cannot tell.
MEANING = (
    "an estimate from utilisation ranks configurations by CPU time, not by energy, so a "
    "difference between configurations here is one of CPU time"
)


def domains_of(estimated_domains: Any) -> set[str]:
    """A unit's (or row's) ``estimated_domains`` as a set; NULL, NaN and [] give none."""
    if isinstance(estimated_domains, str):
        return {estimated_domains}
    if not isinstance(estimated_domains, Iterable):  # None, NaN, pandas' NA
        return set()
    return {str(d) for d in estimated_domains if isinstance(d, str)}


def estimated_parts(column: str, estimated_domains: Iterable[str]) -> list[str]:
    """The estimated domains a figure contains, in a fixed order ([] when measured)."""
    wanted = set(estimated_domains)
    return [d for d in FIGURE_DOMAINS.get(column, ()) if d in wanted]


def is_estimated(column: str, estimated_domains: Iterable[str]) -> bool:
    return bool(estimated_parts(column, estimated_domains))


def mark(text: str, column: str, estimated_domains: Iterable[str]) -> str:
    """``text`` (a formatted figure) with ``(estimated)`` after it when it is one."""
    return f"{text} ({WORD})" if text and is_estimated(column, estimated_domains) else text


def domain_list(domains: Iterable[str]) -> str:
    names = [DOMAIN_NAMES.get(d, d) for d in sorted(domains)]
    return " and ".join(names)


def legend(domains: Iterable[str]) -> str:
    """One line saying what the ``(estimated)`` marks mean, or "" when nothing is."""
    found = sorted(set(domains))
    if not found:
        return ""
    return (
        f"{WORD}: {domain_list(found)} energy is modelled from CPU utilisation by the "
        f"estimate probe, not measured (no measured source for it here); {MEANING}."
    )


def finding_note(column: str, estimated_domains: Iterable[str], units: str = "") -> str:
    """The sentence a finding about ``column`` gets when it rests on an estimate ("" when
    not); ``units``: which units it concerns when not all ("in 3 of 12 units")."""
    parts = estimated_parts(column, estimated_domains)
    if not parts:
        return ""
    where = f" {units}" if units else ""
    return (
        f"This is {WORD}, not measured: no measured source existed for {domain_list(parts)} "
        f"energy{where}, so it is modelled from CPU utilisation; {MEANING}."
    )


def source_lines(channels: Iterable[tuple[str | None, str, str, bool]]) -> list[str]:
    """One line per domain saying which channel answers for it and whether it is
    measured or estimated, from the ``(domain, probe, name, estimated)`` of the channels
    that are their domain's energy source."""
    lines = []
    for domain_or_none, probe, name, estimated in sorted(
        channels, key=lambda c: (str(c[0]), str(c[2]))
    ):
        domain = str(domain_or_none)
        source = f"{probe} {name}"
        what = f"{WORD}: modelled from CPU utilisation, not measured" if estimated else "measured"
        lines.append(f"{DOMAIN_NAMES.get(domain, domain)} energy: {source} ({what})")
    return lines
