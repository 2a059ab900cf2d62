"""One experiment's report: a self-contained HTML file and its Markdown twin.

The HTML embeds every figure as inline SVG (no external files, no scripts), so it can be
mailed or attached to a paper's artefact; the Markdown twin links the PNGs written beside
it.  Both hold the same sections: what was run and on what, the order actually run,
validity flags and estimated sources, one plain sentence per dependent variable, the
median tables (CPU-provider configurations beside CUDA-provider ones, as the study's
Tables 4 and 5), the tests with effect sizes, savings, reconciliation and the figures.

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

import pandas as pd

from greenmon.analysis.data import (
    VARIABLES_BY_COLUMN,
    configuration_label,
    factor_label,
)
from greenmon.analysis.estimated import EstimatedNote
from greenmon.analysis.plots import Plot, configuration_order, make_plots
from greenmon.analysis.request_energy import request_energy_html, request_energy_markdown
from greenmon.analysis.stats import AnalysisResult
from greenmon.analysis.tables import analyze
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


# issue 14: a figure containing estimated energy carries this mark; the legend says what
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
    """What a report shows, gathered from the database."""

    result: AnalysisResult
    session: dict[str, Any]
    experiment: dict[str, Any]
    order: pd.DataFrame
    flags: pd.DataFrame
    estimated: pd.DataFrame
    plots: list[Plot]
    # issue 16: serving under load (empty when the plan neither serves nor varies load)
    serving: pd.DataFrame | None = None
    serving_cost: pd.DataFrame | None = None


def _rows(store: Store, sql: str, params: Sequence[Any]) -> pd.DataFrame:
    columns, rows = store.query(sql, params)
    return pd.DataFrame(rows, columns=columns)


def gather(store: Store, experiment_id: str | None, out_dir: Path) -> ReportData:
    result = analyze(store, experiment_id)
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
    from greenmon.analysis.data import load_results

    frame = load_results(store, experiment)
    done = frame[frame["status"] == "done"]
    plots = make_plots(store, done, result.variables, out_dir / "plots", experiment)
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
    """issue 18: per-host medians side by side, one column per host."""
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


def _hosts_html(r: AnalysisResult) -> list[str]:
    from greenmon.analysis.hosts import METHOD_CITATION

    if r.host_tests.empty:
        return []
    out = ["<h2 id='hosts'>Hosts</h2>",
           f"<p>The units ran on {r.host_tests['hosts'].max()} hosts; configurations are "
           f"compared within each host: {html.escape(METHOD_CITATION)}.</p>"]  # fmt: skip
    sentences = [t for t in r.host_effects["sentence"] if isinstance(t, str)]
    out.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in sentences[:12]) + "</ul>")
    for name, title in (("host_tests", "Within-host tests"), ("host_effects", "Host effect")):
        columns, rows = result_table(r, name)
        out += [f"<h3>{title}</h3>", html_table(columns, rows, name)]
    columns, rows = host_median_table(r)
    out += ["<details><summary>Per-host medians</summary>",
            html_table(columns, rows, "host_medians"), "</details>"]  # fmt: skip
    return out


def _hosts_markdown(r: AnalysisResult) -> list[str]:
    from greenmon.analysis.hosts import METHOD_CITATION

    if r.host_tests.empty:
        return []
    out = ["## Hosts", "", f"The units ran on {r.host_tests['hosts'].max()} hosts; "
           f"configurations are compared within each host: {METHOD_CITATION}.", ""]  # fmt: skip
    out += [f"- {t}" for t in r.host_effects["sentence"][:12] if isinstance(t, str)] + [""]
    for name, title in (("host_tests", "Within-host tests"), ("host_effects", "Host effect")):
        columns, rows = result_table(r, name)
        out += [f"### {title}", "", md_table(columns, rows), ""]
    columns, rows = host_median_table(r)
    out += ["### Per-host medians", "", md_table(columns, rows), ""]
    return out


# -- HTML ------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.sentence{background:#f4faf2;border-left:4px solid #4a9a3a;padding:.4em .8em;margin:.4em 0}
.note{background:#fff7e6;border-left:4px solid #e0a030;padding:.4em .8em;margin:.4em 0}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}
details{margin:.5em 0 1em}pre{background:#f6f6f6;padding:.6em;overflow:auto}
"""


