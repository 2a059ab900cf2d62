"""README's journeys, run the way a person runs them: `greenmon` commands as separate processes.

A plan runs in one process (`greenmon run`, which then serves the API itself) or in a
`greenmon daemon`; `greenmon status`, `sql`, `cancel` and the TUI attach from others.  The
TUI is the app `greenmon tui` builds (greenmon/commands/tui.py ``build_app``), driven by
Textual's pilot.  Nothing here composes a daemon: the only fake is the engine (it
generates without a model, as hardware fakes stand in for absent devices).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from greenmon.commands import tui as tui_command
from tests.faults.support import cli_env, greenmon_cmd, wait_for
from tests.support.plans import write_fake_plan

# Each journey starts several Python processes; on a busy 2-core machine that takes minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

def write_plan(directory: Path, name: str, repetitions: int = 2, cooldown_s: float = 0.3) -> Path:
    return write_fake_plan(
        directory / f"{name}.toml", name, repetitions=repetitions, cooldown_s=(cooldown_s, 0.2),
        probes={"host": {"rate_hz": 10}},
    )


def greenmon(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        greenmon_cmd(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    if check and done.returncode != 0:
        raise AssertionError(f"greenmon {' '.join(args)} -> {done.returncode}: {done.stderr}")
    return done


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        greenmon_cmd(*args),
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def status(db: Path) -> dict[str, Any]:
    done = greenmon("status", "--db", str(db), "--json", cwd=db.parent)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def daemon_status(db: Path) -> dict[str, Any]:
    done = greenmon("status", "--db", str(db), "--json", cwd=db.parent, check=False)
    if done.returncode != 0:
        return {}
    daemon: dict[str, Any] = json.loads(done.stdout).get("daemon") or {}
    return daemon


def daemon_progress(db: Path) -> dict[str, Any]:
    """The daemon's progress, or {} while the file or its daemon is not there yet."""
    progress: dict[str, Any] = daemon_status(db).get("progress") or {}
    return progress


def sql(db: Path, query: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        greenmon("sql", "--db", str(db), "--json", query, cwd=db.parent).stdout
    )
    return rows


def units_done(db: Path) -> int:
    """Finished units, 0 while the file is not there yet."""
    query = "SELECT count(*) AS n FROM units WHERE status = 'done'"
    done = greenmon("sql", "--db", str(db), "--json", query, cwd=db.parent, check=False)
    return int(json.loads(done.stdout)[0]["n"]) if done.returncode == 0 else 0


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; any still running at the end are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_a_run_is_watched_queried_and_steered_from_other_processes(
    tmp_path: Path, stopper: list[subprocess.Popen[str]]
) -> None:
    db = tmp_path / "a.duckdb"
    plan = write_plan(tmp_path, "watched", repetitions=4, cooldown_s=0.6)
    run = start("run", str(plan), "--db", str(db), cwd=tmp_path)
    stopper.append(run)
    wait_for(
        lambda: daemon_progress(db).get("status") == "running",
        process=run,
        what="the run's daemon to answer status with a running plan",
    )
    # SQL reaches the run's daemon (the file itself is held read-write by that process).
    assert sql(db, "SELECT count(*) AS n FROM units")[0]["n"] == 8

    # The TUI: the app `greenmon tui --db` builds, attached to the run's daemon.
    parser = argparse.ArgumentParser()
    tui_command.add_arguments(parser)
    app, background = tui_command.build_app(parser.parse_args(["--db", str(db)]))
    assert background is None, "the TUI must attach to the run's daemon, not start its own"

    async def steer() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            with anyio.fail_after(30):
                while not (app.model.progress and app.model.progress.unit):
                    await anyio.sleep(0.05)
            await pilot.press("2")  # the plan view: grid and experiments
            await pilot.pause()
            await pilot.press("p")
            with anyio.fail_after(30):
                while app.model.progress is None or app.model.progress.status != "paused":
                    await anyio.sleep(0.05)
            assert status(db)["daemon"]["progress"]["status"] == "paused"
            await pilot.press("r")
            with anyio.fail_after(30):
                while app.model.progress is None or app.model.progress.status != "running":
                    await anyio.sleep(0.05)
            await pilot.press("c", "c")
            with anyio.fail_after(30):
                while run.poll() is None:
                    await anyio.sleep(0.05)

    anyio.run(steer)
    _out, err = run.communicate()
    assert run.returncode == 1, err
    assert "cancelled before every unit ran" in err
    experiment = sql(db, "SELECT status FROM experiments")
    assert experiment == [{"status": "cancelled"}]


