"""The TUI's headless model: power from counters and gauges, phase spans, no textual."""

from __future__ import annotations

import subprocess
import sys

import pytest

from greenmon.api.messages import (
    ChannelRow,
    DaemonStatus,
    ExperimentRow,
    Progress,
    Snapshot,
    decode,
)
from greenmon.tui.model import LiveModel, chart_bands, experiment_table, grid_table, unit_lines

CHANNELS = [
    {"channel_id": 1, "probe": "rapl", "name": "package-0.energy_uj", "unit": "uJ",
     "kind": "counter", "domain": "cpu", "estimated": False, "metadata": {"counter_range": 1000}},
    {"channel_id": 2, "probe": "nvml", "name": "gpu0.energy_mj", "unit": "mJ",
     "kind": "counter", "domain": "gpu", "estimated": False, "metadata": {}},
    {"channel_id": 3, "probe": "est", "name": "cpu.power_w", "unit": "W",
     "kind": "gauge", "domain": "cpu", "estimated": True, "metadata": {"estimated": True}},
    {"channel_id": 4, "probe": "nvml", "name": "gpu0.power_limit_mw", "unit": "mW",
     "kind": "gauge", "domain": None, "estimated": False, "metadata": {}},
    {"channel_id": 5, "probe": "host", "name": "cpu.percent", "unit": "%",
     "kind": "gauge", "domain": None, "estimated": False, "metadata": {}},
]  # fmt: skip
S = 1_000_000_000


def model_with(*snaps: dict[str, object], sources: tuple[int, ...] = (1, 2)) -> LiveModel:
    """``sources``: the channels the daemon marks as answering for their domain (the
    store's energy_sources view: RAPL before the estimate when both measure the CPU)."""
    channels = [
        decode({**c, "energy_source": c["channel_id"] in sources}, ChannelRow) for c in CHANNELS
    ]
    model = LiveModel()
    model.set_status(
        DaemonStatus(
            t_ns=0, session_id="s", channels=channels, pid=1, db_path="d", socket_path="s"
        )
    )
    for snap in snaps:
        model.ingest(decode(snap, Snapshot))  # as the client decodes the stream's lines
    return model


def test_counter_power_is_wrap_aware_and_a_reset_without_range_gives_no_point() -> None:
    model = model_with(
        {"t_ns": 1 * S, "values": [[1, 1 * S, 900.0], [2, 1 * S, 5000.0]]},
        # rapl wrapped at 1000 uJ: 900 -> 100 is +200 uJ in 1 s
        {"t_ns": 2 * S, "values": [[1, 2 * S, 100.0], [2, 2 * S, 7000.0]]},
        # the same readings again (no new sample): no new point
        {"t_ns": 3 * S, "values": [[1, 2 * S, 100.0], [2, 2 * S, 7000.0]]},
        # the GPU counter went backwards with no range: a reset, no point
        {"t_ns": 4 * S, "values": [[1, 4 * S, 500.0], [2, 4 * S, 10.0]]},
    )
    series = {label.split(" (")[0]: ws for label, _, ws in model.chart_series()}
    assert series["CPU package"] == pytest.approx([200e-6, 200e-6])
    assert series["GPU"] == pytest.approx([2.0])


def test_estimated_gauges_are_marked_and_domainless_power_is_left_off() -> None:
    values = [[3, S, 12.5], [4, S, 250000.0], [5, S, 40.0]]
    model = model_with({"t_ns": S, "values": values}, sources=(3,))
    labels = [label for label, _, _ in model.chart_series()]
    assert labels == ["CPU package (est cpu.power_w) ~estimated"]
    # a channel that is not the domain's source is never charted beside it
    assert model_with({"t_ns": S, "values": values}).chart_series() == []
    assert model.gauges() == {"CPU": 40.0, "RAM": None, "GPU": None, "GPU memory": None}


def test_phase_spans_follow_progress() -> None:
    def snap(t_s: int, phase: str | None) -> dict[str, object]:
        return {"t_ns": t_s * S, "values": [[3, t_s * S, 1.0]], "progress": {"phase": phase}}

    model = model_with(snap(1, "warmup"), snap(2, "warmup"), snap(3, "measure"), snap(5, None))
    assert model.phase_spans_s() == [("warmup", -4.0, -2.0), ("measure", -2.0, 0.0)]


