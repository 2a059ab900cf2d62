"""One experiment's report: a self-contained HTML file, its Markdown twin, LaTeX tables.

The report is one list of sections (``sections``), each a list of blocks (paragraphs,
bullets, tables, figures, folds), rendered to HTML (``render_html``) and to Markdown
(``render_markdown``); every table is also written as LaTeX under ``tables/`` and every
figure as PNG, SVG and PDF under ``plots/``.  The HTML embeds its figures as inline SVG
(no external files, no scripts), so it can be mailed or attached to a paper's artefact.

In reading order: the caveats once, the answer (least energy per model and factor levels,
with its figure before any table), the energy/latency trade-off with its Pareto-optimal
configurations, carbon and cost, the winner's savings over models (the study's Tables 4
and 5), medians, tests, hosts, quality, validity, environment, reconciliation, and the
remaining figures folded.  Variables with identical medians appear once; a variable zero
within rounding is named, not tabled.

Every table cell goes through ``cell``, so a test can check the HTML against
``greenmon analyze --json`` by formatting the JSON the same way.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from greenmon.analysis.data import (
    VARIABLES_BY_COLUMN,
    configuration_label,
    factor_label,
)
from greenmon.analysis.decision import change_text, comparable, energy_variable, saving_pct
from greenmon.analysis.estimated import EstimatedNote
from greenmon.analysis.footprint import Pricing
from greenmon.analysis.plots import (
    Plot,
    answer_plot,
    configuration_order,
    make_plots,
    render,
    tradeoff_plot,
)
from greenmon.analysis.request_energy import REQUEST_ENERGY_NOTE, request_energy_rows
from greenmon.analysis.sentences import answer_sentence, pareto_sentence
from greenmon.analysis.stats import AnalysisResult
from greenmon.analysis.summaries import largest
from greenmon.analysis.tables import analyze_loaded
from greenmon.estimates import FIGURE_DOMAINS, WORD
from greenmon.store import Store

# Columns of the result tables the report shows, as stored (so they match --json).
REPORT_COLUMNS: dict[str, list[str]] = {
    "tests": [
        "variable", "model", "factor_key", "groups", "n_total", "normal", "equal_var", "test",
        "statistic", "df1", "df2", "p_value", "effect_size_kind", "effect_size",
        "pairs_significant", "pairs_total",
    ],
    "savings_range": [
        "variable", "factor_key", "configuration", "versus", "models", "range_text",
        "median_saving_pct", "models_significant_lower",
    ],
    "posthoc": [
        "variable", "model", "factor_key", "a", "b", "test", "p_adjusted", "diff_pct",
        "effect_size_kind", "effect_size", "cliffs_delta",
    ],
    "reconciliation": [
        "unit_id", "model", "configuration", "repetition", "energy_wall_j", "components_j",
        "unaccounted_j", "unaccounted_share",
    ],
    "twoway": ["variable", "model", "factor", "source", "f", "p_value", "np2"],
    "tradeoff": [
        "model", "configuration", "factor", "level", "n", "median_energy_j",
        "median_duration_s", "energy_change_pct", "duration_change_pct",
    ],
    "host_tests": [
        "variable", "model", "factor_key", "hosts", "test", "statistic", "p_value", "ranking",
    ],
    "host_effects": [
        "variable", "model", "factor_key", "host", "reference", "ratio", "ratio_min",
        "ratio_max", "p_value",
    ],
    "quality": [
        "model", "factor_key", "comparison", "configuration", "level", "versus", "n",
        "quality_metric", "median_energy_j", "median_quality", "correct_share",
        "j_per_correct", "energy_change_pct", "quality_change", "verdict",
    ],
}  # fmt: skip
QUALITY_TITLE = "Quality beside energy: energy per correct answer, trade-offs"


def quality_intro(r: AnalysisResult) -> str:
    """How the quality table is to be read (one paragraph)."""
    from greenmon.analysis.stats import QUALITY_TOLERANCE

    return (
        "Per configuration (and per factor level, against the first level): median energy, "
        "median quality on the task's metric (pass@1, token F1 or ROUGE-L F1; 0-1), the "
        "share of correct answers and the median energy per correct answer (empty when no "
        "answer was correct). A configuration that uses less energy than its reference "
        f"while losing more than {QUALITY_TOLERANCE} quality is a trade-off, not a win. "
        "Verdicts compare medians; whether a difference is significant is in the tests."
    )


# a figure containing estimated energy carries this mark; the legend says what
# it means (``estimated_legend``), and the estimate's model appears once, in its note.
MARK = "\u2020"


@dataclass(frozen=True)
class Marked:
    """A table value that rests on an estimated source: written with ``MARK`` after it."""

    value: Any


def cell(value: Any) -> str:
    """How every table value is written, in HTML and Markdown alike."""
    if isinstance(value, Marked):
        return f"{cell(value.value)} {MARK}"
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return ""
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@dataclass
class ReportData:
    """What a report shows, gathered from the database (the results read once)."""

    result: AnalysisResult
    session: dict[str, Any]
    experiment: dict[str, Any]
    order: pd.DataFrame
    flags: pd.DataFrame
    estimated: pd.DataFrame
    plots: list[Plot]
    # serving under load (empty when the plan neither serves nor varies load)
    serving: pd.DataFrame | None = None
    serving_cost: pd.DataFrame | None = None
    # The answer's figure and the trade-off's, drawn before any table.
    answer_plot: Plot | None = None
    tradeoff_plot: Plot | None = None
    size_categories: int = 1


def _rows(store: Store, sql: str, params: Sequence[Any]) -> pd.DataFrame:
    columns, rows = store.query(sql, params)
    return pd.DataFrame(rows, columns=columns)


def gather(
    store: Store, experiment_id: str | None, out_dir: Path, pricing: Pricing | None = None
) -> ReportData:
    result, frame = analyze_loaded(store, experiment_id, pricing=pricing)
    experiment = result.experiment_id
    exp = _rows(store, "SELECT * FROM experiments WHERE experiment_id = ?", [experiment])
    exp_row = exp.iloc[0].to_dict() if len(exp) else {"experiment_id": experiment}
    session = _rows(
        store,
        # started_at as text: fetching a TIMESTAMPTZ would need pytz.
        """SELECT * REPLACE (CAST(started_at AS VARCHAR) AS started_at) FROM sessions
           WHERE session_id = coalesce(
               (SELECT session_id FROM experiments WHERE experiment_id = ?),
               (SELECT min(session_id) FROM units WHERE experiment_id = ?))""",
        [experiment, experiment],
    )
    order = _rows(
        store,
        """SELECT unit_id, model, engine || '/' || provider AS configuration, repetition,
                  factors, status, attempt, reason,
                  round((started_ns - min(started_ns) OVER ()) / 1e9, 1) AS started_s
           FROM units WHERE experiment_id = ? ORDER BY unit_id""",
        [experiment],
    )
    flags = _rows(
        store,
        """SELECT flag, count(*) AS units,
                  string_agg(DISTINCT configuration, ', ') AS configurations
           FROM (SELECT unnest(flags) AS flag, configuration FROM unit_results_for(?))
           GROUP BY flag ORDER BY flag""",
        [experiment],
    )
    estimated = _rows(
        store,
        # the estimated channels that answered for a domain (a fallback left unused
        # because a measured source existed is not one)
        """SELECT DISTINCT es.probe, es.name AS channel, es.domain, es.unit
           FROM energy_sources es JOIN units u ON u.session_id = es.session_id
           WHERE u.experiment_id = ? AND es.estimated ORDER BY 1, 2""",
        [experiment],
    )
    done = frame[frame["status"] == "done"]
    plots_dir = out_dir / "plots"
    shown = shown_variables(result)
    plots = make_plots(store, done, [v for v in result.variables if v in shown.kept],
                       plots_dir, experiment)  # fmt: skip
    answer_figure = tradeoff_figure = None
    variable = energy_variable(result.variables)
    if variable is not None and len(result.answers):
        answer_figure = render(answer_plot(result.answers, done, variable), plots_dir,
                               "answer", VARIABLES_BY_COLUMN[variable].label
                               + " per configuration, median and 95% interval")  # fmt: skip
    if len(result.front) and result.front["latency_p90_s"].notna().any():
        tradeoff_figure = render(tradeoff_plot(result.front), plots_dir, "tradeoff",
                                 "Energy against latency p90, Pareto-optimal marked")  # fmt: skip
    from greenmon.analysis import serving

    serving_table = serving.serving_table(done) if serving.applies(done) else None
    return ReportData(
        serving=serving_table,
        serving_cost=None if serving_table is None else serving.serving_cost(serving_table),
        result=result,
        session=session.iloc[0].to_dict() if len(session) else {},
        experiment=exp_row,
        order=order,
        flags=flags,
        estimated=estimated,
        plots=plots,
        answer_plot=answer_figure,
        tradeoff_plot=tradeoff_figure,
        size_categories=int(done["size_category"].nunique()),
    )


# -- tables as (columns, rows) -----------------------------------------------------------


def median_table(
    result: AnalysisResult, variable: str, scope: str, factors: str
) -> tuple[list[str], list[list[Any]]]:
    """Medians of one variable, rows per model (or size category), columns per
    configuration with CPU-provider configurations first."""
    med = result.medians
    part = med[(med["variable"] == variable) & (med["scope"] == scope)
               & (med["factor_key"] == factors)]  # fmt: skip
    key = "model" if scope == "model" else "size_category"
    configs = configuration_order(part["configuration"])
    table = part.pivot_table(index=key, columns="configuration", values="median", aggfunc="first")
    columns = [key, *[configuration_label(c) for c in configs]]
    estimated = variable in result.estimated.get("variables", {})
    rows = [
        [index, *[_marked(_value(table.loc[index].get(c)), estimated) for c in configs]]
        for index in table.index
    ]
    return columns, rows


def _marked(value: Any, estimated: bool) -> Any:
    return Marked(value) if estimated and value is not None else value


def _value(value: Any) -> Any:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def result_table(result: AnalysisResult, name: str) -> tuple[list[str], list[list[Any]]]:
    """A result table's rows as --json gives them; in a row whose figure is estimated, the
    variable and energy cells are ``Marked``."""
    columns = REPORT_COLUMNS[name]
    records = result.to_json()["tables"][name]
    return columns, [
        [Marked(r.get(c)) if r.get(WORD) and _marked_column(c) else r.get(c) for c in columns]
        for r in records
    ]


def _marked_column(column: str) -> bool:
    return column in ("variable", "energy_variable") or column in FIGURE_DOMAINS


def plot_caption(result: AnalysisResult, plot: Plot) -> str:
    """A figure's title, marked when what it plots contains estimated energy (a box plot
    of its variable; energy against time or quality: global energy; power traces: any)."""
    variables = result.estimated.get("variables", {})
    if plot.name.startswith("box_"):
        estimated = plot.name.removeprefix("box_") in variables
    elif plot.name in ("energy_time", "energy_quality"):
        estimated = "energy_global_j" in variables
    else:
        estimated = bool(result.estimated.get("domains"))
    return f"{plot.title} {MARK}" if estimated else plot.title


def estimated_legend(result: AnalysisResult) -> str:
    """What ``MARK`` means, or "" when no figure is estimated."""
    text = str(result.estimated.get("legend") or "")
    if not text:
        return ""
    return (
        f"{MARK} {text} The estimate's model and parameters are in the note "
        f"'{EstimatedNote.title}'."
    )


def host_median_table(result: AnalysisResult) -> tuple[list[str], list[list[Any]]]:
    """Per-host medians side by side, one column per host."""
    frame = result.host_medians
    if frame.empty:
        return [], []
    wide = frame.pivot_table(
        index=["variable", "model", "factor_key", "configuration"], columns="host",
        values="median", aggfunc="first",
    ).reset_index()  # fmt: skip
    hosts = [c for c in wide.columns if c not in ("variable", "model", "factor_key",
                                                  "configuration")]  # fmt: skip
    columns = ["variable", "model", "factor_key", "configuration", *map(str, hosts)]
    rows = [[None if isinstance(v, float) and v != v else v for v in row]
            for row in wide[["variable", "model", "factor_key", "configuration", *hosts]]
            .values.tolist()]  # fmt: skip
    return columns, rows


# -- which variables a reader needs -------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """The variables the report shows, and one line per variable it left out and why."""

    kept: list[str]
    collapsed: list[str]


# Below this share of the largest energy median, a variable is zero within rounding.
ZERO_SHARE = 1e-6


def shown_variables(r: AnalysisResult) -> Shown:
    """Variables with identical medians collapse into the first ("global = CPU: no GPU
    measured"); a variable that is zero within rounding everywhere is named, not tabled."""
    med = r.medians[r.medians["scope"] == "model"] if len(r.medians) else r.medians
    vectors: dict[str, np.ndarray] = {}
    for variable in r.variables:
        part = med[med["variable"] == variable].sort_values(
            ["model", "factor_key", "configuration"])  # fmt: skip
        vectors[variable] = part["median"].to_numpy(dtype=float)
    joules = [np.nanmax(np.abs(v)) for k, v in vectors.items()
              if VARIABLES_BY_COLUMN[k].unit == "J" and len(v)]  # fmt: skip
    scale = max(joules, default=0.0)
    kept: list[str] = []
    collapsed: list[str] = []
    for variable in r.variables:
        info = VARIABLES_BY_COLUMN[variable]
        vector = vectors[variable]
        if info.unit == "J" and len(vector) and scale > 0 \
                and np.nanmax(np.abs(vector)) < ZERO_SHARE * scale:  # fmt: skip
            collapsed.append(
                f"{info.label}: zero within rounding in every configuration (at most "
                f"{np.nanmax(np.abs(vector)):.2g} J): its baseline equals its measure, as when "
                "an estimate models idle and load power alike, so it is not tabled."
            )
            continue
        twin = next((k for k in kept if len(vectors[k]) == len(vector)
                     and np.allclose(vectors[k], vector, rtol=1e-9, atol=0.0)), None)  # fmt: skip
        if twin is not None:
            why = ("no GPU measured" if "energy_gpu_j" not in r.variables
                   and "gpu" not in variable else "the same medians")  # fmt: skip
            collapsed.append(f"{VARIABLES_BY_COLUMN[twin].label} = {info.label}: {why}; "
                             "shown once.")  # fmt: skip
            continue
        kept.append(variable)
    return Shown(kept, collapsed)


# -- blocks: one list of sections, rendered to HTML and to Markdown -------------------------

# Tables longer than this are folded (<details>) so the page stays a page.
FOLD_ROWS = 12
UNFOLDED = {"environment", "answers"}


@dataclass(frozen=True)
class Para:
    text: str
    kind: str = ""  # "", "note" or "sentence"


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Any]]
    name: str
    title: str = ""


