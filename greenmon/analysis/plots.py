"""Figures of an experiment, as PNG, SVG and PDF (matplotlib's object API, no pyplot state).

- the answer: median energy per configuration with its 95% interval, per model;
- the trade-off: energy per token against latency p90, the Pareto-optimal
  configurations joined and filled;
- box plots per dependent variable by configuration, one colour per model (the study's
  Figures 3-5);
- energy against time, one point per unit;
- energy against quality, one point per unit, colour per configuration, marker per factor
  level;
- one unit's power traces with its phases shaded;
- wall power against the sum of its components (CPU + DRAM + GPU) over the same unit.

*Power* of a channel is derived from raw samples by greenmon/sources.py's rule: a
counter's wrap-corrected delta over the time between samples (none after a reset), a
power gauge as read.  Traces are averaged into time bins so a long unit sampled at 100 Hz
stays a readable, small figure.  The traces show every energy channel; the wall figure
adds, per domain, only the *source* channels, those the results count (the
``energy_sources`` view), so a modelled estimate beside RAPL is not counted twice.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from greenmon.analysis.data import VARIABLES_BY_COLUMN, configuration_label
from greenmon.sources import counter_range_sql, energy_channel_sql, interval_power_sql

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from greenmon.store import Store

TRACE_BINS = 600
PHASE_COLOURS = {
    "load": "#d9d9d9", "warmup": "#fde0c5", "cooldown_before": "#d6e9f8",
    "measure": "#d8f0d2", "cooldown_after": "#d6e9f8",
}  # fmt: skip
DOMAIN_COLOURS = {"cpu": "#1f77b4", "dram": "#9467bd", "gpu": "#2ca02c", "wall": "#d62728"}


@dataclass(frozen=True)
class Plot:
    """One rendered figure: its files and its SVG text (for inline embedding)."""

    name: str
    title: str
    png_path: Path
    svg_path: Path
    svg: str
    png_base64: str


def configuration_order(configurations: Any) -> list[str]:
    """CPU-provider configurations first, then the rest, each by engine (Tables 4/5)."""
    names = sorted({str(c) for c in configurations})
    return sorted(names, key=lambda c: (c.partition("/")[2] != "cpu", c.partition("/")[2], c))


def _figure(width_in: float = 9.0, height_in: float = 4.5) -> Figure:
    from matplotlib.figure import Figure

    # Fixed margins: constrained layout measured every text box and doubled render time.
    figure = Figure(figsize=(width_in, height_in), dpi=100)
    figure.subplots_adjust(left=0.09, right=0.98, bottom=0.13, top=0.92)
    return figure


def render(figure: Figure, out_dir: Path, name: str, title: str) -> Plot:
    """Write ``name``.png, .svg and .pdf under ``out_dir``; keep PNG and SVG for embedding."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    # No dates or random ids in the files: the same data renders the same bytes.
    figure.savefig(png, format="png", metadata={"Software": None})
    svg_buffer = io.StringIO()
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "greenmon", "svg.fonttype": "none"}):
        figure.savefig(svg_buffer, format="svg", metadata={"Date": None, "Creator": None})
    png_path, svg_path = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    png_path.write_bytes(png.getvalue())
    svg_path.write_text(svg_buffer.getvalue(), encoding="utf-8")
    # PDF for a paper (vector, fonts embedded); no creation date, so reruns match.
    figure.savefig(out_dir / f"{name}.pdf", format="pdf",
                   metadata={"CreationDate": None, "ModDate": None, "Creator": None})
    return Plot(
        name=name,
        title=title,
        png_path=png_path,
        svg_path=svg_path,
        svg=svg_buffer.getvalue(),
        png_base64=base64.b64encode(png.getvalue()).decode("ascii"),
    )