def test_kill_9_then_the_same_command_resumes_and_a_finished_plan_says_so(
    tmp_path: Path, stopper: list[subprocess.Popen[str]]
) -> None:
    db = tmp_path / "k.duckdb"
    plan = write_plan(tmp_path, "killed", repetitions=3, cooldown_s=0.5)
    run = start("run", str(plan), "--db", str(db), cwd=tmp_path)
    stopper.append(run)
    wait_for(lambda: units_done(db) >= 1, process=run, what="the first unit to finish")
    run.send_signal(signal.SIGKILL)
    run.communicate()
    done_before = units_done(db)
    again = greenmon("run", str(plan), "--db", str(db), cwd=tmp_path)
    assert "resuming experiment" in again.stderr
    assert f": {done_before} of 6 units done" in again.stderr
    assert units_done(db) == 6
    assert sql(db, "SELECT count(DISTINCT experiment_id) AS n FROM units")[0]["n"] == 1
    finished = greenmon("run", str(plan), "--db", str(db), cwd=tmp_path, check=False)
    assert finished.returncode == 2
    assert "already finished" in finished.stderr and "--force" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_two_daemons_on_two_files_each_answer_for_their_own(
    tmp_path: Path, stopper: list[subprocess.Popen[str]]
) -> None:
    first, second = tmp_path / "one.duckdb", tmp_path / "two.duckdb"
    for db in (first, second):
        stopper.append(start("daemon", "--db", str(db), cwd=tmp_path))
    for db in (first, second):
        wait_for(lambda db=db: bool(daemon_status(db)), what=f"the daemon of {db.name}")
        assert status(db)["daemon"]["db_path"] == str(db.resolve())
    # No other file's daemon answers for a third file: it is said not to exist.
    other = greenmon("status", "--db", str(tmp_path / "three.duckdb"), cwd=tmp_path, check=False)
    assert other.returncode == 2 and "does not exist" in other.stderr
    assert "one.duckdb" not in other.stdout + other.stderr
    for process in stopper:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_two_plans_submitted_at_once_run_one_after_the_other(
    tmp_path: Path, stopper: list[subprocess.Popen[str]]
) -> None:
    db = tmp_path / "q.duckdb"
    daemon = start("daemon", "--db", str(db), cwd=tmp_path)
    stopper.append(daemon)
    wait_for(lambda: bool(daemon_status(db)), process=daemon, what="the daemon")
    plans = [write_plan(tmp_path, name) for name in ("first", "second")]
    runs = [start("run", str(p), "--db", str(db), cwd=tmp_path) for p in plans]
    stopper.extend(runs)
    results = [r.communicate(timeout=120) for r in runs]
    for run, (_out, err) in zip(runs, results, strict=True):
        assert run.returncode == 0, err
    assert any("queued behind 1 plan" in err for _out, err in results)
    spans = sql(
        db,
        "SELECT e.name, min(p.start_ns) AS start_ns, max(p.end_ns) AS end_ns "
        "FROM phases p JOIN experiments e USING (experiment_id) GROUP BY e.name "
        "ORDER BY start_ns",
    )
    assert len(spans) == 2
    assert spans[0]["end_ns"] < spans[1]["start_ns"], spans
    assert {s["status"] for s in sql(db, "SELECT status FROM experiments")} == {"done"}
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0


def test_a_run_queued_behind_a_hosting_run_reports_its_own_outcome_and_results(
    tmp_path: Path, stopper: list[subprocess.Popen[str]]
) -> None:
    """The host is a `greenmon run`, which stops once its queue is empty, possibly before
    the queued client has seen its plan end over the API: the client must still exit 0 and
    print its results (by hand it printed an empty table, then exited 130 as interrupted)."""
    db = tmp_path / "h.duckdb"
    host = start("run", str(write_plan(tmp_path, "host", cooldown_s=1.0)), "--db", str(db),
                 cwd=tmp_path)  # fmt: skip
    stopper.append(host)
    wait_for(lambda: bool(daemon_status(db)), process=host, what="the hosting run's daemon")
    queued = start("run", str(write_plan(tmp_path, "queued", repetitions=1)), "--db", str(db),
                   cwd=tmp_path)  # fmt: skip
    stopper.append(queued)
    out, err = queued.communicate(timeout=300)
    assert queued.returncode == 0, err
    assert "queued behind 1 plan" in err
    (queued_id,) = [r["experiment_id"] for r in sql(db, "SELECT experiment_id FROM experiments WHERE name = 'queued'")]
    assert f"experiment {queued_id}: medians per configuration" in out
    configurations = {r["configuration"] for r in sql(db, f"SELECT configuration FROM unit_results_for('{queued_id}')")}
    assert configurations and all(c in out for c in configurations), out
    _host_out, host_err = host.communicate(timeout=120)
    assert host.returncode == 0, host_err


def test_sighup_stops_a_run_in_order_and_it_resumes(
    tmp_path: Path, stopper: list[subprocess.Popen[str]]
) -> None:
    db = tmp_path / "h.duckdb"
    plan = write_plan(tmp_path, "hungup", repetitions=3, cooldown_s=2.0)
    run = start("run", str(plan), "--db", str(db), cwd=tmp_path)
    stopper.append(run)
    wait_for(
        lambda: daemon_progress(db).get("unit") is not None, process=run, what="a unit to start"
    )
    os.kill(run.pid, signal.SIGHUP)
    _out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert sql(db, "SELECT status FROM experiments") == [{"status": "interrupted"}]
    assert "Traceback" not in err
    again = greenmon("run", str(plan), "--db", str(db), cwd=tmp_path)
    assert "resuming experiment" in again.stderr
    assert units_done(db) == 6