@dataclass(frozen=True)
class Figure:
    plot: Plot
    caption: str


@dataclass(frozen=True)
class Pre:
    summary: str
    text: str


@dataclass(frozen=True)
class Fold:
    summary: str
    blocks: list[Any]


Block = Para | Bullets | Table | Figure | Pre | Fold


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    blocks: list[Block]


def frame_table(frame: pd.DataFrame, name: str, title: str = "") -> Table:
    return Table(list(map(str, frame.columns)), frame.values.tolist(), name, title)


def sections(data: ReportData) -> list[Section]:
    """The report, in reading order: caveats, the answer, the trade-off, carbon and cost,
    savings, then the detail a reviewer checks."""
    r = data.result
    shown = shown_variables(r)
    out = [
        _caveats(data, shown),
        _answer(data),
        _tradeoff(data),
        _footprint(r),
        _savings(r, shown),
        _medians(r, shown, data.size_categories),
        _serving(data),
        _request_energy(r),
        _tests(r, shown),
        _hosts(r),
        _quality(r),
        _validity(data),
        _environment(data),
        _reconciliation(r),
        _figures(data),
    ]
    return [s for s in out if s.blocks]


def _where(factors: str) -> str:
    return f" at {factor_label(factors)}" if factors else ""


def _caveats(data: ReportData, shown: Shown) -> Section:
    r = data.result
    blocks: list[Block] = [
        Para(f"{r.units_analysed} of {r.units_total} units analysed; significance at "
             f"alpha = {r.alpha:g}. What follows holds with these caveats, said once here:")
    ]  # fmt: skip
    items = [f"{n.title}: {n.message}" for n in r.notes] + shown.collapsed
    if estimated_legend(r):
        # the note above says what is estimated and how; the mark needs only its meaning
        items.append(f"{MARK} marks every figure that contains estimated energy.")
    if not items:
        items.append("Every energy figure was measured, every unit ran on a quiet machine, "
                     "and every configuration finished.")  # fmt: skip
    blocks.append(Bullets(items))
    return Section("caveats", "Read this first", blocks)


