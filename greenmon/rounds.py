"""Repetitions until the answer is stable: rounds and the stop rule.

Terms:
- *cell*: (model, configuration, factor levels), the thing the analysis compares; its
  values are its done units' energy (``energy_global_j``, else ``energy_wall_j``: the
  variable the analysis tests).
- *round* r: repetition r of every cell, in a fresh order seeded by (plan seed, r)
  (``round_order``).  ``repetitions = "auto"`` lays out ``max_repetitions`` rounds
  (greenmon/plan/units.py) and the runner may stop after any of them.
- *precision* of a cell: the distribution-free (order-statistic) confidence interval of
  its median energy, from scipy's ``quantile_test``, relative to the median.  A cell *meets
  the target* when both ends lie within ``median * (1 +- ci_half_width)``.  Fewer values
  than the confidence needs (6 for 95%) give no interval: not met.
- *stop rule*: after each round from ``min_repetitions`` on, stop when every cell meets
  the target; always stop after ``max_repetitions``.  The units of rounds not run are
  marked ``skipped``; every evaluation is stored (table ``precision_rounds``) and said as
  an event.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import anyio.to_thread

from greenmon.clock import now_ns
from greenmon.plan.schema import Plan, Precision
from greenmon.plan.units import Unit
from greenmon.plan.units import round_order as round_order  # callers import it from here too

if TYPE_CHECKING:
    from greenmon.protocols import PrecisionStore, RunnerHost

T = TypeVar("T")


@dataclass(frozen=True)
class CellPrecision:
    """How precisely one cell's median energy is known after some rounds."""

    model: str
    configuration: str
    factors: str  # canonical JSON of the factor levels
    n: int
    median_energy_j: float | None
    ci_low_j: float | None
    ci_high_j: float | None
    # The larger distance from the median to an end of the interval, relative to the
    # median; None where there is no interval yet.
    half_width: float | None
    met: bool

    @property
    def precision_text(self) -> str:
        return "no interval yet" if self.half_width is None else f"+-{self.half_width:.1%}"

    @property
    def label(self) -> str:
        levels = json.loads(self.factors) if self.factors else {}
        extra = "".join(f" {k}={v}" for k, v in sorted(levels.items()))
        return f"{self.model} {self.configuration}{extra}"