def box_plot(done: pd.DataFrame, variable: str) -> Figure:
    """Box plots of ``variable`` by configuration, one colour per model."""
    info = VARIABLES_BY_COLUMN[variable]
    configs = configuration_order(done["configuration"])
    models = sorted(done["model"].unique())
    figure = _figure(max(7.0, 1.2 * len(configs) + 2), 4.5)
    axes = figure.add_subplot()
    colours = _palette(len(models))
    width = 0.8 / max(len(models), 1)
    for m, model in enumerate(models):
        data, positions = [], []
        for c, config in enumerate(configs):
            values = done.loc[
                (done["model"] == model) & (done["configuration"] == config), variable
            ].dropna()
            if len(values):
                data.append(values.to_numpy(dtype=float))
                positions.append(c - 0.4 + width * (m + 0.5))
        if not data:
            continue
        boxes = axes.boxplot(
            data, positions=positions, widths=width * 0.9, patch_artist=True,
            manage_ticks=False, flierprops={"markersize": 2},
        )  # fmt: skip
        for patch in boxes["boxes"]:
            patch.set_facecolor(colours[m])
            patch.set_alpha(0.8)
        axes.plot([], [], color=colours[m], linewidth=6, label=model)
    axes.set_xticks(range(len(configs)), [configuration_label(c) for c in configs])
    axes.set_ylabel(f"{info.label} ({info.unit})")
    axes.set_title(f"{info.label} by configuration")
    axes.grid(axis="y", alpha=0.3)
    if len(models) > 1:
        axes.legend(fontsize="small", ncols=min(len(models), 6), loc="best")
    return figure


def _palette(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if count > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(count)]


def energy_time_plot(done: pd.DataFrame, variable: str = "energy_global_j") -> Figure:
    """Energy against measure time, one point per unit, one colour per configuration."""
    figure = _figure(7.5, 4.5)
    axes = figure.add_subplot()
    configs = configuration_order(done["configuration"])
    colours = _palette(len(configs))
    for c, config in enumerate(configs):
        part = done[done["configuration"] == config]
        axes.scatter(
            part["duration_s"], part[variable], s=14, color=colours[c],
            label=configuration_label(config), alpha=0.8,
        )  # fmt: skip
    info = VARIABLES_BY_COLUMN[variable]
    axes.set_xlabel("Measure time (s)")
    axes.set_ylabel(f"{info.label} ({info.unit})")
    axes.set_title("Energy against time per unit")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def answer_plot(answers: pd.DataFrame, done: pd.DataFrame, variable: str) -> Figure:
    """Median ``variable`` per configuration with its bootstrap 95% interval: one series per
    model (and factor levels), the least-energy configuration of each drawn filled."""
    from greenmon.analysis.data import factor_label
    from greenmon.analysis.decision import median_interval

    info = VARIABLES_BY_COLUMN[variable]
    configs = configuration_order(done["configuration"])
    scopes = [(str(m), str(f)) for m, f in answers[["model", "factor_key"]].itertuples(
        index=False)]  # fmt: skip
    figure = _figure(max(7.5, 1.3 * len(configs) + 3), 3.6)
    figure.subplots_adjust(right=0.95)
    axes = figure.add_subplot()
    colours = _palette(len(scopes))
    width = 0.7 / max(len(scopes), 1)
    for s, (model, factors) in enumerate(scopes):
        part = done[(done["model"] == model) & (done["factor_key"] == factors)]
        best = answers[(answers["model"] == model) & (answers["factor_key"] == factors)][
            "best"].iloc[0]  # fmt: skip
        for c, config in enumerate(configs):
            values = part.loc[part["configuration"] == config, variable].dropna()
            if values.empty:
                continue
            median = float(values.median())
            low, high = median_interval(values.to_numpy(dtype=float))
            x = c - 0.35 + width * (s + 0.5)
            axes.errorbar([x], [median], yerr=[[median - low], [high - median]], fmt="o",
                          color=colours[s], markersize=7 if config == best else 5,
                          markerfacecolor=colours[s] if config == best else "white",
                          capsize=3)  # fmt: skip
        label = model + (f", {factor_label(factors)}" if factors else "")
        axes.plot([], [], "o", color=colours[s], label=label)
    axes.set_xticks(range(len(configs)), [configuration_label(c) for c in configs],
                    fontsize="small")  # fmt: skip
    axes.set_xlim(-0.6, len(configs) - 0.4)
    values = done[variable].dropna().to_numpy(dtype=float)
    if len(values) and values.min() > 0 and values.max() / values.min() > 20:
        axes.set_yscale("log")  # medians an order of magnitude apart stay readable
    axes.set_ylabel(f"{info.label} ({info.unit})")
    axes.set_title(f"{info.label}: median and 95% interval (filled: least energy)")
    axes.grid(axis="y", alpha=0.3)
    if len(scopes) > 1:
        axes.legend(fontsize="small", ncols=min(len(scopes), 4), loc="best")
    return figure