def _answer(data: ReportData) -> Section:
    r = data.result
    if not len(r.answers):
        return Section("answer", "The answer", [Para("No energy variable was measured, so "
                                                     "there is no least-energy answer.")])
    blocks: list[Block] = []
    if data.answer_plot is not None:
        blocks.append(Figure(data.answer_plot, plot_caption(r, data.answer_plot)))
    rows = r.answers.to_dict(orient="records")
    blocks.append(Bullets([answer_sentence(row, r.alpha, _where(str(row["factor_key"])))
                           for row in rows]))  # fmt: skip
    variable = str(rows[0]["variable"])
    marked = variable in r.estimated.get("variables", {})
    table_rows = [
        [row["model"], factor_label(str(row["factor_key"])) or "-",
         configuration_label(str(row["best"])), _marked(row["best_median"], marked),
         f"{cell(row['best_low'])} to {cell(row['best_high'])}",
         configuration_label(str(row["next"])) if isinstance(row["next"], str) else None,
         _amount(row, "next"),
         configuration_label(str(row["reference"])) if isinstance(row["reference"], str)
         else None, _amount(row, "reference")]
        for row in rows
    ]  # fmt: skip
    unit = str(rows[0]["unit"])
    blocks.append(Table(["model", "factor levels", "least energy", f"median ({unit})",
                         "95% interval", "next best", "less than next best", "reference",
                         "less than reference"], table_rows, "answers"))  # fmt: skip
    return Section("answer", f"The answer: least {VARIABLES_BY_COLUMN[variable].noun}", blocks)


