"""Which figures are estimated, and
what the findings, the tables, the TUI's results and `status` say about them.

The journey through the `greenmon` command is tests/journeys/test_estimated.py; these
are the rules behind it, fast.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from greenmon.analysis.estimated import label_result, model_text
from greenmon.analysis.stats import analyze_frame
from greenmon.api.messages import Progress, decode
from greenmon.commands.status import result_lines
from greenmon.estimates import FIGURE_DOMAINS, is_estimated, legend, mark
from greenmon.tui.model import result_rows

SOURCE = {"domain": "cpu", "probe": "estimate", "channel": "cpu.power_w",
          "model": "linear: idle_w + (tdp_w - idle_w) * utilisation",
          "tdp_w": 7.0, "idle_w": 1.48}  # fmt: skip


def frame(estimated: list[bool]) -> pd.DataFrame:
    """One model, two configurations, three units each; CPU energy estimated in the units
    that ``estimated`` says (in unit order), GPU energy measured in all."""
    rows: list[dict[str, Any]] = []
    for unit_id, flag in enumerate(estimated):
        configuration = "torch/cpu" if unit_id % 2 else "onnx/cpu"
        scale = 2.0 if configuration == "torch/cpu" else 1.0
        rows.append(
            {"experiment_id": "e", "unit_id": unit_id, "model": "tiny",
             "engine": configuration.split("/")[0], "provider": "cpu",
             "configuration": configuration, "repetition": unit_id // 2, "status": "done",
             "energy_cpu_j": scale * (10 + unit_id), "energy_gpu_j": 5.0 + unit_id % 3,
             "energy_global_j": scale * (10 + unit_id) + 5.0 + unit_id % 3,
             "duration_s": scale * (1 + unit_id / 10), "flags": [],
             "estimated_domains": ["cpu"] if flag else None}
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_a_figure_is_estimated_when_any_of_its_domains_is() -> None:
    assert is_estimated("energy_global_j", {"cpu"}) and is_estimated("j_per_token", {"cpu"})
    assert not is_estimated("energy_gpu_j", {"cpu"}) and not is_estimated("duration_s", {"cpu"})
    assert not is_estimated("energy_cpu_j", set())
    assert mark("1.5", "median_energy_j", ["cpu"]) == "1.5 (estimated)"
    assert mark("1.5", "median_duration_s", ["cpu"]) == "1.5"
    assert FIGURE_DOMAINS["energy_wall_j"] == ("wall",)
    assert legend([]) == "" and "CPU time, not by energy" in legend(["cpu"])


def test_findings_on_estimated_cpu_energy_say_what_it_means() -> None:
    data = frame([True] * 6)
    result = analyze_frame(data, "e", workers=1)
    label_result(result, data, [SOURCE])
    sentences = dict(zip(result.summary["variable"], result.summary["sentence"], strict=True))
    for variable in ("energy_global_j", "energy_cpu_j"):
        assert "This is estimated, not measured" in sentences[variable]
        assert "ranks configurations by CPU time, not by energy" in sentences[variable]
        assert "in 6 of 6" not in sentences[variable]
    for variable in ("energy_gpu_j", "duration_s"):
        assert "estimated" not in sentences[variable]
    medians = result.medians
    assert set(medians[medians["variable"] == "energy_gpu_j"]["estimated"]) == {False}
    assert set(medians[medians["variable"] == "energy_cpu_j"]["estimated"]) == {True}
    as_json = result.to_json()
    assert as_json["estimated"]["variables"] == {"energy_global_j": ["cpu"], "energy_cpu_j": ["cpu"]}
    assert as_json["estimated"]["domains"]["cpu"]["sources"] == [SOURCE]
    (note,) = [n for n in result.notes if n.title == "Estimated, not measured"]
    assert "CPU in all 6 units" in note.message
    assert model_text([SOURCE]) in note.message and "tdp_w = 7 W" in note.message


def test_some_units_estimated_are_counted_and_none_estimated_says_nothing() -> None:
    data = frame([True, True, False, False, False, False])
    result = analyze_frame(data, "e", workers=1)
    label_result(result, data, [SOURCE])
    sentence = result.summary.set_index("variable").loc["energy_cpu_j", "sentence"]
    assert "for CPU energy in 2 of 6 units" in sentence
    assert result.to_json()["estimated"]["domains"]["cpu"]["units"] == 2

    measured = frame([False] * 6)
    result = analyze_frame(measured, "e", workers=1)
    label_result(result, measured, [])
    assert not any("estimated" in s for s in result.summary["sentence"])
    assert result.to_json()["estimated"] == {"domains": {}, "variables": {}, "legend": ""}
    assert not any(n.title == "Estimated, not measured" for n in result.notes)


def test_live_results_mark_estimated_energy_in_the_tui_and_status() -> None:
    progress = {"results": [
        {"configuration": "onnx/cpu", "units": 3, "median_energy_j": 12.5,
         "median_duration_s": 1.25, "median_j_per_token": 0.125, "flags": ["estimated"],
         "estimated_domains": ["cpu"]},
        {"configuration": "torch/cpu", "units": 3, "median_energy_j": 20.0,
         "median_duration_s": 2.0, "median_j_per_token": 0.2, "flags": [],
         "estimated_domains": []},
    ]}  # fmt: skip
    estimated, measured = result_rows(decode(progress, Progress).results)
    assert estimated[2:5] == ("12.5 (estimated)", "1.25", "0.1250 (estimated)")
    assert measured[2:5] == ("20.0", "2.00", "0.2000")
    lines = result_lines(decode(progress, Progress))
    assert lines[0].endswith("median 12.5 J (estimated), 0.125 J/token (estimated)")
    assert "estimated" not in lines[1]
