"""Per-request energy in the analysis: each unit's requests summarised (attributed).

Terms: a request's ``energy_j`` (greenmon/attribution.py) is the unit's measured energy
in each interval split over the requests in flight by the tokens each processed.  Per
unit: J per request (median and 90th percentile), J per token (the median of each
request's energy over its generated tokens), and the server's own figure where it
reports one.  Attributed, not measured: every table here says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import duckdb

from greenmon.attribution import PREFILL_WEIGHT

if TYPE_CHECKING:
    import pandas as pd

    from greenmon.store import Store

REQUEST_ENERGY_COLUMNS = [
    "model", "configuration", "unit_id", "requests", "j_per_request_p50",
    "j_per_request_p90", "j_per_token_p50", "server_j_per_request_p50",
]  # fmt: skip
REQUEST_ENERGY_NOTE = (
    "Attributed, not measured: each request's energy is the unit's measured energy in "
    f"each interval split over the requests in flight by the tokens each processed "
    f"(a prompt token weighs {PREFILL_WEIGHT:g} of a generated one); the requests' parts "
    "add up to the unit's energy over the time they ran. server_j_per_request_p50 is the "
    "server's own figure where its usage reports one."
)

_SQL = """
SELECT u.model, u.engine || '/' || u.provider AS configuration, q.unit_id,
       count(*) AS requests,
       quantile_cont(q.energy_j, 0.5) AS j_per_request_p50,
       quantile_cont(q.energy_j, 0.9) AS j_per_request_p90,
       median(q.energy_j / nullif(q.tokens_out, 0)) AS j_per_token_p50,
       median(q.server_energy_j) AS server_j_per_request_p50
FROM requests q JOIN units u USING (experiment_id, unit_id)
WHERE q.experiment_id = ? AND q.phase = 'measure' AND q.energy_j IS NOT NULL
  AND u.status = 'done' AND q.attempt = u.attempt
GROUP BY ALL ORDER BY q.unit_id
"""


def request_energy_table(store: Store, experiment_id: str) -> pd.DataFrame:
    """One row per unit with per-request energy (empty for a file from before it)."""
    import pandas as pd

    try:
        frame = store.query_frame(_SQL, [experiment_id])
    except duckdb.Error:
        # a database or export written before requests had energy_j
        return pd.DataFrame(columns=REQUEST_ENERGY_COLUMNS)
    return pd.DataFrame(frame, columns=REQUEST_ENERGY_COLUMNS)


def request_energy_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[Any]]]:
    """Medians over each configuration's units, rounded for reading."""
    columns = [*REQUEST_ENERGY_COLUMNS[:2], "units", *REQUEST_ENERGY_COLUMNS[4:]]
    grouped = frame.groupby(["model", "configuration"], sort=False)
    rows: list[list[Any]] = []
    for (model, configuration), group in grouped:
        row: list[Any] = [model, configuration, len(group)]
        for column in REQUEST_ENERGY_COLUMNS[4:]:
            value = group[column].median()
            row.append(None if value != value else float(f"{value:.4g}"))  # NaN: none
        rows.append(row)
    return columns, rows
