"""A plan run with `greenmon run` while a CPU-hogging process runs beside part of it.

The hog is a real child of the test (``while True: pass``), started and ended at unit
phases that the fake engine reports (``GREENMON_FAKE_ENGINE_EVENTS``).  The machine the
host probe sees is a fake /proc (``[probes.host] proc_root``, as a fake powercap tree
stands in for RAPL): ``ProcMirror`` writes its /proc/stat from the hog's real CPU time, so
the background greenmon measures is exactly the hog's, whatever else this shared, loaded
machine runs.  Units that did not overlap the hog then read 0% and the hog's units read
whatever CPU it got, so a threshold of 2% of a core separates them with margin even on a
saturated 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.proc import FakeProc
from tests.faults.support import cli_env, greenmon_cmd, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CLK_TCK = os.sysconf("SC_CLK_TCK")
FAKE_PID = 4242
THRESHOLD_PERCENT = 2.0

PLAN = """
name = "{name}"
models = ["tiny"]
configurations = ["fake/cpu", "fake2/cpu"]
workload = "gaissa-164"
prompts = 4
max_new_tokens = 8
repetitions = {repetitions}
seed = 3
warmup_requests = 1
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine", fake2 = "tests.fakes.engine:FakeEngine" }}

[cooldown]
before_s = 1.0
after_s = 0.2
background_cpu_percent_max = {threshold}
wait_for_quiet_s = {wait_s}

[engine_options.fake]
load_s = 1.0

[engine_options.fake2]
load_s = 1.0

[probes.host]
rate_hz = 10
proc_root = "{proc_root}"
pid = {pid}
"""


class ProcMirror:
    """A fake /proc whose machine runs only the hogs: /proc/stat's busy time is their real
    CPU time (from the real /proc/PID/stat), its total the wall time since start on 2
    cores.  Rewritten in place every 20 ms with fixed-width numbers, since the host probe
    keeps the file open and rereads it."""

    CORES = 2

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fake = FakeProc(root, pid=FAKE_PID, cores=self.CORES)
        self.hogs: list[subprocess.Popen[bytes]] = []
        self._ticks: dict[int, int] = {}
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._write()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _hog_ticks(self) -> int:
        for hog in self.hogs:
            try:
                raw = Path(f"/proc/{hog.pid}/stat").read_bytes()
            except OSError:
                continue  # ended: its last reading stands
            fields = raw[raw.rfind(b")") + 2 :].split()
            self._ticks[hog.pid] = int(fields[11]) + int(fields[12])
        return sum(self._ticks.values())

    def _write(self) -> None:
        per_core = int((time.monotonic() - self._started) * CLK_TCK) + 1
        busy = min(self._hog_ticks(), self.CORES * per_core)
        lines = [(busy, self.CORES * per_core)]
        lines += [(min(busy, per_core), per_core), (max(0, busy - per_core), per_core)]
        names = ["cpu ", "cpu0", "cpu1"]
        text = "".join(
            f"{name} {user:012d} 0 0 {total - user:012d} 0 0 0 0 0 0\n"
            for name, (user, total) in zip(names, lines, strict=True)
        )
        path = self.root / "stat"
        if not hasattr(self, "_fd"):
            path.write_text(text + "intr 0\nctxt 1\nbtime 1700000000\n")
            self._fd = os.open(path, os.O_WRONLY)
        else:
            os.pwrite(self._fd, text.encode(), 0)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._write()

    def start_hog(self, *, paused: bool = False) -> None:
        """A CPU hog; ``paused``: started and stopped (SIGSTOP), so that ``resume_hogs``
        sets it burning at once, however long a Python takes to start on a loaded machine."""
        hog = subprocess.Popen(
            [sys.executable, "-c", "print('ready', flush=True)\nwhile True: pass"],
            stdout=subprocess.PIPE,
        )
        assert hog.stdout is not None and hog.stdout.readline() == b"ready\n"
        if paused:
            hog.send_signal(signal.SIGSTOP)
        self.hogs.append(hog)

    def resume_hogs(self) -> None:
        for hog in self.hogs:
            hog.send_signal(signal.SIGCONT)

    def end_hogs(self) -> int:
        """Kill the hogs; the monotonic time they were all gone."""
        for hog in self.hogs:
            hog.kill()
            hog.wait()
            if hog.stdout is not None:
                hog.stdout.close()
        self._write()
        return time.monotonic_ns()

    def close(self) -> None:
        self.end_hogs()
        self._stop.set()
        self._thread.join()
        os.close(self._fd)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[ProcMirror]:
    made = ProcMirror(tmp_path / "proc")
    yield made
    made.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="gm") as short:
        yield cli_env(
            GREENMON_SOCKET=f"{short}/api.sock",
            GREENMON_FAKE_ENGINE_EVENTS=str(tmp_path / "events.log"),
        )


def write_plan(tmp_path: Path, name: str, *, repetitions: int, wait_s: float) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        PLAN.format(
            name=name,
            repetitions=repetitions,
            threshold=THRESHOLD_PERCENT,
            wait_s=wait_s,
            proc_root=tmp_path / "proc",
            pid=FAKE_PID,
        )
    )
    return path


def events(tmp_path: Path, name: str) -> int:
    path = tmp_path / "events.log"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.split()[:1] == [name])


def greenmon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(greenmon_cmd(*args), env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"greenmon {' '.join(args)} -> {done.returncode}: {done.stderr}"
    return done


def sql(env: dict[str, str], db: Path, query: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        greenmon(env, "sql", "--db", str(db), "--json", query).stdout
    )
    return rows


def start_run(env: dict[str, str], plan: Path, db: Path) -> subprocess.Popen[str]:
    """`greenmon run PLAN` as a person starts it (it serves the API itself)."""
    return subprocess.Popen(
        greenmon_cmd("run", str(plan), "--db", str(db), "--quiet"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


UNITS_SQL = """
SELECT r.unit_id, r.configuration, r.flags, r.background_cpu_percent,
       r.baseline_background_cpu_percent, r.quiet_wait_s, u.started_ns,
       (SELECT start_ns FROM phases p WHERE p.experiment_id = r.experiment_id
          AND p.unit_id = r.unit_id AND p.phase = 'cooldown_before') AS baseline_start_ns