def html_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], name: str | None = None
) -> str:
    attr = f' data-table="{html.escape(name)}"' if name else ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


def render_html(data: ReportData) -> str:
    r = data.result
    out: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>greenmon report: {html.escape(r.experiment_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>greenmon report: {html.escape(r.experiment_id)}</h1>",
    ]
    out += _findings_html(r)
    out += _environment_html(data)
    out += _validity_html(data)
    out += _serving_html(data)
    out += request_energy_html(r.request_energy, html_table)
    out += _medians_html(r)
    out += _tests_html(r)
    out += _hosts_html(r)  # issue 18
    out += _quality_html(r)
    out.append("<h2 id='reconciliation'>Reconciliation: wall against components</h2>")
    out.append(_reconciliation_html(r))
    out += _figures_html(data)
    out.append("</body></html>")
    return "\n".join(out)


# render_html's sections, in the order the report shows them: each a list of HTML pieces
# that render_html joins with newlines.


def _findings_html(r: AnalysisResult) -> list[str]:
    out = ["<h2 id='findings'>Findings</h2>"]
    for row in r.summary.to_dict(orient="records"):
        out.append(f"<p class='sentence'>{html.escape(str(row['sentence']))}")
        if isinstance(row.get("models_sentence"), str):
            out.append(f" {html.escape(row['models_sentence'])}")
        out.append("</p>")
    for note in r.notes:
        out.append(
            f"<p class='note'><b>{html.escape(note.title)}.</b> {html.escape(note.message)}</p>"
        )
    return out


def _environment_html(data: ReportData) -> list[str]:
    out = ["<h2 id='environment'>Environment and plan</h2>",
           html_table(["", "value"], environment_rows(data), "environment")]  # fmt: skip
    plan = data.experiment.get("plan_toml")
    if plan:
        out.append(f"<details><summary>Plan file</summary><pre>{html.escape(str(plan))}</pre>"
                   "</details>")  # fmt: skip
    out.append("<details><summary>Order actually run</summary>")
    out.append(html_table(list(data.order.columns), data.order.values.tolist(), "order"))
    out.append("</details>")
    return out


def _validity_html(data: ReportData) -> list[str]:
    r = data.result
    out = ["<h2 id='validity'>Validity</h2>"]
    if data.flags.empty:
        out.append("<p>No unit carries a validity flag.</p>")
    else:
        out.append(html_table(list(data.flags.columns), data.flags.values.tolist(), "flags"))
    if data.estimated.empty:
        out.append("<p>Every energy source was measured; none was estimated.</p>")
    else:
        out.append("<p>Estimated (modelled, not measured) sources:</p>")
        out.append(
            html_table(list(data.estimated.columns), data.estimated.values.tolist(), "estimated")
        )
    if estimated_legend(r):
        out.append(f"<p class='note' id='estimated'>{html.escape(estimated_legend(r))}</p>")
    return out


def _medians_html(r: AnalysisResult) -> list[str]:
    out = ["<h2 id='medians'>Medians</h2>"]
    for variable in r.variables:
        info = VARIABLES_BY_COLUMN[variable]
        for factors in sorted(r.medians["factor_key"].unique()):
            where = f", {factor_label(factors)}" if factors else ""
            for scope, label in (("model", "per model"), ("size_category", "per size category")):
                columns, rows = median_table(r, variable, scope, factors)
                if rows:
                    marked = f" {MARK}" if variable in r.estimated.get("variables", {}) else ""
                    out.append(f"<h3>{html.escape(info.label)} ({html.escape(info.unit)}), "
                               f"{label}{html.escape(where)}{marked}</h3>")  # fmt: skip
                    out.append(html_table(columns, rows, f"medians:{variable}:{scope}:{factors}"))
    return out


def _tests_html(r: AnalysisResult) -> list[str]:
    out = ["<h2 id='tests'>Tests and effect sizes</h2>"]
    out.append(
        "<p>Per model and configuration group: Shapiro-Wilk per configuration, Levene across "
        "them; all normal &rarr; Welch ANOVA + Games-Howell (two groups: Welch's t) with "
        "omega squared and Hedges' g; otherwise Kruskal-Wallis + Dunn (Holm) (two groups: "
        f"Mann-Whitney U) with epsilon squared and Cliff's delta. &alpha; = {r.alpha:g}.</p>"
    )
    for name in ("tests", "savings_range"):
        columns, rows = result_table(r, name)
        out.append(f"<h3>{'Omnibus tests' if name == 'tests' else 'Savings over models'}</h3>")
        out.append(html_table(columns, rows, name))
    columns, rows = result_table(r, "posthoc")
    out.append("<details><summary>Post-hoc pairs</summary>")
    out.append(html_table(columns, rows, "posthoc") + "</details>")
    if len(r.twoway):
        columns, rows = result_table(r, "twoway")
        out.append("<h3>Two-way ANOVA: configuration x factor</h3>")
        out.append(html_table(columns, rows, "twoway"))
    if len(r.tradeoff):
        columns, rows = result_table(r, "tradeoff")
        out.append("<h3>Energy against time per factor level</h3>")
        out.append(html_table(columns, rows, "tradeoff"))
        sentences = [t for t in r.tradeoff["sentence"] if isinstance(t, str)]
        out.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in sentences) + "</ul>")
    return out