def _amount(row: dict[str, Any], key: str) -> str | None:
    """"8.1%" or, where a percentage would mislead, "2.3 J"."""
    if not isinstance(row.get(key), str):
        return None
    pct = row.get(f"{key}_pct")
    if isinstance(pct, float) and pct == pct:
        return f"{pct:.1f}%"
    return f"{cell(row.get(f'{key}_diff'))} {row['unit']}"


def _tradeoff(data: ReportData) -> Section:
    r = data.result
    front = r.front
    if not len(front) or not front["latency_p90_s"].notna().any():
        return Section("tradeoff", "Trade-off", [])
    blocks: list[Block] = []
    if data.tradeoff_plot is not None:
        blocks.append(Figure(data.tradeoff_plot, plot_caption(r, data.tradeoff_plot)))
    sentences = []
    for (model, factors), part in front.groupby(["model", "factor_key"], sort=True):
        optimal = part[part["pareto"].astype(bool)]
        least, fastest = part["energy"].min(), part["latency_p90_s"].min()
        sentences.append(pareto_sentence(
            str(model), _where(str(factors)),
            [(str(o.configuration), o.energy == least, o.latency_p90_s == fastest)
             for o in optimal.itertuples(index=False)], len(part)))  # fmt: skip
    blocks.append(Bullets(sentences))
    energy = str(front["energy_variable"].iloc[0])
    blocks.append(Para(
        f"Energy is the median {VARIABLES_BY_COLUMN[energy].label.lower()} over units; "
        f"latency the median over units of the {front['latency_source'].iloc[0]}; quality "
        "(where scored) the median task metric. For the least energy under a latency bound "
        "ask `greenmon recommend --max-p90-s SECONDS [--min-quality Q]`."))  # fmt: skip
    columns = ["model", "factor_key", "configuration", "n", "energy", "latency_p90_s",
               "quality", "pareto"]  # fmt: skip
    rows = [[configuration_label(v) if c == "configuration" else
             (factor_label(str(v)) or "-") if c == "factor_key" else v
             for c, v in zip(columns, row, strict=True)]
            for row in front[columns].values.tolist()]  # fmt: skip
    blocks.append(Table(columns, rows, "front"))
    return Section("tradeoff", "Trade-off: energy against latency", blocks)


def _footprint(r: AnalysisResult) -> Section:
    if not len(r.footprint):
        return Section("footprint", "Carbon and cost", [])
    frame = r.footprint.drop(columns=[c for c in ("estimated", "energy_variable")
                                      if c in r.footprint.columns])  # fmt: skip
    frame = frame.dropna(axis=1, how="all")
    frame = frame.assign(configuration=[configuration_label(str(c))
                                        for c in frame["configuration"]])  # fmt: skip
    if not frame["factor_key"].astype(bool).any():
        frame = frame.drop(columns=["factor_key"])
    blocks: list[Block] = [Para(
        f"{r.pricing_source} Per unit: the median over units of the unit's "
        f"{VARIABLES_BY_COLUMN[str(r.footprint['energy_variable'].iloc[0])].label.lower()}"
        " times the intensity (or price); per token and per 1,000 requests: the same divided "
        "by the unit's output tokens or requests. CO2e per token is in milligrams."
        + (" The energy is estimated, so these are too." if r.estimated.get("variables")
           else ""))]  # fmt: skip
    blocks.append(frame_table(frame, "footprint"))
    return Section("footprint", "Carbon and cost", blocks)


def one_way_savings(r: AnalysisResult, shown: Shown) -> tuple[list[str], list[list[Any]]]:
    """The winner of each variable (and factor levels) against every other configuration,
    with the range of savings over models, as the study's Tables 4 and 5; where a
    percentage would mislead (a baseline near zero, medians changing sign) the range is
    given in the variable's units instead."""
    columns = REPORT_COLUMNS["savings_range"]
    if not len(r.savings_range) or not len(r.summary):
        return columns, []
    winners = {(row.variable, row.factor_key): row.best
               for row in r.summary.itertuples(index=False)}  # fmt: skip
    json_rows = r.to_json()["tables"]["savings_range"]
    savings = r.savings
    rows: list[list[Any]] = []
    for record in json_rows:
        variable, factors = record["variable"], record["factor_key"]
        info = VARIABLES_BY_COLUMN[variable]
        # savings are of costs: energy and time, not of utilisation or quality
        if variable not in shown.kept or info.higher_is_better or info.unit == "%":
            continue
        if record["configuration"] != winners.get((variable, factors)):
            continue
        pairs = savings[(savings["variable"] == variable)
                        & (savings["factor_key"] == factors)
                        & (savings["configuration"] == record["configuration"])
                        & (savings["versus"] == record["versus"])]  # fmt: skip
        scale = r.medians[(r.medians["variable"] == variable)
                          & (r.medians["scope"] == "model")]["median"].abs().max()  # fmt: skip
        ok = all(comparable(float(p.median), float(p.median_versus), float(scale))
                 for p in pairs.itertuples(index=False))  # fmt: skip
        record = dict(record)
        if not ok:
            diffs = (pairs["median_versus"] - pairs["median"]).astype(float)
            unit = VARIABLES_BY_COLUMN[variable].unit
            amount = (f"{diffs.min():.4g} {unit}" if np.isclose(diffs.min(), diffs.max())
                      else f"from {diffs.min():.4g} to {diffs.max():.4g} {unit}")  # fmt: skip
            record["range_text"] = (f"{amount} less (baseline near zero or changing sign: "
                                    "no percentage)")  # fmt: skip
            record["median_saving_pct"] = None
        rows.append([Marked(record.get(c)) if record.get(WORD) and _marked_column(c)
                     else record.get(c) for c in columns])  # fmt: skip
    return columns, rows


def _savings(r: AnalysisResult, shown: Shown) -> Section:
    columns, rows = one_way_savings(r, shown)
    if not rows:
        return Section("savings", "Savings", [])
    return Section("savings", "Savings of the winner over models", [
        Para("Per variable and factor levels: the configuration with the lowest median "
             "against each other one; the range is over models, and the last column counts "
             "the models where the saving was significant."),
        Table(columns, rows, "savings_range")])  # fmt: skip


def _medians(r: AnalysisResult, shown: Shown, size_categories: int) -> Section:
    blocks: list[Block] = []
    scopes = [("model", "model")] + ([("size_category", "size category")]
                                     if size_categories > 1 else [])  # fmt: skip
    configs = configuration_order(r.medians["configuration"]) if len(r.medians) else []
    for scope, label in scopes:
        rows: list[list[Any]] = []
        for variable in shown.kept:
            info = VARIABLES_BY_COLUMN[variable]
            for factors in sorted(r.medians["factor_key"].unique()):
                columns, part = median_table(r, variable, scope, factors)
                by_config = dict(zip(columns[1:], range(1, len(columns)), strict=True))
                for row in part:
                    rows.append([f"{info.label} ({info.unit})", row[0],
                                 factor_label(factors) or "-",
                                 *[row[by_config[configuration_label(c)]]
                                   if configuration_label(c) in by_config else None
                                   for c in configs]])  # fmt: skip
        if rows:
            blocks.append(Table(["variable", label, "factor levels",
                                 *[configuration_label(c) for c in configs]], rows,
                                f"medians:{scope}", f"Medians per {label}"))  # fmt: skip
    return Section("medians", "Medians", blocks)


def _shown_rows(r: AnalysisResult, name: str, shown: Shown) -> tuple[list[str], list[list[Any]]]:
    columns, rows = result_table(r, name)
    if "variable" not in columns:
        return columns, rows
    at = columns.index("variable")
    return columns, [row for row in rows if _unmarked(row[at]) in shown.kept]


def _unmarked(value: Any) -> Any:
    return value.value if isinstance(value, Marked) else value


def posthoc_rows(r: AnalysisResult, shown: Shown) -> tuple[list[str], list[list[Any]]]:
    """Post-hoc pairs with the difference one way: how much less the lower median is than
    the higher, as a percentage of the higher (so at most 100% for positive figures), or in
    the variable's units where a percentage would mislead (see decision.comparable)."""
    columns, rows = _shown_rows(r, "posthoc", shown)
    if not rows:
        return columns, rows
    at = columns.index("diff_pct")
    columns = [*columns[:at], "lower_by", *columns[at + 1 :]]
    records = {(x["variable"], x["model"], x["factor_key"], x["a"], x["b"]): x
               for x in r.to_json()["tables"]["posthoc"]}  # fmt: skip
    key_at = [REPORT_COLUMNS["posthoc"].index(c) for c in ("variable", "model", "factor_key",
                                                           "a", "b")]  # fmt: skip
    out = []
    for row in rows:
        record = records.get(tuple(_unmarked(row[i]) for i in key_at))
        row = list(row)
        row[at] = None
        if record is not None and record.get("median_a") is not None \
                and record.get("median_b") is not None:  # fmt: skip
            a, b = float(record["median_a"]), float(record["median_b"])
            low, high = min(a, b), max(a, b)
            scale = r.medians[(r.medians["variable"] == record["variable"])
                              & (r.medians["scope"] == "model")]["median"].abs().max()  # fmt: skip
            unit = VARIABLES_BY_COLUMN[str(record["variable"])].unit
            row[at] = (f"{saving_pct(low, high):.1f}%" if comparable(low, high, float(scale))
                       else f"{high - low:.4g} {unit}")  # fmt: skip
        out.append(row)
    return columns, out


# Change columns shown against their baseline: (column, value, baseline, unit).
TRADEOFF_CHANGES = (
    ("energy_change_pct", "median_energy_j", "reference_energy_j", "J"),
    ("duration_change_pct", "median_duration_s", "reference_duration_s", "s"),
)
QUALITY_CHANGES = (("energy_change_pct", "median_energy_j", "versus_energy_j", "J"),)
SERVING_CHANGES = (
    ("j_per_token_change_pct", "j_per_token", "J/token"),
    ("throughput_change_pct", "throughput_tok_s", "tok/s"),
    ("latency_p50_change_pct", "latency_p50_s", "s"),
)


