"""Estimated figures in an analysis: every row, sentence and table that rests on one says so.

The statistics (greenmon/analysis/stats.py) treat every figure alike; this module, run
once over their result (``label_result``, from ``analyze`` in tables.py), adds what a
reader must know about estimates (the rule of which figure contains which domain is
greenmon/estimates.py's):

- an ``estimated`` column on every table (True where the row's figure contains energy of
  a domain that an estimated source answered for in any analysed unit);
- the findings sentence of such a figure says it is modelled from utilisation and what
  that means for differences between configurations;
- one note naming the estimate's model and parameters;
- ``AnalysisResult.estimated``: per domain (the source, its model, how many units) and per
  variable (its estimated domains), for ``analyze --json`` and the report.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from greenmon.analysis.data import AnalysisError
from greenmon.estimates import (
    DOMAIN_NAMES,
    MEANING,
    WORD,
    domain_list,
    domains_of,
    estimated_parts,
    finding_note,
    is_estimated,
    legend,
)

if TYPE_CHECKING:
    import pandas as pd

    from greenmon.analysis.stats import AnalysisResult
    from greenmon.store import Store


class EstimatedNote(AnalysisError):
    title = "Estimated, not measured"


# The channel metadata that describes an estimate (greenmon/probes/estimate.py).
_PARAMETERS = ("tdp_w", "idle_w")


def estimate_sources(store: Store, experiment_id: str) -> list[dict[str, Any]]:
    """The estimated channels that answered for a domain in the experiment's sessions,
    with the model and parameters from their metadata."""
    _, rows = store.query(
        """SELECT DISTINCT es.domain, es.probe, es.name AS channel, c.metadata::VARCHAR
           FROM energy_sources es JOIN channels c USING (channel_id)
           WHERE es.estimated AND es.session_id IN (
               SELECT session_id FROM units WHERE experiment_id = ?)
           ORDER BY 1, 2, 3""",
        [experiment_id],
    )
    sources = []
    for domain, probe, channel, metadata in rows:
        meta = json.loads(metadata) if metadata else {}
        sources.append(
            {"domain": domain, "probe": probe, "channel": channel, "model": meta.get("model")}
            | {key: meta[key] for key in _PARAMETERS if key in meta}
        )
    return sources


def model_text(sources: list[dict[str, Any]]) -> str:
    """``estimate cpu.power_w: linear: ... (tdp_w = 7 W, idle_w = 1.48 W)`` per source."""
    parts = []
    for source in sources:
        parameters = ", ".join(
            f"{key} = {float(source[key]):.4g} W" for key in _PARAMETERS if key in source
        )
        text = f"{source['probe']} {source['channel']}"
        if source.get("model"):
            text += f": {source['model']}"
        parts.append(text + (f" ({parameters})" if parameters else ""))
    return "; ".join(parts)


def label_result(
    result: AnalysisResult, frame: pd.DataFrame, sources: list[dict[str, Any]]
) -> None:
    """Mark ``result`` (in place) wherever a figure rests on an estimated source."""
    done = frame[frame["status"] == "done"]
    if "estimated_domains" in done.columns:
        per_unit = [domains_of(d) for d in done["estimated_domains"]]
    else:
        per_unit = [set() for _ in range(len(done))]
    total = len(per_unit)
    counts = {d: sum(d in unit for unit in per_unit) for d in sorted(set().union(*per_unit))}
    domains = set(counts)
    _mark_tables(result, done, per_unit, domains)
    _mark_sentences(result, domains, counts, total)
    result.estimated = {
        "domains": {
            d: {"units": counts[d], "units_total": total,
                "sources": [s for s in sources if s["domain"] == d]}
            for d in sorted(domains)
        },
        "variables": {
            v: estimated_parts(v, domains) for v in result.variables
            if estimated_parts(v, domains)
        },
        "legend": legend(domains),
    }  # fmt: skip
    if domains:
        result.notes.append(_estimated_note(sources, domains, counts, total))


def _mark_tables(
    result: AnalysisResult, done: pd.DataFrame, per_unit: list[set[str]], domains: set[str]
) -> None:
    """Add the ``WORD`` column to every table of ``result``: per unit, variable or table."""
    for name, table in result.tables().items():
        if name == "reconciliation" and "unit_id" in table.columns:
            by_unit = dict(zip(done["unit_id"], per_unit, strict=True))
            table[WORD] = [
                is_estimated("components_j", by_unit.get(u, set())) for u in table["unit_id"]
            ]
        elif "variable" in table.columns:
            table[WORD] = [is_estimated(str(v), domains) for v in table["variable"]]
        elif "energy_variable" in table.columns:
            table[WORD] = [is_estimated(str(v), domains) for v in table["energy_variable"]]
        else:
            table[WORD] = is_estimated("median_energy_j", domains)


def _mark_sentences(
    result: AnalysisResult, domains: set[str], counts: dict[str, int], total: int
) -> None:
    """Append the estimated note to each finding, trade-off and quality sentence it concerns."""

    def units_text(column: str) -> str:
        """'in 3 of 12 units' when only some units' figure was estimated."""
        parts = estimated_parts(column, domains)
        n = max((counts[d] for d in parts), default=0)
        return f"in {n} of {total} units" if 0 < n < total else ""

    summary = result.summary
    for index, row in summary.iterrows():
        note = finding_note(str(row["variable"]), domains, units_text(str(row["variable"])))
        if note and isinstance(row["sentence"], str):
            summary.at[index, "sentence"] = f"{row['sentence']} {note}"
    short = f" (Energy here is {WORD} from CPU utilisation, not measured.)"
    for table in (result.tradeoff, result.quality):
        if "sentence" not in table.columns:
            continue
        for index, row in table.iterrows():
            if row[WORD] and isinstance(row["sentence"], str):
                table.at[index, "sentence"] = row["sentence"] + short


def _estimated_note(
    sources: list[dict[str, Any]], domains: set[str], counts: dict[str, int], total: int
) -> EstimatedNote:
    """The result's note saying which energy was modelled, in how many units, and by what."""
    in_units = ", ".join(
        f"{DOMAIN_NAMES.get(d, d)} in "
        + (f"all {total} units" if counts[d] == total else f"{counts[d]} of {total} units")
        for d in counts
    )
    return EstimatedNote(
        f"No measured source existed for {domain_list(domains)} energy ({in_units}), "
        "so it was modelled from CPU utilisation by "
        f"{model_text(sources) or 'the estimate probe'}. Every figure containing "
        f"it is marked {WORD}; {MEANING}. To measure it, run where RAPL "
        "(/sys/class/powercap, or the greenmon helper) or EnergiBridge is available."
    )