def median_interval(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """(median, low, high): the order-statistic interval of the median (scipy); low and
    high are NaN when there are too few values for this confidence."""
    import numpy as np
    from scipy import stats

    data = np.asarray(values, dtype=float)
    median = float(np.median(data))
    if len(data) < 2:
        return median, math.nan, math.nan
    interval = stats.quantile_test(data, q=median, p=0.5).confidence_interval(confidence)
    return median, float(interval.low), float(interval.high)


def values_for_interval(confidence: float, limit: int = 1000) -> int:
    """How many values an order-statistic interval of the median needs at ``confidence``
    (6 at 95%: the range of n values covers the median with 1 - 2 / 2**n)."""
    return next(n for n in range(2, limit) if 1 - 2 * 0.5**n >= confidence)


def cell_precision(
    model: str, configuration: str, factors: str, values: Sequence[float], precision: Precision
) -> CellPrecision:
    if not values:
        return CellPrecision(model, configuration, factors, 0, None, None, None, None, False)
    median, low, high = median_interval(values, precision.confidence)
    if math.isnan(low) or math.isnan(high) or median <= 0:
        return CellPrecision(
            model, configuration, factors, len(values), median, None, None, None, False
        )
    half_width = max(median - low, high - median) / median
    return CellPrecision(
        model,
        configuration,
        factors,
        len(values),
        median,
        low,
        high,
        half_width,
        half_width <= precision.ci_half_width,
    )


def evaluate(
    cells: Iterable[tuple[str, str, str]],
    values: Iterable[tuple[str, str, str, float]],
    precision: Precision,
) -> list[CellPrecision]:
    """Precision of every planned cell from (model, configuration, factors, energy_j)."""
    grouped: dict[tuple[str, str, str], list[float]] = {cell: [] for cell in cells}
    for model, configuration, factors, energy_j in values:
        grouped.setdefault((model, configuration, factors), []).append(energy_j)
    return [cell_precision(*cell, found, precision) for cell, found in grouped.items()]


@dataclass(frozen=True)
class StopDecision:
    round: int
    stop: bool
    reason: str  # "target_met" | "max_reached" | "continue" | "below_min"
    cells: list[CellPrecision]

    def sentence(self, precision: Precision) -> str:
        met = [c for c in self.cells if c.met]
        target = (
            f"{precision.confidence:.0%} interval of the median energy within "
            f"+-{precision.ci_half_width:.0%}"
        )
        head = (
            f"round {self.round}: {len(met)} of {len(self.cells)} configurations met the "
            f"target ({target})"
        )
        if self.reason == "target_met":
            return f"{head}; stopping, every configuration is precise enough"
        if self.reason == "max_reached":
            missed = ", ".join(f"{c.label} ({c.precision_text})" for c in self.cells if not c.met)
            tail = f"; not met: {missed}" if missed else ""
            return f"{head}; stopping at max_repetitions = {precision.max_repetitions}{tail}"
        if self.reason == "below_min":
            return f"{head}; continuing to min_repetitions = {precision.min_repetitions}"
        return f"{head}; running another round"


def decide(round_: int, cells: list[CellPrecision], precision: Precision) -> StopDecision:
    """The stop rule, after round ``round_`` has run."""
    if round_ >= precision.max_repetitions:
        reason = "target_met" if all(c.met for c in cells) else "max_reached"
        return StopDecision(round_, True, reason, cells)
    if round_ < precision.min_repetitions:
        return StopDecision(round_, False, "below_min", cells)
    if all(c.met for c in cells):
        return StopDecision(round_, True, "target_met", cells)
    return StopDecision(round_, False, "continue", cells)


def _cells(plan: Plan) -> list[tuple[str, str, str]]:
    return [
        (model, f"{engine}/{provider}", json.dumps(levels, sort_keys=True))
        for model in plan.spec.models
        for engine, provider in plan.configurations
        for levels in plan.factor_levels()
    ]


def evaluate_experiment(
    plan: Plan, experiment_id: str, store: PrecisionStore
) -> list[CellPrecision]:
    """The precision of every cell of a stored experiment (blocking: a worker thread).
    Its finished units are materialised first, so each round reads one row per unit."""
    store.materialise_unit_results(experiment_id)
    rows = store.execute(
        """SELECT model, configuration, factors::VARCHAR,
                  coalesce(energy_global_j, energy_wall_j) AS energy_j
           FROM unit_results_for(?) WHERE status = 'done'
             AND coalesce(energy_global_j, energy_wall_j) IS NOT NULL""",
        [experiment_id],
    )
    values = [
        (str(m), str(c), json.dumps(json.loads(f) if f else {}, sort_keys=True), float(e))
        for m, c, f, e in rows
    ]
    return evaluate(_cells(plan), values, plan.spec.precision)


async def scheduled_units(
    plan: Plan, experiment_id: str, units: Sequence[Unit], daemon: RunnerHost
) -> AsyncIterator[Unit]:
    """The units to run, in order.  With ``repetitions = "auto"``, after the last unit of
    each round (when the runner asks for the next one) the round is evaluated and, when
    the stop rule says so, the rest are skipped.  Fixed repetitions: every unit."""
    if not plan.auto_repetitions:
        for unit in units:
            yield unit
        return
    precision = plan.spec.precision
    for index, unit in enumerate(units):
        yield unit
        last_of_round = index + 1 == len(units) or units[index + 1].repetition != unit.repetition
        if not last_of_round:
            continue
        decision = await _decide_round(plan, experiment_id, unit.repetition, daemon)
        daemon.event("info", f"repetitions auto: {decision.sentence(precision)}")
        if decision.stop:
            skipped = await anyio.to_thread.run_sync(
                daemon.store.skip_pending_units,
                experiment_id,
                f"not needed: the run stopped after round {decision.round} "
                f"({decision.reason.replace('_', ' ')})",
            )
            if skipped:
                daemon.event("info", f"repetitions auto: {skipped} units of later rounds skipped")
            return


async def _decide_round(
    plan: Plan, experiment_id: str, round_: int, daemon: RunnerHost
) -> StopDecision:
    # Every sample up to the round's end is in the file before its units are materialised
    # (each unit's record already waited for its own; this covers the round's end).
    await daemon.samples_through(daemon.edge_ns())

    def work() -> StopDecision:
        cells = evaluate_experiment(plan, experiment_id, daemon.store)
        decision = decide(round_, cells, plan.spec.precision)
        daemon.store.record_precision(
            experiment_id, decision.round, decision.reason, cells, now_ns()
        )
        return decision

    return await anyio.to_thread.run_sync(work)


def precision_summary(store: PrecisionStore, experiment_id: str) -> str | None:
    """What ``repetitions = "auto"`` decided for an experiment, as one paragraph for the
    analysis and the report: the last round, why it stopped, and which configurations met
    the target.  None for an experiment with fixed repetitions (or a store without the
    table, such as an older export)."""
    try:
        _, rows = store.query(
            """SELECT r.round, r.decision, r.model, r.configuration, r.factors::VARCHAR,
                      r.half_width, r.met, e.plan::VARCHAR
               FROM precision_rounds r JOIN experiments e USING (experiment_id)
               WHERE r.experiment_id = ? AND r.round = (
                   SELECT max(round) FROM precision_rounds WHERE experiment_id = ?)
               ORDER BY r.model, r.configuration, r.factors""",
            [experiment_id, experiment_id],
        )
    except Exception:  # no precision_rounds table here
        return None
    if not rows:
        return None
    precision = Precision(**json.loads(rows[0][7]).get("precision", {}))
    cells = [
        CellPrecision(m, c, f or "{}", 0, None, None, None, w, bool(met))
        for _, _, m, c, f, w, met, _ in rows
    ]
    round_, decision = rows[0][0], rows[0][1]
    met = [c for c in cells if c.met]
    missed = [c for c in cells if not c.met]
    if decision == "target_met":
        why = "every configuration met the target"
    elif decision == "max_reached":
        why = f"it reached max_repetitions = {precision.max_repetitions}"
    else:  # the experiment stopped (cancelled, interrupted) before the rule did
        why = "the run ended before the stop rule decided"
    text = (
        f'repetitions = "auto" ran {round_} rounds and stopped because {why} (target: the '
        f"{precision.confidence:.0%} interval of each configuration's median energy within "
        f"+-{precision.ci_half_width:.0%}). Met: "
        + (", ".join(f"{c.label} ({c.precision_text})" for c in met) or "none")
        + "."
    )
    if missed:
        text += (
            " Not met: "
            + ", ".join(f"{c.label} ({c.precision_text})" for c in missed)
            + "; differences involving these are less certain than their tests suggest."
        )
    return text