def change_rows(
    r: AnalysisResult, name: str, columns: list[str], rows: list[list[Any]],
    changes: Sequence[tuple[str, str, str, str]],
) -> tuple[list[str], list[list[Any]]]:  # fmt: skip
    """A table's percentage-change columns as decision.change_text writes them: a
    percentage, or the difference in units where a percentage would mislead (a baseline
    near zero against the table's largest median, a sign change, 1000% or more)."""
    records = r.to_json()["tables"][name]
    if not rows or len(records) != len(rows):
        return columns, rows
    out_columns = list(columns)
    out_rows = [list(row) for row in rows]
    for column, value, baseline, unit in changes:
        if column not in columns:
            continue
        at = columns.index(column)
        out_columns[at] = column.removesuffix("_pct")
        scale = largest(x.get(value) for x in records)
        for row, record in zip(out_rows, records, strict=True):
            row[at] = "" if record.get(column) is None else change_text(
                record.get(value), record.get(baseline), scale, unit)  # fmt: skip
    return out_columns, out_rows


def serving_cost_table(serving: pd.DataFrame, cost: pd.DataFrame) -> Table:
    """The cost of serving over HTTP with its changes guarded as ``change_rows`` does,
    each served median against the in-process one at the same model and level."""
    medians = {(str(x["model"]), str(x["level"]), str(x["configuration"])): x
               for x in serving.to_dict(orient="records")}  # fmt: skip
    columns = list(map(str, cost.columns))
    rows = []
    for record in cost.to_dict(orient="records"):
        row = [record[c] for c in columns]
        key = (str(record["model"]), str(record["level"]))
        served = medians.get((*key, str(record["served"])), {})
        local = medians.get((*key, str(record["in_process"])), {})
        for column, value, unit in SERVING_CHANGES:
            if column in columns:
                row[columns.index(column)] = change_text(
                    _figure_or_none(served.get(value)), _figure_or_none(local.get(value)),
                    largest(serving[value]), unit)  # fmt: skip
        rows.append(row)
    columns = [c.removesuffix("_pct") if c in {x[0] for x in SERVING_CHANGES} else c
               for c in columns]  # fmt: skip
    return Table(columns, rows, "serving_cost", "The cost of serving over HTTP")


def _figure_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value == value else None


def _tests(r: AnalysisResult, shown: Shown) -> Section:
    blocks: list[Block] = [Para(
        "Per model and configuration group: Shapiro-Wilk per configuration, Levene across "
        "them; all normal: Welch ANOVA + Games-Howell (two groups: Welch's t) with omega "
        "squared and Hedges' g; otherwise Kruskal-Wallis + Dunn (Holm) (two groups: "
        f"Mann-Whitney U) with epsilon squared and Cliff's delta. alpha = {r.alpha:g}.")]
    findings = [
        str(row["sentence"]) + (f" {row['models_sentence']}"
                                if isinstance(row.get("models_sentence"), str) else "")
        for row in r.summary.to_dict(orient="records") if row["variable"] in shown.kept
    ]  # fmt: skip
    if findings:
        blocks.append(Fold("Findings per variable", [Bullets(findings)]))
    columns, rows = posthoc_rows(r, shown)
    if rows:
        blocks.append(Table(columns, rows, "posthoc", "Post-hoc pairs"))
    for name, title in (("tests", "Omnibus tests"),
                        ("twoway", "Two-way ANOVA: configuration x factor"),
                        ("tradeoff", "Energy against time per factor level")):  # fmt: skip
        columns, rows = _shown_rows(r, name, shown)
        if name == "tradeoff":
            columns, rows = change_rows(r, name, columns, rows, TRADEOFF_CHANGES)
        if rows:
            blocks.append(Table(columns, rows, name, title))
    if len(r.tradeoff):
        sentences = [t for t in r.tradeoff["sentence"] if isinstance(t, str)]
        blocks.append(Fold("Energy against time, in words", [Bullets(sentences)]))
    return Section("tests", "Tests and effect sizes", blocks)


def _hosts(r: AnalysisResult) -> Section:
    from greenmon.analysis.hosts import METHOD_CITATION

    if r.host_tests.empty:
        return Section("hosts", "Hosts", [])
    blocks: list[Block] = [
        Para(f"The units ran on {r.host_tests['hosts'].max()} hosts; configurations are "
             f"compared within each host: {METHOD_CITATION}."),
        Bullets([t for t in r.host_effects["sentence"] if isinstance(t, str)][:12]),
    ]  # fmt: skip
    for name, title in (("host_tests", "Within-host tests"), ("host_effects", "Host effect")):
        columns, rows = result_table(r, name)
        blocks.append(Table(columns, rows, name, title))
    columns, rows = host_median_table(r)
    blocks.append(Fold("Per-host medians", [Table(columns, rows, "host_medians")]))
    return Section("hosts", "Hosts", blocks)


def _hosts_markdown(r: AnalysisResult) -> list[str]:
    """The hosts section alone, as Markdown lines."""
    section = _hosts(r)
    return _markdown_section(section) if section.blocks else []


def _quality(r: AnalysisResult) -> Section:
    if not len(r.quality):
        return Section("quality", QUALITY_TITLE, [])
    columns, rows = change_rows(r, "quality", *result_table(r, "quality"), QUALITY_CHANGES)
    return Section("quality", QUALITY_TITLE, [
        Para(quality_intro(r)), Table(columns, rows, "quality"),
        Bullets([t for t in r.quality["sentence"] if isinstance(t, str)])])  # fmt: skip