def tradeoff_plot(front: pd.DataFrame) -> Figure:
    """Energy per output against latency p90, one point per configuration and scope; the
    Pareto-optimal ones filled and joined (lower left is better)."""
    from greenmon.analysis.data import factor_label

    figure = _figure(7.0, 3.8)
    # Energy per token has long tick labels (0.0125): room for them and the axis label.
    figure.subplots_adjust(left=0.12)
    axes = figure.add_subplot()
    usable = front[front["energy"].notna() & front["latency_p90_s"].notna()]
    # A point's label goes to its right, or to its left in the right third of the axis,
    # so no label runs past the figure's edge.
    span = usable["latency_p90_s"].agg(["min", "max"]) if len(usable) else None
    right_from = None if span is None else span["min"] + (span["max"] - span["min"]) * 2 / 3
    scopes = list(usable.groupby(["model", "factor_key"], sort=True))
    colours = _palette(len(scopes))
    for s, ((model, factors), part) in enumerate(scopes):
        label = str(model) + (f", {factor_label(str(factors))}" if factors else "")
        for row in part.itertuples(index=False):
            axes.scatter([row.latency_p90_s], [row.energy], s=40 if row.pareto else 25,
                         color=colours[s], edgecolors=colours[s],
                         facecolors=colours[s] if row.pareto else "white")  # fmt: skip
            leftward = right_from is not None and row.latency_p90_s > right_from
            axes.annotate(configuration_label(str(row.configuration)),
                          (row.latency_p90_s, row.energy), fontsize=7,
                          xytext=(-4 if leftward else 4, 3), textcoords="offset points",
                          ha="right" if leftward else "left")  # fmt: skip
        optimal = part[part["pareto"].astype(bool)].sort_values("latency_p90_s")
        axes.plot(optimal["latency_p90_s"], optimal["energy"], color=colours[s],
                  linewidth=1, label=label)  # fmt: skip
    axes.margins(x=0.2, y=0.12)  # room for the labels of the points at the edges
    energy = str(front["energy_variable"].iloc[0]) if len(front) else "j_per_token"
    unit = "J/token" if energy == "j_per_token" else "J/request"
    source = str(front["latency_source"].iloc[0]) if len(front) else "latency p90"
    axes.set_xlabel(f"Latency p90 (s; {source})")
    axes.set_ylabel(f"Energy ({unit})")
    axes.set_title("Energy against latency (filled and joined: Pareto-optimal)")
    axes.grid(alpha=0.3)
    if len(scopes) > 1:
        axes.legend(fontsize="small")
    return figure