def test_unit_and_grid_text() -> None:
    progress = {
        "status": "running", "plan_name": "p", "experiment_id": "e", "unit_index": 2,
        "units_total": 4, "unit": {"model": "m", "configuration": "onnx/cpu", "repetition": 1},
        "phase": "cooldown_before", "phase_remaining_s": 75, "request_index": 0,
        "requests_total": 0, "eta_s": 3700,
        "grid": [{"model": "m", "configuration": "onnx/cpu", "done": 1, "failed": 1,
                  "running": 1, "total": 3}],
    }  # fmt: skip
    typed = decode(progress, Progress)  # as the model decodes the wire's JSON
    lines = unit_lines(typed)
    assert lines[1] == "unit 2/4: m  onnx/cpu  repetition 1"
    assert lines[2] == "phase cooldown_before (1m15s left)"
    assert lines[3] == "plan ETA 1h01m40s"
    assert grid_table(typed) == (["onnx/cpu"], [("m", ["1/3 done 1 failed ▶ running"])])


def test_core_and_model_modules_do_not_import_textual() -> None:
    code = (
        "import sys, greenmon.api, greenmon.tui.model, greenmon.tui.embedded, "
        "greenmon.commands.status; print('textual' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_chart_bands_follow_the_axis_the_samples_span() -> None:
    """Bands are judged against the chart's own x axis (oldest sample to 0), not the
    model's 300 s window: 12 s after start a 3 s cooldown is drawn and labelled, while
    a phase narrower than a column is left out, and a band is clipped to the axis."""
    spans = [
        ("load", -20.0, -9.0),  # began before the oldest sample: clipped to -12
        ("cooldown_before", -9.0, -6.0),
        ("warmup", -6.0, -5.95),  # 0.05 s: under a column (12 s / 80)
        ("measure", -5.95, 0.0),
    ]
    bands = chart_bands(spans, oldest_s=-12.0, columns=80)
    assert [(p, s, e) for p, s, e, _ in bands] == [
        ("load", -12.0, -9.0), ("cooldown_before", -9.0, -6.0), ("measure", -5.95, 0.0),
    ]  # fmt: skip
    assert all(labelled for *_, labelled in bands)
    # five minutes of axis: a column is 3.75 s, so the 3 s cooldown is not drawn, and the
    # 11 s load and 6 s measure are drawn without their labels (5 and 8 columns needed)
    wide = chart_bands(spans, oldest_s=-300.0, columns=80)
    assert [(p, labelled) for p, _, _, labelled in wide] == [("load", False), ("measure", False)]


def test_the_running_experiment_is_listed_with_its_live_counts_before_the_file_lists_it() -> None:
    wire = {
        "experiment_id": "e1", "plan_name": "p", "status": "running", "units_total": 6,
        "grid": [{"model": "m", "configuration": "a", "done": 2, "failed": 1, "total": 3},
                 {"model": "m", "configuration": "b", "done": 1, "failed": 0, "total": 3}],
        "queue": [{"experiment_id": "e2", "plan_name": "q", "units_done": 0, "units_total": 2}],
    }  # fmt: skip
    progress = decode(wire, Progress)
    assert experiment_table(progress, []) == [
        ("e1", "p", "running", "3", "1", "6"), ("e2", "q", "queued", "0", "-", "2")]
    # once the file lists it, its row is not repeated (the live counts are newer)
    stale = {"experiment_id": "e1", "plan_name": "p", "status": "running", "units_done": 0,
             "units_failed": 0, "units_total": 6}  # fmt: skip
    earlier = {"experiment_id": "e0", "plan_name": "old", "status": "done", "units_done": 2,
               "units_failed": 0, "units_total": 2}  # fmt: skip
    listed = [decode(stale, ExperimentRow), decode(earlier, ExperimentRow)]
    rows = experiment_table(progress, listed)
    assert [r[0] for r in rows] == ["e1", "e2", "e0"] and rows[0][3] == "3"
    assert experiment_table(None, listed[1:]) == [("e0", "old", "done", "2", "0", "2")]
