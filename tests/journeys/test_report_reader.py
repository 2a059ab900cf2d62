"""The report as a reader meets it, and the commands a decision is taken with.

An experiment shaped like `greenmon demo`'s (one model, four CPU configurations, three
repetitions, no GPU, no wattmeter) goes through `greenmon report --config` with a carbon
intensity and a price, then headless Chromium renders the page at 1280 px as a person's
browser would; `greenmon recommend` answers a latency bound, and says so when nothing
meets it.  Each command runs as a separate process.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from greenmon.store import Store
from tests.journeys.test_journeys import greenmon
from tests.support.synthetic import synthetic_results, write_synthetic_experiment

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The demo's configurations with medians as far apart as the demo's (6 J to 290 J): a
# both-ways savings table would print 4,400%.
ENERGY_J = {"torch/cpu": 170.0, "onnx/cpu": 33.0, "openvino/cpu": 6.4, "torchscript/cpu": 290.0}
CONFIG = """\
[report]
carbon_intensity_g_per_kwh = 250
carbon_intensity_source = "grid average, example"
price_per_kwh = 0.30
currency = "EUR"
"""


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    truth = synthetic_results(models=1, configurations=tuple(ENERGY_J), repetitions=3,
                              energy_j=ENERGY_J, wall=False, seed=3)  # fmt: skip
    with Store.open(path) as store:
        write_synthetic_experiment(store, truth, plan_toml="[plan]\nrepetitions = 3\n")
    return path


@pytest.fixture(scope="module")
def report(demo_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    (folder / "greenmon.toml").write_text(CONFIG)
    greenmon("report", "--db", str(demo_db), "--config", str(folder / "greenmon.toml"),
             "--out", str(folder / "out"), cwd=folder)  # fmt: skip
    return folder / "out"


class _Page(HTMLParser):
    """Tables (body rows of cell text) and visible text, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self.order: list[str] = []  # "figure" / "table" as they come
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("svg", "style"):
            self._skip += 1
        if tag == "figure":
            self.order.append("figure")
        elif tag == "table":
            self.order.append("table")
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("svg", "style"):
            self._skip -= 1
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_the_report_leads_with_the_answer_and_has_no_number_a_reader_cannot_use(
    report: Path,
) -> None:
    page = _page(report / "report.html")
    assert page.order.index("figure") < page.order.index("table")
    text = " ".join(page.text)
    percentages = [float(p.replace(",", "")) for p in re.findall(r"(-?\d[\d,]*\.?\d*)\s*%", text)]
    assert percentages and max(abs(p) for p in percentages) < 1000
    bodies = [tuple(map(tuple, t[1:])) for t in page.tables if len(t) > 1]
    assert len(bodies) == len(set(bodies)), "two tables carry identical cells"
    # one model: no per-size-category table beside the per-model one
    assert "Medians per size category" not in text
    assert "<OPENVINO, CPU> used the least" in text
    # the trade-off names its Pareto-optimal configurations
    assert re.search(r"Pareto-optimal[^.]*<OPENVINO, CPU>", text)
    # carbon and cost, with the intensity's source
    assert "co2e_g_per_unit" in text and "cost_per_1k_requests" in text
    assert "grid average, example" in text and "0.3 EUR/kWh" in text
    # paper-ready files
    assert (report / "tables" / "answers.tex").read_text().count("\\toprule") == 1
    for suffix in ("svg", "pdf", "png"):
        assert (report / "plots" / f"answer.{suffix}").stat().st_size > 1000
    assert (report / "plots" / "tradeoff.pdf").is_file()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_the_report_fits_a_1280_px_window(report: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    shot = tmp_path / "page.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,12000",
         f"--screenshot={shot}", (report / "report.html").as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"))
    ink_rows = np.where((pixels < 250).any(axis=1))[0]
    ink_columns = np.where((pixels < 250).any(axis=0))[0]
    # the page's real height: the last row with ink (the window is taller)
    assert 1000 < ink_rows.max() < 8000
    # nothing runs to the window's right edge (the body ends 40 px before it; a table wider
    # than that scrolls in its own box)
    assert ink_columns.max() < 1270


def test_recommend_answers_a_latency_bound_and_says_when_nothing_meets_it(
    demo_db: Path, tmp_path: Path
) -> None:
    done = greenmon("recommend", "--db", str(demo_db), "--max-p90-s", "100", "--json",
                    cwd=tmp_path)  # fmt: skip
    answer = json.loads(done.stdout)
    (choice,) = answer["choices"]
    assert choice["configuration"] == "openvino/cpu" and choice["latency_p90_s"] <= 100
    # the fastest configuration is also the least energy here: a bound below it fails
    fastest = choice["latency_p90_s"]
    refused = greenmon("recommend", "--db", str(demo_db), "--max-p90-s", f"{fastest / 2}",
                       cwd=tmp_path, check=False)  # fmt: skip
    assert refused.returncode == 1
    assert "No configuration satisfies latency p90 <=" in refused.stdout
    assert "Traceback" not in refused.stderr


def test_analyze_json_carries_carbon_and_cost(demo_db: Path, tmp_path: Path) -> None:
    (tmp_path / "greenmon.toml").write_text(CONFIG)
    done = greenmon("analyze", "--db", str(demo_db), "--config", str(tmp_path / "greenmon.toml"),
                    "--json", "--workers", "1", cwd=tmp_path)  # fmt: skip
    data = json.loads(done.stdout)
    rows = {r["configuration"]: r for r in data["tables"]["footprint"]}
    assert set(rows) == set(ENERGY_J)
    medians = {r["configuration"]: r["median"] for r in data["tables"]["medians"]
               if r["variable"] == "energy_global_j" and r["scope"] == "model"}  # fmt: skip
    for config, row in rows.items():
        assert row["co2e_g_per_unit"] == pytest.approx(medians[config] / 3.6e6 * 250, rel=1e-6)
        assert row["cost_per_unit"] == pytest.approx(medians[config] / 3.6e6 * 0.30, rel=1e-6)
    assert "grid average, example" in data["pricing_source"]
    assert {r["configuration"] for r in data["tables"]["front"] if r["pareto"]} == {
        "openvino/cpu"
    }


def test_an_unknown_report_key_is_a_clear_error(demo_db: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[report]\ncarbon_g = 3\n")
    done = greenmon("report", "--db", str(demo_db), "--config", str(tmp_path / "bad.toml"),
                    "--out", str(tmp_path / "r"), cwd=tmp_path, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "Unknown key 'report.carbon_g'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()