_SERVING_NOTE = (
    "Per configuration and load level, medians over units. Energy per token over the whole "
    "measure and over its steady state: from the moment every concurrent slot is busy "
    "until the first slot drains (flag short_steady_state when shorter than the sensors "
    "allow). Latency is end to end per request; TTFT the time to the first streamed token; "
    "TPOT the time per output token after it."
)
_COST_NOTE = (
    "Served (http/...) against in-process at the same model and level: change of the "
    "medians, as a percentage or, where a percentage would mislead, in units (positive "
    "energy or latency change, or negative throughput change, is what serving over HTTP "
    "costs)."
)


def _serving(data: ReportData) -> Section:
    if data.serving is None or data.serving.empty:
        return Section("serving", "Serving under load", [])
    blocks: list[Block] = [Para(_SERVING_NOTE), frame_table(data.serving, "serving")]
    if data.serving_cost is not None and len(data.serving_cost):
        blocks += [Para(_COST_NOTE), serving_cost_table(data.serving, data.serving_cost)]
    return Section("serving", "Serving under load", blocks)


def _request_energy(r: AnalysisResult) -> Section:
    title = "Energy per request (attributed)"
    if r.request_energy.empty:
        return Section("request-energy", title, [])
    columns, rows = request_energy_rows(r.request_energy)
    return Section("request-energy", title, [Para(REQUEST_ENERGY_NOTE, "note"),
                                             Table(columns, rows, "request_energy")])  # fmt: skip


def _validity(data: ReportData) -> Section:
    blocks: list[Block] = []
    if data.flags.empty:
        blocks.append(Para("No unit carries a validity flag."))
    else:
        blocks.append(frame_table(data.flags, "flags", "Validity flags"))
    if data.estimated.empty:
        blocks.append(Para("Every energy source was measured; none was estimated."))
    else:
        blocks.append(frame_table(data.estimated, "estimated",
                                  "Estimated (modelled, not measured) sources"))  # fmt: skip
    return Section("validity", "Validity", blocks)


def _kv(pairs: Sequence[tuple[str, Any]]) -> list[list[Any]]:
    return [[k, v] for k, v in pairs]


def environment_rows(data: ReportData) -> list[list[Any]]:
    s, e = data.session, data.experiment
    versions = s.get("versions")
    if isinstance(versions, str):
        versions = ", ".join(f"{k} {v}" for k, v in json.loads(versions or "{}").items())
    anchor = s.get("clock_anchor_ns")
    started_at = s.get("started_at")
    return _kv(
        [
            ("experiment", e.get("experiment_id")),
            ("name", e.get("name")),
            ("status", e.get("status")),
            ("host", s.get("host")),
            ("os / kernel", f"{s.get('os') or ''} {s.get('kernel') or ''}".strip()),
            ("CPU", s.get("cpu_model")),
            ("cores (logical / physical)",
             f"{s.get('cores_logical') or ''} / {s.get('cores_physical') or ''}"),
            ("RAM (GiB)", None if s.get("ram_bytes") is None
             else round(float(s["ram_bytes"]) / 2**30, 1)),
            ("Python", s.get("python")),
            ("versions", versions),
            ("clock anchor (wall ns - monotonic ns)", anchor),
            ("session started", None if started_at is None else str(started_at)),
            ("plan", e.get("plan_path")),
            ("plan hash", e.get("plan_hash")),
            ("seed", e.get("seed")),
            ("order", e.get("order_kind")),
            ("units (total / analysed)",
             f"{data.result.units_total} / {data.result.units_analysed}"),
        ]
    )  # fmt: skip



def _environment(data: ReportData) -> Section:
    blocks: list[Block] = [Table(["", "value"], environment_rows(data), "environment")]
    plan = data.experiment.get("plan_toml")
    if plan:
        blocks.append(Pre("Plan file", str(plan)))
    blocks.append(Fold("Order actually run", [frame_table(data.order, "order")]))
    return Section("environment", "Environment and plan", blocks)


def _reconciliation(r: AnalysisResult) -> Section:
    share = r.reconciliation["unaccounted_share"].dropna()
    if share.empty:
        return Section("reconciliation", "Reconciliation: wall against components", [
            Para("No wall source was measured, so nothing to reconcile.")])
    columns, rows = result_table(r, "reconciliation")
    return Section("reconciliation", "Reconciliation: wall against components", [
        Para(f"Over {len(share)} units, CPU + DRAM + GPU left a median "
             f"{share.median() * 100:.1f}% of wall energy unaccounted (from "
             f"{share.min() * 100:.1f}% to {share.max() * 100:.1f}%): the rest of the machine "
             "(fans, disks, power supply losses)."),
        Fold("Per unit", [Table(columns, rows, "reconciliation")])])  # fmt: skip


def _figures(data: ReportData) -> Section:
    r = data.result
    figures: list[Block] = [Figure(p, plot_caption(r, p)) for p in data.plots]
    if not figures:
        return Section("plots", "Figures", [])
    return Section("plots", "Figures", [
        Para("Every figure is also in plots/ as PNG, SVG and PDF."),
        Fold(f"Distributions, traces and reconciliation ({len(figures)} figures)", figures)])