FROM unit_results r JOIN units u USING (experiment_id, unit_id)
ORDER BY u.started_ns
"""


def test_exactly_the_units_beside_a_hog_are_flagged_and_the_findings_say_so(
    tmp_path: Path, mirror: ProcMirror, env: dict[str, str]
) -> None:
    db = tmp_path / "busy.duckdb"
    plan = write_plan(tmp_path, "busy", repetitions=2, wait_s=0)
    mirror.start_hog(paused=True)
    run = start_run(env, plan, db)
    try:
        # the hog runs from the second unit's load until that unit's engine closes
        wait_for(
            lambda: events(tmp_path, "load-start") >= 2, process=run, what="unit 2", timeout_s=300
        )
        mirror.resume_hogs()
        wait_for(
            lambda: events(tmp_path, "close") >= 2, process=run, what="unit 2 closed", timeout_s=300
        )
        mirror.end_hogs()
        _out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    assert "the machine is busy" not in err  # quiet before the first unit

    units = sql(env, db, UNITS_SQL)
    assert len(units) == 4
    flagged = [u["unit_id"] for u in units if "background_load" in u["flags"]]
    assert flagged == [units[1]["unit_id"]], units
    hog_unit = units[1]
    assert hog_unit["baseline_background_cpu_percent"] > THRESHOLD_PERCENT
    for quiet in (units[0], *units[2:]):
        assert quiet["background_cpu_percent"] == pytest.approx(0.0, abs=0.01)
        assert quiet["baseline_background_cpu_percent"] == pytest.approx(0.0, abs=0.01)
        assert quiet["quiet_wait_s"] is None  # waiting was not asked for

    analysed = greenmon(env, "analyze", "--db", str(db)).stdout
    assert "1 of 4 units ran beside other load; other processes used up to " in analysed
    assert f"By configuration: {hog_unit['configuration']} 1." in analysed
    status = greenmon(env, "status", "--db", str(db)).stdout
    assert (
        f"background_load: 1 finished units ran beside other load "
        f"({hog_unit['configuration']} 1)" in status
    ), status


def test_with_wait_for_quiet_the_units_wait_until_the_hog_ends(
    tmp_path: Path, mirror: ProcMirror, env: dict[str, str]
) -> None:
    db = tmp_path / "wait.duckdb"
    plan = write_plan(tmp_path, "wait", repetitions=1, wait_s=120)
    mirror.start_hog()
    checked = greenmon(env, "plan", "check", str(plan)).stdout
    assert "warning: the machine is busy: other processes used" in checked
    run = start_run(env, plan, db)
    try:
        # the first unit has warmed up and now waits; the hog goes on for 2 s more
        wait_for(
            lambda: events(tmp_path, "generate-end") >= 1,
            process=run,
            what="warm-up",
            timeout_s=300,
        )
        time.sleep(2.0)
        assert events(tmp_path, "generate-end") == 1  # no measure while the hog runs
        hog_ended_ns = mirror.end_hogs()
        _out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    assert "the machine is busy" in err and "Each unit waits up to 120 s" in err

    units = sql(env, db, UNITS_SQL)
    assert len(units) == 2
    assert [u["flags"] for u in units if "background_load" in u["flags"]] == []
    first, second = units
    assert first["quiet_wait_s"] >= 2.0
    assert first["baseline_start_ns"] > hog_ended_ns
    assert second["quiet_wait_s"] == 0.0
    events_rows = sql(env, db, "SELECT message FROM events WHERE message LIKE '%waited%'")
    messages = [e["message"] for e in events_rows]
    assert len(messages) == 1 and messages[0].startswith(f"unit {first['unit_id']} waited ")
