"""Nothing outlives its owner: a `greenmon run` that hosted the daemon (finished, after
serving a plan another `greenmon run` queued; cancelled; interrupted) and a `greenmon
daemon` stopped by SIGTERM leave nothing on stderr after their last line, in particular
not nanobind's "leaked N instances" report of a DuckDB connection or relation still
referenced when the interpreter exits.

nanobind's report depends on the order in which the interpreter frees modules at exit, so
it shows only now and then.  What causes it does not: a DuckDB connection, cursor or
relation still referenced once the command is done, or a thread still running then (a
daemon thread's frame is never freed).  Each command here starts with an exit check (a
``sitecustomize`` on its path, so greenmon's own code runs unchanged) that, as the last
thing before the interpreter's teardown, collects garbage and prints every such object and
thread on stderr; the tests fail on either report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.support import REPO, cli_env, greenmon_cmd, wait_for
from tests.journeys.test_journeys import daemon_progress, daemon_status, greenmon, write_plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# What nanobind prints at interpreter exit for each object of an extension type still
# alive, and what the exit check below prints.
LEAK_MARKERS = ("leaked", "nanobind", "exit-check:")

# Registered first, so it runs last of the exit handlers: after the command's own and
# after the interpreter has joined the non-daemon threads, just before modules are freed.
EXIT_CHECK = """
import atexit, gc, sys, threading

def _exit_check():
    duckdb = sys.modules.get("duckdb")
    running = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if running:
        print(f"exit-check: threads still running at exit: {running}", file=sys.stderr)
    if duckdb is None:
        return
    kinds = tuple(getattr(duckdb, name) for name in ("DuckDBPyConnection", "DuckDBPyRelation",
                  "Statement") if isinstance(getattr(duckdb, name, None), type))
    gc.collect()
    me = sys._getframe()
    for holder in gc.get_objects():
        if holder is me:
            continue
        for target in gc.get_referents(holder):
            if isinstance(target, kinds):
                print(f"exit-check: a {type(target).__name__} is alive at exit, held by "
                      f"{type(holder).__module__}.{type(holder).__qualname__}", file=sys.stderr)

atexit.register(_exit_check)
"""


def assert_no_leak(stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if any(m in line for m in LEAK_MARKERS)]
    assert not lines, stderr


@pytest.fixture
def checked_env(tmp_path: Path) -> dict[str, str]:
    """The commands' environment, with the exit check on their path."""
    hook = tmp_path / "exit-check"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(EXIT_CHECK)
    return cli_env(PYTHONPATH=f"{hook}{os.pathsep}{REPO}")


def start(env: dict[str, str], *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        greenmon_cmd(*args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_the_exit_check_reports_what_it_is_there_for(
    tmp_path: Path, checked_env: dict[str, str]
) -> None:
    """The check can fail: a connection kept by a daemon thread is reported (and, at the
    interpreter's teardown, nanobind reports it too)."""
    leaky = (
        "import duckdb, threading, time\n"
        "con = duckdb.connect()\n"
        "threading.Thread(target=time.sleep, args=(60,), kwargs={}, daemon=True,\n"
        "                 name='holder').start()\n"
        "holder = [con]\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", leaky], env=checked_env, cwd=tmp_path, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert "exit-check: threads still running at exit: ['holder']" in done.stderr, done.stderr
    assert "exit-check: a DuckDBPyConnection is alive at exit, held by builtins.list" in done.stderr
    with pytest.raises(AssertionError):
        assert_no_leak(done.stderr)


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_a_hosting_run_that_served_a_queued_plan_exits_clean(
    tmp_path: Path, stopper: list[subprocess.Popen[str]], checked_env: dict[str, str]
) -> None:
    db = tmp_path / "h.duckdb"
    host = start(checked_env, "run", str(write_plan(tmp_path, "host", cooldown_s=1.0)),
                 "--db", str(db), cwd=tmp_path)  # fmt: skip
    stopper.append(host)
    wait_for(lambda: bool(daemon_status(db)), process=host, what="the hosting run's daemon")
    queued = start(checked_env, "run", str(write_plan(tmp_path, "queued", repetitions=1)),
                   "--db", str(db), cwd=tmp_path)  # fmt: skip
    stopper.append(queued)
    # A client's SQL, as the TUI sends it: the host answers on a cursor with a timer.
    sql = greenmon("sql", "--db", str(db), "SELECT count(*) FROM samples", cwd=tmp_path)
    assert sql.stdout.strip(), sql.stderr
    _out, queued_err = queued.communicate(timeout=300)
    assert queued.returncode == 0, queued_err
    assert_no_leak(queued_err)
    _out, host_err = host.communicate(timeout=120)
    assert host.returncode == 0, host_err
    assert_no_leak(host_err)


@pytest.mark.parametrize("how", ["cancel", "interrupt"])
def test_a_hosting_run_cancelled_or_interrupted_exits_clean(
    tmp_path: Path, stopper: list[subprocess.Popen[str]], checked_env: dict[str, str], how: str
) -> None:
    db = tmp_path / f"{how}.duckdb"
    host = start(checked_env, "run",
                 str(write_plan(tmp_path, how, repetitions=4, cooldown_s=1.0)),
                 "--db", str(db), cwd=tmp_path)  # fmt: skip
    stopper.append(host)
    wait_for(lambda: bool(daemon_progress(db)), process=host, what="the hosting run's plan")
    if how == "cancel":
        greenmon("cancel", "--db", str(db), cwd=tmp_path)
    else:
        host.send_signal(signal.SIGINT)
    _out, host_err = host.communicate(timeout=120)
    assert host.returncode != 0 or how == "cancel", host_err
    assert_no_leak(host_err)


def test_a_daemon_that_ran_a_plan_exits_clean_on_sigterm(
    tmp_path: Path, stopper: list[subprocess.Popen[str]], checked_env: dict[str, str]
) -> None:
    db = tmp_path / "d.duckdb"
    daemon = start(checked_env, "daemon", "--db", str(db), cwd=tmp_path)
    stopper.append(daemon)
    wait_for(lambda: bool(daemon_status(db)), process=daemon, what="the daemon")
    run = start(checked_env, "run", str(write_plan(tmp_path, "one", repetitions=1)),
                "--db", str(db), cwd=tmp_path)  # fmt: skip
    stopper.append(run)
    _out, run_err = run.communicate(timeout=300)
    assert run.returncode == 0, run_err
    daemon.send_signal(signal.SIGTERM)
    _out, daemon_err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, daemon_err
    assert_no_leak(daemon_err)
