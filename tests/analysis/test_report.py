"""Database round trip: unit_results view -> analyze -> tables, report, export, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from greenmon.analysis.data import load_results
from greenmon.analysis.report import REPORT_COLUMNS, cell, write_report
from greenmon.analysis.tables import analyze
from greenmon.cli import main
from greenmon.store import Store
from tests.support.synthetic import synthetic_results, write_synthetic_experiment

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _truth() -> pd.DataFrame:
    return synthetic_results(
        models=2, configurations=("torch/cpu", "onnx/cpu", "torch/cuda"), repetitions=5,
        gpu=True, seed=7,
    )  # fmt: skip


@pytest.fixture(scope="module")
def experiment_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("analysis") / "exp.duckdb"
    truth = _truth()
    with Store.open(path) as store:
        write_synthetic_experiment(store, truth, plan_toml="[plan]\nrepetitions = 5\n")
    return path


@pytest.fixture(scope="module")
def report_dir(experiment_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    write_report(experiment_db, None, out)
    return out


def test_view_results_match_truth_and_tables_are_replaced(experiment_db: Path) -> None:
    with Store.open(experiment_db) as store:
        measured = load_results(store, "synthetic").set_index("unit_id").sort_index()
        result = analyze(store, workers=1)
        again = analyze(store, result.experiment_id, workers=1)
        _, rows = store.query(
            "SELECT count(*) FROM analysis_tests WHERE experiment_id = ?", [result.experiment_id]
        )
    truth = _truth().set_index("unit_id").sort_index()
    for column in ("energy_global_j", "energy_gpu_j", "dynamic_cpu_j", "energy_wall_j",
                   "duration_s", "j_per_token", "cpu_percent", "gpu_mem_used_percent"):
        assert measured[column].to_numpy(dtype=float) == pytest.approx(
            truth[column].to_numpy(dtype=float), rel=1e-6, abs=1e-6
        ), column  # fmt: skip
    assert rows[0][0] == len(again.tests) > 0
    assert "energy_gpu_j" in result.variables and not result.skipped_variables


def test_analyze_json_and_html_tables_agree(experiment_db: Path, report_dir: Path, capsys:
                                            pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--db", str(experiment_db), "--json", "--workers", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    tables = _html_tables((report_dir / "report.html").read_text(encoding="utf-8"))
    for name in ("tests", "posthoc", "reconciliation"):
        columns = REPORT_COLUMNS[name]
        # post-hoc differences are written one way, as "lower by" (checked below)
        keep = [i for i, c in enumerate(columns) if c != "diff_pct"]
        expected = [[cell(r[columns[i]]) for i in keep] for r in data["tables"][name]]
        header = ["diff_pct" if c == "lower_by" else c for c in tables[name][0]]
        assert header == columns
        # the report leaves out variables whose medians repeat another's (shown once)
        shown = [[row[i] for i in keep] for row in tables[name][1:]]
        assert shown and all(row in expected for row in shown), name
    lower_by = [row[tables["posthoc"][0].index("lower_by")] for row in tables["posthoc"][1:]]
    assert all(0 <= float(v.rstrip("%")) <= 100 for v in lower_by if v.endswith("%"))
    # savings one way: only the winner of each variable against the others, as in --json
    winners = {(r["variable"], r["factor_key"]): r["best"] for r in data["tables"]["summary"]}
    expected = [[cell(r[c]) for c in REPORT_COLUMNS["savings_range"]]
                for r in data["tables"]["savings_range"]
                if winners.get((r["variable"], r["factor_key"])) == r["configuration"]]
    assert tables["savings_range"][0] == REPORT_COLUMNS["savings_range"]
    assert tables["savings_range"][1:]
    for row in tables["savings_range"][1:]:
        if "no percentage" in row[5]:  # a near-zero baseline: the range in units instead
            assert any(row[:5] == e[:5] for e in expected) and row[6] == "", row
        else:
            assert row in expected, row
    assert len(tables["savings_range"]) - 1 < len(data["tables"]["savings_range"]) / 2
    markdown = (report_dir / "report.md").read_text(encoding="utf-8")
    shown = {r[0] for r in tables["tests"][1:]}
    for row in data["tables"]["summary"]:
        if row["variable"] in shown:
            assert row["sentence"] in markdown


def test_report_is_self_contained(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") >= 5
    assert "src=" not in page and "<script" not in page
    assert "synthetic-host" in page and "repetitions = 5" in page
    assert (report_dir / "plots" / "power_traces.png").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
               f"--user-data-dir={tmp_path / 'profile'}",
               (report_dir / "report.html").as_uri()]  # fmt: skip
    dom = subprocess.run(command, capture_output=True, text=True, timeout=90, check=True).stdout
    assert dom.count("<svg") >= 5
    assert "data-plot=\"box_energy_global_j\"" in dom
    tables = _html_tables(dom)
    assert {"tests", "savings_range", "environment"} <= set(tables)
    assert len(tables["tests"]) > 1
    shot = tmp_path / "page.png"
    subprocess.run([*command[:-2], f"--screenshot={shot}", "--window-size=1200,3000",
                    command[-1]], capture_output=True, timeout=90, check=True)  # fmt: skip
    assert shot.stat().st_size > 20_000  # a blank page is a few kB


def test_export_parquet_partitions_by_session(experiment_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert main(["export", "--db", str(experiment_db), "--out", str(out)]) == 0
    sessions = list((out / "samples").glob("session_id=*"))
    assert len(sessions) == 1
    con = duckdb.connect()
    samples = con.execute(
        f"SELECT count(*) FROM read_parquet('{out}/samples/**/*.parquet', hive_partitioning=1)"
    ).fetchone()
    results = con.execute(
        f"SELECT count(DISTINCT session_id) FROM read_parquet('{out}/unit_results/**/*.parquet',"
        " hive_partitioning=1)"
    ).fetchone()
    with Store.open(experiment_db, read_only=True) as store:
        _, rows = store.query("SELECT count(*) FROM samples")
    assert samples is not None and samples[0] == rows[0][0]
    assert results == (1,)
    assert main(["export", "--db", str(experiment_db), "--out", str(tmp_path / "csv"),
                 "--format", "csv"]) == 0  # fmt: skip
    assert (tmp_path / "csv" / "units.csv").read_text().startswith("experiment_id,")


def test_unknown_experiment_is_a_clear_error(experiment_db: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--db", str(experiment_db), "--experiment", "nope"]) == 2
    assert "no units for experiment 'nope'" in capsys.readouterr().err


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._name: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._name = dict(attrs).get("data-table")
            if self._name:
                self.tables[self._name] = []
        elif tag == "tr" and self._name:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._name:
            self.tables[self._name].append(self._row)
            self._row = None
        elif tag == "table":
            self._name = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _html_tables(page: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables
