"""The words of an analysis: each sentence a pure function of the figures it states.

greenmon/analysis/summaries.py computes the figures (medians, savings, p-values, effect
sizes) and hands them here; nothing in this module reads a table or changes its inputs, so
a sentence can be tested from its figures alone.

Terms:
- *finding*: one variable at one set of factor levels: the configuration with the best
  median against its *reference* (the baseline engine), over one or several models.
- *alpha*: the significance level the tests used; a sentence names it as a percentage
  ("not significant at the 1% level") and counts a pair as significant when ``p < alpha``.
- effects are oriented reference-versus-best: positive means the reference used more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from greenmon.analysis.data import configuration_label


@dataclass(frozen=True)
class Finding:
    """The figures one finding states (a row of analysis_summary for a lower-is-better
    variable such as energy or time)."""

    noun: str  # the variable in words: "energy", "time"
    where: str  # " at <factor levels>", or "" without factors
    best: str  # configuration with the lowest median over per-model medians
    reference: str  # what the best is compared with
    models: int  # models that measured the variable at these levels
    alpha: float
    # One model: its saving; several: the median saving over models (None: not computable).
    saving_pct: float | None = None
    # Several models: "from x% up to y%" over ``range_models`` models; None: no range.
    range_text: str | None = None
    range_models: int = 0
    # Best against reference, Holm-adjusted where the route adjusts; one per tested model.
    p_values: tuple[float, ...] = ()
    effect_kind: str = "Cliff's delta"
    effects: tuple[float, ...] = ()  # one per p-value, oriented reference-versus-best

    @property
    def significant_models(self) -> int:
        """Tested models where the best and the reference differ at ``alpha``."""
        return sum(1 for p in self.p_values if p < self.alpha)

    @property
    def p_value(self) -> float | None:
        """The p-value the finding reports: one model's, or the largest over models."""
        if not self.p_values:
            return None
        return self.p_values[0] if self.models == 1 else max(self.p_values)

    @property
    def effect_size(self) -> float | None:
        """The effect the finding reports: one model's, or the median over models."""
        if not self.effects:
            return None
        return self.effects[0] if self.models == 1 else float(np.median(self.effects))


def level_text(alpha: float) -> str:
    """A significance level as a person reads it: 0.05 -> "5%", 0.001 -> "0.1%"."""
    return f"{alpha * 100:g}%"


def format_p(p: float) -> str:
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}"


def finding_sentence(finding: Finding) -> str:
    """The finding in one sentence: the saving, its test and effect, and whether to act."""
    f = finding
    best_label, ref_label = configuration_label(f.best), configuration_label(f.reference)
    if f.models == 1:
        text = f"Here{f.where}, {best_label} used "
        text += (
            f"{f.saving_pct:.0f}% less {f.noun} than {ref_label}"
            if f.saving_pct is not None
            else f"the least {f.noun}; {ref_label} is the reference"
        )
        if not f.p_values:
            return text + " (not tested: see the notes)."
        p = f.p_values[0]
        text += f"; {format_p(p)}, {f.effect_kind} {f.effects[0]:.2f}."
        if not p < f.alpha:
            # a practitioner must not act on a difference the test could not confirm
            text += (
                f" The difference is not significant at the {level_text(f.alpha)} level: do "
                "not act on it yet; more repetitions would tell."
            )
        return text
    if f.range_text is None:
        return f"{best_label} had the lowest median {f.noun}{f.where} across {f.models} models."
    text = (
        f"Across {f.range_models} models{f.where}, {best_label} used the least {f.noun}: "
        f"{f.range_text} less than {ref_label} (median {f.saving_pct:.0f}%)"
    )
    if not f.p_values:
        return text + "; not tested (see the notes)."
    return text + (
        f"; the difference was significant in {f.significant_models} of {len(f.p_values)} "
        f"models (median {f.effect_kind} {f.effect_size:.2f})."
    )


def only_one_sentence(configuration: str, noun: str, median: float, unit: str, where: str) -> str:
    """When a single configuration measured the variable: its median, nothing to compare."""
    return (
        f"Only {configuration_label(configuration)} was measured{where}; "
        f"its median {noun} was {median:.4g} {unit}."
    )


def better_sentence(
    noun: str, best: str, reference: str, best_median: float, reference_median: float,
    where: str, *, tied: int = 0,
) -> str:  # fmt: skip
    """For a variable that is better higher (quality): the best and its reference's medians;
    when all ``tied`` configurations share one median (every answer wrong, say), a tie, not a
    best."""
    if tied:
        return (
            f"All {tied} configurations had the same median {noun}{where} ({best_median:.3g}): "
            "none was better. See the quality table for the tests."
        )
    return (
        f"{configuration_label(best)} had the highest median {noun}{where} "
        f"({best_median:.3g}); {configuration_label(reference)} had "
        f"{reference_median:.3g}. See the quality table for the tests."
    )


