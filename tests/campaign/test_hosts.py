"""The host as a block: a synthetic campaign on two hosts, one 20% faster everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmon.analysis.hosts import (
    HardwareDiffersNote,
    MultipleHostsNote,
    SingleHostConfigurationNote,
)
from greenmon.analysis.stats import analyze_frame
from greenmon.analysis.tables import analyze
from greenmon.campaign import merge
from greenmon.store import Store
from tests.support.synthetic import synthetic_campaign, write_synthetic_experiment

TRUTH_J = {"onnx/cpu": 80.0, "torch/cpu": 100.0, "openvino/cpu": 130.0}
TRUTH_ORDER = "onnx/cpu < torch/cpu < openvino/cpu"


def _campaign(seed: int = 4):  # type: ignore[no-untyped-def]
    return synthetic_campaign(
        {"node-a": 1.0, "node-b": 0.8}, models=2, configurations=tuple(TRUTH_J),
        energy_j=TRUTH_J, repetitions=10, relative_sd=0.05, seed=seed,
    )  # fmt: skip


def test_two_host_frame_ranks_as_the_truth_and_reports_the_host_effect() -> None:
    result = analyze_frame(_campaign(), "campaign", variables=["energy_global_j", "duration_s"])
    assert any(isinstance(n, MultipleHostsNote) for n in result.notes)
    tests = result.host_tests[result.host_tests["variable"] == "energy_global_j"]
    assert len(tests) == 2 and set(tests["ranking"]) == {TRUTH_ORDER}
    assert tests["significant"].all()
    effects = result.host_effects[result.host_effects["variable"] == "duration_s"]
    assert set(effects["host"]) == {"node-b"} and set(effects["reference"]) == {"node-a"}
    assert effects["ratio"].between(0.75, 0.85).all() and effects["significant"].all()
    # per-host medians side by side: every configuration on both hosts
    medians = result.host_medians[result.host_medians["variable"] == "energy_global_j"]
    assert len(medians) == 2 * 3 * 2 and set(medians["n"]) == {5}


def test_equal_hosts_show_no_host_effect() -> None:
    same = synthetic_campaign({"node-a": 1.0, "node-b": 1.0}, models=2,
                              configurations=tuple(TRUTH_J), energy_j=TRUTH_J, seed=5)  # fmt: skip
    result = analyze_frame(same, "same", variables=["energy_global_j"])
    assert result.host_effects["ratio"].between(0.95, 1.05).all()
    assert not result.host_effects["significant"].any()


def test_one_host_adds_nothing_and_lonely_configurations_are_named() -> None:
    frame = _campaign()
    single = analyze_frame(frame.assign(host="node-a"), "one", variables=["energy_global_j"])
    assert single.host_tests.empty and not any(
        isinstance(n, MultipleHostsNote) for n in single.notes
    )
    lonely = frame[~((frame["configuration"] == "openvino/cpu") & (frame["host"] == "node-b"))]
    result = analyze_frame(lonely, "lonely", variables=["energy_global_j"])
    note = next(n for n in result.notes if isinstance(n, SingleHostConfigurationNote))
    assert "openvino/cpu" in note.message and "torch/cpu" not in note.message


@pytest.mark.slow
def test_merged_two_host_campaign_from_files(tmp_path: Path) -> None:
    """Each host's shard written as a greenmon file, merged, analysed from the database."""
    frame = _campaign()
    files = []
    hardware = {"node-a": "Synthetic CPU @ 3.0GHz", "node-b": "Synthetic CPU @ 3.6GHz"}
    for host, part in frame.groupby("host"):
        path = tmp_path / f"{host}.duckdb"
        with Store.open(path) as store:
            write_synthetic_experiment(
                store, part.drop(columns="host"), samples_per_channel_unit=12,
                host={"host": host, "cpu_model": hardware[str(host)]},
            )  # fmt: skip
        files.append(path)
    merge(files, tmp_path / "campaign.duckdb")
    with Store.open(tmp_path / "campaign.duckdb") as store:
        result = analyze(store)
        _, stored = store.query("SELECT DISTINCT ranking FROM analysis_host_tests "
                                "WHERE variable = 'energy_global_j'")  # fmt: skip
    assert stored == [(TRUTH_ORDER,)]
    assert any(isinstance(n, HardwareDiffersNote) and "3.6GHz" in n.message
               for n in result.notes)  # fmt: skip
    effects = result.host_effects[result.host_effects["variable"] == "energy_global_j"]
    assert effects["ratio"].between(0.75, 0.85).all()


def test_report_shows_hosts_side_by_side_with_the_method(tmp_path: Path) -> None:
    from greenmon.analysis.report import _hosts_markdown, host_median_table

    result = analyze_frame(_campaign(), "campaign", variables=["energy_global_j"])
    columns, rows = host_median_table(result)
    assert columns[-2:] == ["node-a", "node-b"] and len(rows) == 6
    for row in rows:  # node-b's median is about 0.8 of node-a's, configuration by configuration
        assert 0.72 < row[-1] / row[-2] < 0.88
    text = "\n".join(_hosts_markdown(result))
    assert "Stouffer" in text and "Whitlock 2005" in text and "node-b" in text