def _quality_html(r: AnalysisResult) -> list[str]:
    if not len(r.quality):
        return []
    columns, rows = result_table(r, "quality")
    out = [f"<h2 id='quality'>{QUALITY_TITLE}</h2>"]
    out.append(f"<p>{html.escape(quality_intro(r))}</p>")
    out.append(html_table(columns, rows, "quality"))
    sentences = [t for t in r.quality["sentence"] if isinstance(t, str)]
    out.append("<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in sentences) + "</ul>")
    return out


def _figures_html(data: ReportData) -> list[str]:
    r = data.result
    out = ["<h2 id='plots'>Figures</h2>"]
    for plot in data.plots:
        svg = plot.svg[plot.svg.find("<svg") :]
        out.append(f"<figure data-plot='{html.escape(plot.name)}'>{svg}"
                   f"<figcaption>{html.escape(plot_caption(r, plot))}</figcaption>"
                   "</figure>")  # fmt: skip
    return out


_SERVING_NOTE = (
    "Per configuration and load level, medians over units. Energy per token over the whole "
    "measure and over its steady state: from the moment every concurrent slot is busy "
    "until the first slot drains (flag short_steady_state when shorter than the sensors "
    "allow). Latency is end to end per request; TTFT the time to the first streamed token; "
    "TPOT the time per output token after it."
)
_COST_NOTE = (
    "Served (http/...) against in-process at the same model and level: percentage change "
    "of the medians (positive energy or latency change, or negative throughput change, "
    "is what serving over HTTP costs)."
)


def _serving_html(data: ReportData) -> list[str]:
    if data.serving is None or data.serving.empty:
        return []
    out = ["<h2 id='serving'>Serving under load</h2>", f"<p>{_SERVING_NOTE}</p>",
           html_table(list(data.serving.columns), data.serving.values.tolist(), "serving")]
    if data.serving_cost is not None and len(data.serving_cost):
        cost = data.serving_cost
        out += ["<h3>The cost of serving over HTTP</h3>", f"<p>{_COST_NOTE}</p>",
                html_table(list(cost.columns), cost.values.tolist(), "serving_cost")]
    return out


def _serving_markdown(data: ReportData) -> list[str]:
    if data.serving is None or data.serving.empty:
        return []
    out = ["## Serving under load", "", _SERVING_NOTE, "",
           md_table(list(data.serving.columns), data.serving.values.tolist()), ""]
    if data.serving_cost is not None and len(data.serving_cost):
        cost = data.serving_cost
        out += ["### The cost of serving over HTTP", "", _COST_NOTE, "",
                md_table(list(cost.columns), cost.values.tolist()), ""]
    return out


def _reconciliation_html(r: AnalysisResult) -> str:
    rec = r.reconciliation
    share = rec["unaccounted_share"].dropna()
    if share.empty:
        return "<p>No wall source was measured, so nothing to reconcile.</p>"
    text = (
        f"<p>Over {len(share)} units, CPU + DRAM + GPU left a median "
        f"{share.median() * 100:.1f}% of wall energy unaccounted (from "
        f"{share.min() * 100:.1f}% to {share.max() * 100:.1f}%): the rest of the machine "
        "(fans, disks, power supply losses).</p>"
    )
    columns, rows = result_table(r, "reconciliation")
    table = html_table(columns, rows, "reconciliation")
    return f"{text}<details><summary>Per unit</summary>{table}</details>"


# -- Markdown ---------------------------------------------------------------------------


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(str(c)) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(esc(cell(v)) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(data: ReportData) -> str:
    r = data.result
    out = [f"# greenmon report: {r.experiment_id}", "", "## Findings", ""]
    for row in r.summary.to_dict(orient="records"):
        extra = f" {row['models_sentence']}" if isinstance(row.get("models_sentence"), str) else ""
        out.append(f"- {row['sentence']}{extra}")
    out.append("")
    out += [f"> **{n.title}.** {n.message}\n" for n in r.notes]
    out += ["## Environment and plan", "", md_table(["", "value"], environment_rows(data)), ""]
    if data.experiment.get("plan_toml"):
        out += ["```toml", str(data.experiment["plan_toml"]).rstrip(), "```", ""]
    out += ["### Order actually run", "",
            md_table(list(data.order.columns), data.order.values.tolist()), ""]  # fmt: skip
    out += ["## Validity", ""]
    out.append(
        md_table(list(data.flags.columns), data.flags.values.tolist())
        if len(data.flags) else "No unit carries a validity flag."
    )  # fmt: skip
    out.append("")
    out.append(
        "Estimated sources:\n\n"
        + md_table(list(data.estimated.columns), data.estimated.values.tolist())
        if len(data.estimated) else "Every energy source was measured; none was estimated."
    )  # fmt: skip
    out.append("")
    if estimated_legend(r):
        out += [estimated_legend(r), ""]
    out += _serving_markdown(data)
    out += request_energy_markdown(data.result.request_energy, md_table)
    out += ["## Medians", ""]
    for variable in r.variables:
        info = VARIABLES_BY_COLUMN[variable]
        for factors in sorted(r.medians["factor_key"].unique()):
            where = f", {factor_label(factors)}" if factors else ""
            for scope, label in (("model", "per model"), ("size_category", "per size category")):
                columns, rows = median_table(r, variable, scope, factors)
                if rows:
                    marked = f" {MARK}" if variable in r.estimated.get("variables", {}) else ""
                    out += [f"### {info.label} ({info.unit}), {label}{where}{marked}", "",
                            md_table(columns, rows), ""]  # fmt: skip
    out += ["## Tests and effect sizes", ""]
    for name, title in (("tests", "Omnibus tests"), ("savings_range", "Savings over models"),
                        ("posthoc", "Post-hoc pairs"), ("twoway", "Two-way ANOVA"),
                        ("tradeoff", "Energy against time per factor level"),
                        ("reconciliation", "Reconciliation: wall against components")):  # fmt: skip
        columns, rows = result_table(r, name)
        if rows:
            out += [f"### {title}", "", md_table(columns, rows), ""]
    out += _hosts_markdown(r)  # issue 18
    if len(r.quality):
        columns, rows = result_table(r, "quality")
        out += [f"## {QUALITY_TITLE}", "", quality_intro(r), "", md_table(columns, rows), ""]
        out += [f"- {t}" for t in r.quality["sentence"] if isinstance(t, str)] + [""]
    out += ["## Figures", ""]
    for plot in data.plots:
        out += [f"![{plot_caption(r, plot)}](plots/{plot.png_path.name})", ""]
    return "\n".join(out)


def write_report(
    store_or_path: Store | str | Path,
    experiment_id: str | None = None,
    out_dir: str | Path = "greenmon-report",
) -> Path:
    """Analyse ``experiment_id`` (None: the latest), store its analysis tables, and write
    ``report.html`` (self-contained), ``report.md`` and ``plots/`` under ``out_dir``.
    Returns the HTML file's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(store_or_path, Store):
        data = gather(store_or_path, experiment_id, out)
    else:
        with Store.open(store_or_path) as store:
            data = gather(store, experiment_id, out)
    html_path = out / "report.html"
    html_path.write_text(render_html(data), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(data), encoding="utf-8")
    return html_path