# -- HTML ------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
.scroll{max-width:100%;overflow-x:auto;margin:.5em 0 1.2em}
table{border-collapse:collapse;font-size:.85em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:right;vertical-align:top}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
td,th{white-space:nowrap}td.long{white-space:normal;min-width:24em;max-width:48em}
.sentence{background:#f4faf2;border-left:4px solid #4a9a3a;padding:.4em .8em;margin:.4em 0}
.note{background:#fff7e6;border-left:4px solid #e0a030;padding:.4em .8em;margin:.4em 0}
#caveats ul{background:#fff7e6;border-left:4px solid #e0a030;padding:.4em .8em .4em 2em}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}
details{margin:.5em 0 1em}summary{cursor:pointer;color:#245}
pre{background:#f6f6f6;padding:.6em;overflow:auto;max-width:100%}
"""


def html_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], name: str | None = None
) -> str:
    attr = f' data-table="{html.escape(name)}"' if name else ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(_html_cell(cell(v)) for v in row) + "</tr>" for row in rows
    )
    return (f"<div class='scroll'><table{attr}><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")  # fmt: skip


def _html_cell(text: str) -> str:
    # Cells stay on one line (a wide table scrolls in its box) unless long prose.
    long = " class='long'" if len(text) > 60 else ""
    return f"<td{long}>{html.escape(text)}</td>"


def _html_block(block: Block) -> str:
    if isinstance(block, Para):
        kind = f" class='{block.kind}'" if block.kind else ""
        return f"<p{kind}>{html.escape(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in block.items) + "</ul>"
    if isinstance(block, Table):
        title = f"<h3>{html.escape(block.title)}</h3>" if block.title else ""
        table = html_table(block.columns, block.rows, block.name)
        if len(block.rows) > FOLD_ROWS and block.name not in UNFOLDED:
            summary = html.escape(block.title or block.name)
            return (f"<details><summary>{summary} ({len(block.rows)} rows)</summary>{table}"
                    "</details>")  # fmt: skip
        return title + table
    if isinstance(block, Figure):
        svg = block.plot.svg[block.plot.svg.find("<svg") :]
        return (f"<figure data-plot='{html.escape(block.plot.name)}'>{svg}"
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")  # fmt: skip
    if isinstance(block, Pre):
        return (f"<details><summary>{html.escape(block.summary)}</summary>"
                f"<pre>{html.escape(block.text)}</pre></details>")  # fmt: skip
    inner = "\n".join(_html_block(b) for b in block.blocks)
    return f"<details><summary>{html.escape(block.summary)}</summary>{inner}</details>"


def render_html(data: ReportData) -> str:
    r = data.result
    out: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>greenmon report: {html.escape(r.experiment_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>greenmon report: {html.escape(r.experiment_id)}</h1>",
    ]
    for section in sections(data):
        out.append(f"<section id='{section.id}'><h2>{html.escape(section.title)}</h2>")
        out += [_html_block(b) for b in section.blocks]
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


# -- Markdown ---------------------------------------------------------------------------


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(str(c)) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(esc(cell(v)) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown_block(block: Block) -> list[str]:
    if isinstance(block, Para):
        return [("> " if block.kind == "note" else "") + block.text, ""]
    if isinstance(block, Bullets):
        return [f"- {t}" for t in block.items] + [""]
    if isinstance(block, Table):
        title = [f"### {block.title}", ""] if block.title else []
        return [*title, md_table(block.columns, block.rows), ""]
    if isinstance(block, Figure):
        return [f"![{block.caption}](plots/{block.plot.png_path.name})", ""]
    if isinstance(block, Pre):
        return [f"### {block.summary}", "", "```toml", block.text.rstrip(), "```", ""]
    out = [f"### {block.summary}", ""]
    for inner in block.blocks:
        out += _markdown_block(inner)
    return out


def _markdown_section(section: Section) -> list[str]:
    out = [f"## {section.title}", ""]
    for block in section.blocks:
        out += _markdown_block(block)
    return out


def render_markdown(data: ReportData) -> str:
    out = [f"# greenmon report: {data.result.experiment_id}", ""]
    for section in sections(data):
        out += _markdown_section(section)
    return "\n".join(out)


# -- LaTeX ------------------------------------------------------------------------------


def latex_table(table: Table) -> str:
    """One table as LaTeX with booktabs rules (``\\toprule``, ``\\midrule``...), its cells
    written as in the report."""
    seen: dict[str, int] = {}
    columns = []
    for column in table.columns:
        name = str(column) or "item"
        seen[name] = seen.get(name, 0) + 1
        columns.append(name if seen[name] == 1 else f"{name} {seen[name]}")
    frame = pd.DataFrame([[cell(v) for v in row] for row in table.rows], columns=columns)
    styler = frame.style.hide(axis="index").format(escape="latex")
    styler = styler.format_index(escape="latex", axis=1)
    return str(styler.to_latex(hrules=True))


def _tables(blocks: Sequence[Block]) -> list[Table]:
    out: list[Table] = []
    for block in blocks:
        if isinstance(block, Table):
            out.append(block)
        elif isinstance(block, Fold):
            out += _tables(block.blocks)
    return out


def write_latex(data: ReportData, out_dir: Path) -> list[Path]:
    """Every table of the report as ``tables/<name>.tex`` (booktabs)."""
    folder = out_dir / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for section in sections(data):
        for table in _tables(section.blocks):
            path = folder / (table.name.replace(":", "_") + ".tex")
            path.write_text(latex_table(table), encoding="utf-8")
            paths.append(path)
    return paths


def write_report(
    store_or_path: Store | str | Path,
    experiment_id: str | None = None,
    out_dir: str | Path = "greenmon-report",
    pricing: Pricing | None = None,
) -> Path:
    """Analyse ``experiment_id`` (None: the latest), store its analysis tables, and write
    ``report.html`` (self-contained), ``report.md``, ``plots/`` (PNG, SVG, PDF) and
    ``tables/`` (LaTeX) under ``out_dir``.  Returns the HTML file's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(store_or_path, Store):
        data = gather(store_or_path, experiment_id, out, pricing)
    else:
        with Store.open(store_or_path) as store:
            data = gather(store, experiment_id, out, pricing)
    html_path = out / "report.html"
    html_path.write_text(render_html(data), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(data), encoding="utf-8")
    write_latex(data, out)
    return html_path