def energy_quality_plot(done: pd.DataFrame, variable: str = "energy_global_j") -> Figure:
    """Energy against quality, one point per unit: colour per configuration, marker per
    factor level; the configuration's median as a large outlined marker."""
    from greenmon.analysis.data import factor_label

    figure = _figure(7.5, 4.5)
    axes = figure.add_subplot()
    configs = configuration_order(done["configuration"])
    colours = _palette(len(configs))
    levels = sorted(done["factor_key"].unique())
    for c, config in enumerate(configs):
        for k, level in enumerate(levels):
            part = done[(done["configuration"] == config) & (done["factor_key"] == level)]
            part = part[part["quality"].notna() & part[variable].notna()]
            if part.empty:
                continue
            marker = MARKERS[k % len(MARKERS)]
            label = configuration_label(config) + (f", {factor_label(level)}" if level else "")
            axes.scatter(part["quality"], part[variable], s=14, color=colours[c],
                         marker=marker, alpha=0.6)  # fmt: skip
            axes.scatter(
                [part["quality"].median()], [part[variable].median()], s=90,
                color=colours[c], marker=marker, edgecolors="black", label=label,
            )  # fmt: skip
    info = VARIABLES_BY_COLUMN[variable]
    metrics = sorted({str(m) for m in done.get("quality_metric", pd.Series()).dropna()})
    axes.set_xlabel(f"Quality ({', '.join(metrics) or 'task metric'}, 0-1; right is better)")
    axes.set_ylabel(f"{info.label} ({info.unit})")
    axes.set_title("Energy against quality (large markers: medians)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def unit_power(store: Store, experiment_id: str, unit_id: int, bins: int = TRACE_BINS) -> (
    tuple[pd.DataFrame, pd.DataFrame]
):
    """(power, phases) of one unit: power has t_s (from the unit's first phase), channel,
    domain, source (the results count this channel for its domain) and power_w averaged
    per time bin; phases has phase, start_s, end_s."""
    _, phase_rows = store.query(
        """SELECT phase, start_ns, end_ns, session_id FROM phases
           WHERE experiment_id = ? AND unit_id = ? AND end_ns IS NOT NULL
           AND attempt = (SELECT max(attempt) FROM phases
                          WHERE experiment_id = ? AND unit_id = ?)
           ORDER BY start_ns""",
        [experiment_id, unit_id, experiment_id, unit_id],
    )
    phases = pd.DataFrame(phase_rows, columns=["phase", "start_ns", "end_ns", "session_id"])
    if phases.empty:
        return pd.DataFrame(columns=["t_s", "channel", "domain", "source", "power_w"]), phases
    lo, hi = int(phases["start_ns"].min()), int(phases["end_ns"].max())
    bin_ns = max((hi - lo) // bins, 1)
    power_w = interval_power_sql(
        kind="ch.kind", unit="ch.unit", counter_range="ch.counter_range", value="s.value",
        t_ns="s.t_ns", order="w",
    )  # fmt: skip
    columns, rows = store.query(
        f"""WITH ch AS (
                SELECT c.channel_id, c.probe || ':' || c.name AS channel, c.domain, c.kind,
                       c.unit, {counter_range_sql("c")} AS counter_range,
                       c.channel_id IN (SELECT channel_id FROM energy_sources) AS source
                FROM channels c
                WHERE c.session_id = ? AND c.domain IS NOT NULL AND {energy_channel_sql("c")}),
            pw AS (
                SELECT ch.channel, ch.domain, ch.source, s.t_ns, {power_w} AS power_w
                FROM samples s JOIN ch USING (channel_id)
                WHERE s.t_ns BETWEEN ? AND ?
                WINDOW w AS (PARTITION BY s.channel_id ORDER BY s.t_ns))
            SELECT channel, domain, source,
                   (floor((t_ns - ?) / ?) * ? + ? / 2) / 1e9 AS t_s, avg(power_w) AS power_w
            FROM pw WHERE power_w >= 0 AND power_w IS NOT NULL
            GROUP BY ALL ORDER BY channel, t_s""",
        [str(phases["session_id"].iloc[0]), lo, hi, lo, bin_ns, bin_ns, bin_ns],
    )
    power = pd.DataFrame(rows, columns=columns)
    phases = phases.assign(
        start_s=(phases["start_ns"] - lo) / 1e9, end_s=(phases["end_ns"] - lo) / 1e9
    )[["phase", "start_s", "end_s"]]
    return power, phases


def _shade(axes: Any, phases: pd.DataFrame) -> None:
    seen: set[str] = set()
    for row in phases.itertuples(index=False):
        label = None if row.phase in seen else str(row.phase)
        seen.add(str(row.phase))
        axes.axvspan(row.start_s, row.end_s, color=PHASE_COLOURS.get(str(row.phase), "#eee"),
                     alpha=0.7, label=label, linewidth=0)  # fmt: skip


def power_trace_plot(power: pd.DataFrame, phases: pd.DataFrame, title: str) -> Figure:
    """Each energy channel's power over one unit, phases shaded."""
    figure = _figure(9.0, 4.5)
    axes = figure.add_subplot()
    _shade(axes, phases)
    for channel, part in power.groupby("channel", sort=True):
        domain = str(part["domain"].iloc[0])
        axes.plot(part["t_s"], part["power_w"], label=f"{channel} ({domain})", linewidth=1.2,
                  color=DOMAIN_COLOURS.get(domain))  # fmt: skip
    axes.set_xlabel("Time since the unit started (s)")
    axes.set_ylabel("Power (W)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncols=2)
    return figure


def wall_components_frame(power: pd.DataFrame) -> pd.DataFrame:
    """Per time bin: wall power and the sum of CPU + DRAM + GPU power, each domain from
    its source channels only (as the results count it)."""
    sources = power[power["source"].astype(bool)] if "source" in power else power.iloc[:0]
    if sources.empty:
        return pd.DataFrame(columns=["t_s", "wall_w", "components_w"])
    by_domain = sources.pivot_table(index="t_s", columns="domain", values="power_w", aggfunc="sum")
    parts = [d for d in ("cpu", "dram", "gpu") if d in by_domain.columns]
    if "wall" not in by_domain.columns or not parts:
        return pd.DataFrame(columns=["t_s", "wall_w", "components_w"])
    # Sources sample at different instants: carry each across empty bins before adding.
    filled = by_domain.sort_index().ffill().bfill()
    return pd.DataFrame(
        {"t_s": filled.index.to_numpy(dtype=float),
         "wall_w": filled["wall"].to_numpy(dtype=float),
         "components_w": filled[parts].sum(axis=1).to_numpy(dtype=float)}
    )  # fmt: skip


def wall_components_plot(frame: pd.DataFrame, phases: pd.DataFrame, title: str) -> Figure:
    figure = _figure(9.0, 4.0)
    axes = figure.add_subplot()
    _shade(axes, phases)
    axes.plot(frame["t_s"], frame["wall_w"], label="wall", color=DOMAIN_COLOURS["wall"])
    axes.plot(frame["t_s"], frame["components_w"], label="CPU + DRAM + GPU", color="#333333")
    axes.fill_between(frame["t_s"], frame["components_w"], frame["wall_w"], alpha=0.15,
                      color=DOMAIN_COLOURS["wall"], label="unaccounted")  # fmt: skip
    axes.set_xlabel("Time since the unit started (s)")
    axes.set_ylabel("Power (W)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def trace_unit(done: pd.DataFrame) -> int | None:
    """The unit whose traces a report shows: the median-energy unit of the configuration
    with the most units, so the trace is typical rather than the first or an outlier."""
    if done.empty:
        return None
    config = done["configuration"].value_counts().sort_index().idxmax()
    part = done[done["configuration"] == config].sort_values("unit_id")
    energy = part["energy_global_j"].fillna(part["duration_s"]).fillna(0.0)
    order = np.argsort(energy.to_numpy(dtype=float), kind="stable")
    return int(part["unit_id"].iloc[order[len(order) // 2]])


def make_plots(
    store: Store | None,
    done: pd.DataFrame,
    variables: list[str],
    out_dir: Path,
    experiment_id: str,
    unit_id: int | None = None,
) -> list[Plot]:
    """Every figure of an experiment, written under ``out_dir`` (PNG + SVG)."""
    plots: list[Plot] = []
    for variable in variables:
        label = VARIABLES_BY_COLUMN[variable].label
        plots.append(render(box_plot(done, variable), out_dir, f"box_{variable}", label))
    if done["duration_s"].notna().any() and done["energy_global_j"].notna().any():
        plots.append(
            render(energy_time_plot(done), out_dir, "energy_time", "Energy against time per unit")
        )
    scored = "quality" in done and done["quality"].notna().any()
    if scored and done["energy_global_j"].notna().any():
        plots.append(
            render(energy_quality_plot(done), out_dir, "energy_quality",
                   "Energy against quality per configuration and factor level")
        )  # fmt: skip
    unit = unit_id if unit_id is not None else trace_unit(done)
    if store is None or unit is None:
        return plots
    power, phases = unit_power(store, experiment_id, unit)
    row = done[done["unit_id"] == unit]
    what = f"unit {unit}"
    if len(row):
        r = row.iloc[0]
        what += f": {r['model']}, {configuration_label(str(r['configuration']))}, "
        what += f"repetition {r['repetition']}"
    if not power.empty:
        title = f"Power traces, {what}"
        plots.append(render(power_trace_plot(power, phases, title), out_dir, "power_traces", title))
    wall = wall_components_frame(power)
    if not wall.empty:
        title = f"Wall power against CPU + DRAM + GPU, {what}"
        plots.append(
            render(wall_components_plot(wall, phases, title), out_dir, "wall_components", title)
        )
    return plots