def models_sentence(differ: int, tested: int, models: int) -> str:
    """How many of the ``tested`` models (of ``models``) had every pair of configurations
    differ significantly (``differ``)."""
    untested = models - tested
    suffix = f" ({untested} models not tested)" if untested else ""
    if differ == tested:
        return f"All configurations differ significantly in all {tested} models{suffix}."
    if differ == 0:
        return f"No model shows all configurations differing significantly{suffix}."
    return (
        f"All configurations differ significantly, except for {tested - differ} of "
        f"{tested} models{suffix}."
    )


def tradeoff_sentence(
    factor: str, level: str, reference_level: str, configuration: str, energy_change: str,
    time_change: str,
) -> str:  # fmt: skip
    """Energy against time at one factor level (levels as JSON text) versus the first; the
    changes as decision.change_phrase writes them ("12.3% less", "4.5 J more")."""
    return (
        f"At {factor} = {json.loads(level)}, {configuration} used {energy_change} energy "
        f"and took {time_change} time than at {factor} = {json.loads(reference_level)}."
    )


def quality_sentence(
    what: str, versus: str, energy_change: str, q_change: float | None, kind: str,
    tolerance: float,
) -> str:  # fmt: skip
    """Energy and quality of ``what`` against ``versus``, with its verdict ``kind``; the
    energy change as decision.change_phrase writes it."""
    text = f"{what} used {energy_change} energy than {versus}"
    if q_change is None:
        return text + "; its quality was not scored."
    text += f", with quality {q_change:+.3f} (0-1 scale)"
    if kind == "trade-off":
        return text + f": a trade-off, not a win (it lost more than {tolerance} quality)."
    if kind == "win":
        return text + f": a win (quality within {tolerance} or better)."
    return text + "."


def trade_off_note(
    sentence: str, best: str, reference: str, quality_change: float, tolerance: float
) -> str:
    """An energy finding whose winner lost quality beyond ``tolerance``, saying so."""
    return (
        f"{sentence} But this is a trade-off, not a win: "
        f"{configuration_label(best)}'s median quality was {quality_change:+.3f} "
        f"against {configuration_label(reference)} (tolerance {tolerance})."
    )


def _difference(
    best: str, other: str, diff: float, pct: float | None, p: float | None, unit: str,
    alpha: float, *, what: str,
) -> str:  # fmt: skip
    """"8.1% less than the next best, <TORCH, CPU> (p = 0.012)" or, when a percentage would
    mislead, the difference in ``unit``."""
    amount = f"{pct:.1f}% less" if pct is not None else f"{diff:.4g} {unit} less"
    text = f"{amount} than {what}, {configuration_label(other)}"
    if p is None:
        return text + " (not tested)"
    if p < alpha:
        return text + f" ({format_p(p)}, significant at the {level_text(alpha)} level)"
    return text + f" ({format_p(p)}: not significant at the {level_text(alpha)} level)"


def answer_sentence(row: dict[str, object], alpha: float, where: str = "") -> str:
    """One scope's answer: the least-energy configuration, its median and interval, and how
    much less it used than the next best and than the reference (``decision.answers``)."""

    def number(key: str) -> float:
        value = row.get(key)
        return float(value) if isinstance(value, int | float) else float("nan")

    def optional(key: str) -> float | None:
        value = row.get(key)
        return float(value) if isinstance(value, int | float) and value == value else None

    unit = str(row["unit"])
    best = str(row["best"])
    text = (
        f"{row['model']}{where}: {configuration_label(best)} used the least, "
        f"{number('best_median'):.4g} {unit} (95% interval {number('best_low'):.4g} to "
        f"{number('best_high'):.4g})"
    )
    parts: list[str] = []
    nxt, ref = row.get("next"), row.get("reference")
    if isinstance(nxt, str):
        parts.append(_difference(best, nxt, number("next_diff"), optional("next_pct"),
                                 optional("next_p"), unit, alpha,
                                 what="the next best"))  # fmt: skip
    if isinstance(ref, str) and ref != nxt:
        parts.append(_difference(best, ref, number("reference_diff"),
                                 optional("reference_pct"), optional("reference_p"), unit,
                                 alpha, what="the reference"))  # fmt: skip
    if not parts:
        return text + "; it was the only configuration measured."
    text += "; " + "; and ".join(parts) + "."
    note = row.get("percent_note")
    if isinstance(note, str):
        text += f" Differences are {note}."
    return text


def pareto_sentence(model: str, where: str, optimal: list[tuple[str, bool, bool]],
                    total: int) -> str:  # fmt: skip
    """Which configurations of one scope are Pareto-optimal (``optimal``: configuration,
    whether it has the least energy, whether it has the lowest latency)."""
    names = []
    for configuration, least_energy, fastest in optimal:
        roles = [r for r, flag in (("least energy", least_energy), ("lowest latency", fastest))
                 if flag]  # fmt: skip
        names.append(configuration_label(configuration) + (f" ({', '.join(roles)})" if roles
                                                           else ""))  # fmt: skip
    if len(optimal) == 1:
        return (f"{model}{where}: {names[0]} is the only Pareto-optimal configuration of "
                f"{total}: none other is better on any criterion.")  # fmt: skip
    return (f"{model}{where}: Pareto-optimal: {', '.join(names)}; each of the other "
            f"{total - len(optimal)} configurations is beaten on every criterion by one of "
            "them.")  # fmt: skip
