"""A figure from an estimated source says so on every surface.

An estimate-only run (no RAPL, NVML or wattmeter: the estimate probe answers for the CPU,
as on this machine by default) goes through the `greenmon` command as separate processes:
a `greenmon daemon`, `greenmon run` submitted to it, `greenmon status` against the daemon
and against the file, the TUI `greenmon tui` builds (driven by Textual's pilot),
`greenmon analyze` (text and --json) and `greenmon report`.  Each must carry the word
"estimated" on the energy figures.  A run whose CPU is measured (a fake powercap tree)
must not: there the estimate probe still runs, but as an unused fallback.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from textual.widgets import DataTable, Static

from greenmon.commands import tui as tui_command
from tests.fakes.rapl import FakeRaplTree
from tests.faults.support import wait_for
from tests.journeys.test_journeys import daemon_status, greenmon, start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PLAN = """
name = "{name}"
models = ["tiny"]
configurations = ["fake/cpu", "fake2/cpu"]
workload = "gaissa-164"
prompts = 2
max_new_tokens = 4
repetitions = 3
seed = 5
warmup_requests = 1
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine", fake2 = "tests.fakes.engine:FakeEngine" }}

[cooldown]
before_s = 0.3
after_s = 0.1

[probes.host]
rate_hz = 10
{probes}
"""

RAPL_PROBE = """
[probes.rapl]
sysfs_root = "{root}"
helper = false
"""

POWER_READING = re.compile(r"\d W ")


def write_plan(directory: Path, name: str, probes: str = "") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(PLAN.format(name=name, probes=probes))
    return path


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; any still running at the end are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def summary_rows(stdout: str) -> dict[str, list[str]]:
    """configuration -> its cells in `greenmon run`'s summary table (configuration, units,
    median_energy_j, median_duration_s, median_j_per_token, flags)."""
    return {
        line.split()[0]: re.split(r"\s{2,}", line.strip())
        for line in stdout.splitlines()
        if line.startswith(("fake/cpu", "fake2/cpu"))
    }


def check_tui(db: Path) -> tuple[str, list[list[str]]]:
    """The power view's text and the results table of the app `greenmon tui --db` builds,
    attached to the daemon holding ``db``."""
    parser = argparse.ArgumentParser()
    tui_command.add_arguments(parser)
    app, background = tui_command.build_app(parser.parse_args(["--db", str(db)]))
    assert background is None, "the TUI must attach to the daemon, not start its own"
    seen: dict[str, object] = {}

    async def look() -> None:
        async with app.run_test(size=(160, 45)) as pilot:
            with anyio.fail_after(60):
                while not POWER_READING.search(str(app.query_one("#power-now", Static).content)):
                    await anyio.sleep(0.05)
            seen["power"] = str(app.query_one("#power-now", Static).content)
            await pilot.press("2")  # the plan view: experiments and their results
            table = app.query_one("#results", DataTable)
            with anyio.fail_after(60):
                while table.row_count < 2:
                    await anyio.sleep(0.05)
            seen["results"] = [
                [str(c) for c in table.get_row_at(i)] for i in range(table.row_count)
            ]
            await pilot.press("q")

    anyio.run(look)
    return str(seen["power"]), list(seen["results"])  # type: ignore[call-overload]


def test_an_estimate_only_run_says_estimated_on_every_surface(
    tmp_path: Path, stopper: list[subprocess.Popen[str]]
) -> None:
    db = tmp_path / "e.duckdb"
    daemon = start("daemon", "--db", str(db), cwd=tmp_path)
    stopper.append(daemon)
    wait_for(lambda: bool(daemon_status(db)), process=daemon, what="the daemon")
    run = greenmon("run", str(write_plan(tmp_path, "estimate-only")), "--db", str(db),
                   "--quiet", cwd=tmp_path)  # fmt: skip

    # the run summary: every energy figure is marked, time is not, and a legend says why
    rows = summary_rows(run.stdout)
    assert set(rows) == {"fake/cpu", "fake2/cpu"}, run.stdout
    for cells in rows.values():
        _configuration, _units, energy_j, duration_s, j_per_token, _flags = cells
        assert energy_j.endswith(" (estimated)"), cells
        assert j_per_token.endswith(" (estimated)"), cells
        assert "estimated" not in duration_s, cells
    assert "estimated: CPU energy is modelled from CPU utilisation" in run.stdout
    assert "CPU time, not by energy" in run.stdout

    # status, answered by the daemon: which channel answers for the CPU, and that it is
    # an estimate
    live = greenmon("status", "--db", str(db), cwd=tmp_path).stdout
    assert "daemon pid" in live
    assert "CPU energy: estimate cpu.power_w (estimated: modelled from CPU utilisation" in live

    # the TUI: its power view and its results view
    power, results = check_tui(db)
    assert "CPU package (estimate cpu.power_w) ~estimated" in power, power
    assert len(results) == 2
    for row in results:
        _configuration, _units, energy_j, duration_s, j_per_token, _flags = row
        assert energy_j.endswith("(estimated)") and j_per_token.endswith("(estimated)"), row
        assert "estimated" not in duration_s, row

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=120) == 0

    # status from the file, with no daemon
    stored = greenmon("status", "--db", str(db), cwd=tmp_path).stdout
    assert "no daemon runs" in stored
    assert "CPU energy: estimate cpu.power_w (estimated: modelled from CPU utilisation" in stored

    # analyze, as text: the note names the model once; each energy finding says it is
    # modelled from utilisation and what that means; time and utilisation do not
    text = greenmon("analyze", "--db", str(db), "--workers", "1", cwd=tmp_path).stdout
    assert "note: Estimated, not measured:" in text
    assert "linear: idle_w + (tdp_w - idle_w) * utilisation" in text
    findings = [line for line in text.splitlines() if line.startswith("- ")]
    energy = [f for f in findings if " energy" in f.split(";")[0]]
    others = [f for f in findings if f not in energy]
    assert energy and others, findings
    for finding in energy:
        assert "This is estimated, not measured" in finding, finding
        assert "modelled from CPU utilisation" in finding, finding
        assert "ranks configurations by CPU time, not by energy" in finding, finding
    for finding in others:
        assert "estimated" not in finding, finding
    assert "energy_global_j (estimated)" in text and "duration_s (estimated)" not in text

    # analyze --json: a field per domain (with the model and its parameters), per variable
    # and per row
    data = json.loads(
        greenmon("analyze", "--db", str(db), "--json", "--workers", "1", cwd=tmp_path).stdout
    )
    estimated = data["estimated"]
    assert set(estimated["domains"]) == {"cpu"}
    cpu = estimated["domains"]["cpu"]
    assert cpu["units"] == cpu["units_total"] == 6
    (source,) = cpu["sources"]
    assert source["probe"] == "estimate" and source["channel"] == "cpu.power_w"
    assert source["model"].startswith("linear") and source["tdp_w"] > source["idle_w"] > 0
    assert estimated["variables"]["energy_global_j"] == ["cpu"]
    assert "duration_s" not in estimated["variables"]
    for row in data["tables"]["summary"]:
        assert row["estimated"] == (row["variable"] in estimated["variables"]), row
        assert ("This is estimated" in row["sentence"]) == row["estimated"], row
    assert {r["estimated"] for r in data["tables"]["medians"]} == {True, False}

    # the report: a marker on estimated figures, its legend, the model once
    greenmon("report", "--db", str(db), "--out", str(tmp_path / "report"), cwd=tmp_path)
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    # the caveat once, at the top; the mark's meaning beside it
    caveats = page[page.index("<section id='caveats'>"):page.index("<section id='answer'>")]
    assert "\u2020 marks every figure that contains estimated energy" in caveats
    assert "Estimated, not measured" in caveats
    assert page.count("idle_w + (tdp_w - idle_w) * utilisation") == 1
    # medians: energy marked, time not (CPU energy equals global here: shown once)
    assert "Energy, global (CPU+GPU) = Energy, CPU: no GPU measured" in caveats
    assert re.search(r"<td>Energy, global \(CPU\+GPU\) \(J\)</td>(<td>[^<]*</td>){2}"
                     r"<td>[0-9.e+-]+ \u2020</td>", page)  # fmt: skip
    assert re.search(r"<td>Execution time \(s\)</td>(<td>[^<]*</td>){2}<td>[0-9.e+-]+</td>",
                     page)  # fmt: skip
    assert "<td>energy_global_j \u2020</td>" in page and "<td>duration_s</td>" in page
    assert "This is estimated, not measured" in page
    assert "<figcaption>Energy, global (CPU+GPU) \u2020</figcaption>" in page
    assert "<figcaption>Execution time</figcaption>" in page


@pytest.fixture
def rapl_tree(tmp_path: Path) -> Iterator[FakeRaplTree]:
    """A powercap tree whose package counter advances (about 10 W) while the test runs."""
    tree = FakeRaplTree(tmp_path / "powercap")
    zone = tree.add_zone("intel-rapl:0", "package-0")
    stop = threading.Event()

    def advance() -> None:
        while not stop.wait(0.02):
            zone.advance(200_000)

    thread = threading.Thread(target=advance, daemon=True)
    thread.start()
    yield tree
    stop.set()
    thread.join()


def test_a_run_with_measured_cpu_energy_does_not_say_estimated(
    tmp_path: Path, rapl_tree: FakeRaplTree
) -> None:
    db = tmp_path / "r.duckdb"
    probes = RAPL_PROBE.format(root=rapl_tree.root)
    run = greenmon("run", str(write_plan(tmp_path, "measured", probes)), "--db", str(db),
                   "--quiet", cwd=tmp_path)  # fmt: skip
    rows = summary_rows(run.stdout)
    assert set(rows) == {"fake/cpu", "fake2/cpu"}, run.stdout
    for cells in rows.values():
        assert not any("estimated" in c for c in cells), cells
    assert "modelled from CPU utilisation" not in run.stdout

    stored = greenmon("status", "--db", str(db), cwd=tmp_path).stdout
    assert "CPU energy: rapl package-0.energy_uj (measured)" in stored, stored
    assert "estimated" not in stored

    data = json.loads(
        greenmon("analyze", "--db", str(db), "--json", "--workers", "1", cwd=tmp_path).stdout
    )
    assert data["estimated"]["domains"] == {} and data["estimated"]["variables"] == {}
    assert "energy_cpu_j" in data["variables"]
    assert not any(n["title"] == "Estimated, not measured" for n in data["notes"])
    for row in data["tables"]["summary"]:
        assert row["estimated"] is False and "estimated" not in row["sentence"], row
