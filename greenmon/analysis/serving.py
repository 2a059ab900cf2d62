"""Serving under load: per configuration and load level, and what HTTP costs.

Terms:
- *load level*: a unit's ``concurrency`` or ``request_rate_hz`` factor (with any other
  factor levels it has), shown as ``factor_label`` does.
- *served* configuration: ``http/<server>``; *in-process*: every other engine.
- *cost of serving*: at one model and level, a served configuration's median against an
  in-process one's, as a percentage change (energy per token and latency: positive is
  worse; throughput: negative is worse).

Medians per unit of the ``unit_results`` columns (greenmon/views.py): energy per token
over the whole measure and over its steady-state window, throughput, latency percentiles,
time to first token, time per output token, and the steady window's length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from greenmon.analysis.data import factor_label

if TYPE_CHECKING:
    import pandas as pd

SERVING_COLUMNS = [
    "model", "level", "configuration", "n", "j_per_token", "steady_j_per_token",
    "throughput_tok_s", "latency_p50_s", "latency_p90_s", "latency_p99_s", "ttft_p50_s",
    "tpot_p50_s", "steady_s",
]  # fmt: skip
COST_COLUMNS = [
    "model", "level", "served", "in_process", "j_per_token_change_pct",
    "throughput_change_pct", "latency_p50_change_pct",
]  # fmt: skip
_MEDIANS = SERVING_COLUMNS[4:]


def is_served(configuration: str) -> bool:
    return configuration.startswith("http/")


def applies(frame: pd.DataFrame) -> bool:
    """The report shows this section when a plan serves over HTTP or varies the load."""
    if any(is_served(str(c)) for c in frame["configuration"]):
        return True
    return any(
        "concurrency" in str(k) or "request_rate_hz" in str(k) for k in frame["factor_key"]
    )


def serving_table(done: pd.DataFrame) -> pd.DataFrame:
    """Medians per (model, level, configuration) of the serving columns."""
    import pandas as pd

    rows = []
    for (model, key, configuration), group in done.groupby(
        ["model", "factor_key", "configuration"], sort=True
    ):
        row = {"model": model, "level": factor_label(str(key)) or "-",
               "configuration": configuration, "n": len(group)}  # fmt: skip
        for column in _MEDIANS:
            values = pd.to_numeric(group.get(column), errors="coerce").dropna()
            row[column] = float(values.median()) if len(values) else None
        rows.append(row)
    return pd.DataFrame(rows, columns=SERVING_COLUMNS)


def serving_cost(table: pd.DataFrame) -> pd.DataFrame:
    """Every served configuration against every in-process one, at the same model and level."""
    import pandas as pd

    def change(served: float | None, local: float | None) -> float | None:
        if served is None or local is None or local != local or served != served or not local:
            return None
        return (served / local - 1.0) * 100.0

    rows = []
    for (model, level), group in table.groupby(["model", "level"], sort=True):
        served = group[[is_served(str(c)) for c in group["configuration"]]]
        local = group[[not is_served(str(c)) for c in group["configuration"]]]
        for _, s in served.iterrows():
            for _, r in local.iterrows():
                rows.append({
                    "model": model, "level": level, "served": s["configuration"],
                    "in_process": r["configuration"],
                    "j_per_token_change_pct": change(s["j_per_token"], r["j_per_token"]),
                    "throughput_change_pct": change(
                        s["throughput_tok_s"], r["throughput_tok_s"]),
                    "latency_p50_change_pct": change(s["latency_p50_s"], r["latency_p50_s"]),
                })  # fmt: skip
    return pd.DataFrame(rows, columns=COST_COLUMNS)
