"""SIGKILL of ``greenmon run`` in each phase of a unit, then the same command again.

Each case kills the run while its second unit is in one phase (load, warmup,
cooldown_before, measure, cooldown_after), found from the fake engine's event log and
checked afterwards from the same log (the engine's last event is the one that phase
follows).  The runner stores a unit's phase markers after its timeline, so a killed
attempt leaves no phase rows, and none open.  What must be kept: the database opens cleanly, the finished unit and every sample
in its phases are intact, and the resumed run finishes every unit exactly once (the
finished unit is not rerun; the killed one reruns as attempt 2).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from greenmon.store import Store
from tests.fakes.rapl import standard_tree
from tests.faults.support import (
    REPO,
    cli_env,
    count_event,
    event_lines,
    greenmon_cmd,
    wait_for,
)

pytestmark = pytest.mark.slow

PLAN = """
name = "kill-{phase}"
models = ["tiny"]
configurations = ["fake/cpu"]
workload = "gaissa-164"
prompts = 2
max_new_tokens = 8
repetitions = 2
seed = 3
warmup_requests = 1
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine" }}

[engine_options.fake]
load_s = {load_s}
generate_s = {generate_s}

[cooldown]
before_s = {before_s}
after_s = {after_s}

[probes.rapl]
rate_hz = 100
sysfs_root = "{root}"

[probes.estimate]
enabled = false
"""

# Per unit the fake engine logs: load-start, load-end, then one generate-start/-end pair
# for the warm-up request and one per measured prompt (2), then close.  The second unit's
# events are the (n + 1)-th of each kind; a short delay lets the runner cross from the
# engine call into the phase that follows it.
CASES = {
    # phase: (event to wait for, its occurrence, then wait s, plan timings)
    "load": ("load-start", 2, 0.2, {"load_s": 1.2}),
    "warmup": ("generate-start", 4, 0.2, {"generate_s": 0.7}),
    "cooldown_before": ("generate-end", 4, 0.5, {"before_s": 1.8}),
    "measure": ("generate-start", 5, 0.2, {"generate_s": 0.7}),
    "cooldown_after": ("generate-end", 6, 0.5, {"after_s": 1.8}),
}
DEFAULTS = {"load_s": 0.05, "generate_s": 0.0, "before_s": 0.2, "after_s": 0.1}


def finished_unit_samples(db: Path) -> dict[int, int]:
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            """SELECT u.unit_id, count(s.t_ns) FROM units u
               JOIN phases p ON p.experiment_id = u.experiment_id AND p.unit_id = u.unit_id
                            AND p.attempt = u.attempt
               JOIN channels c ON c.session_id = p.session_id
               JOIN samples s ON s.channel_id = c.channel_id
                             AND s.t_ns BETWEEN p.start_ns AND p.end_ns
               WHERE u.status = 'done' GROUP BY u.unit_id"""
        )
    return dict(rows)


@pytest.mark.parametrize("phase", list(CASES))
def test_sigkill_in_phase_keeps_finished_units_and_resumes_once(
    tmp_path: Path, phase: str
) -> None:
    event, occurrence, settle_s, timings = CASES[phase]
    standard_tree(tmp_path / "powercap")
    plan = tmp_path / "plan.toml"
    plan.write_text(
        PLAN.format(phase=phase, root=tmp_path / "powercap", **{**DEFAULTS, **timings})
    )
    db = tmp_path / "run.duckdb"
    events = tmp_path / "engine-events.log"
    env = cli_env(GREENMON_FAKE_ENGINE_EVENTS=str(events))
    command = greenmon_cmd("run", str(plan), "--db", str(db), "--quiet")
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(
            lambda: count_event(events, event) >= occurrence,
            process=process,
            what=f"{event} #{occurrence}",
        )
        time.sleep(settle_s)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()

    # The file opens cleanly (read-only, and read-write: what the resumed run does).
    with Store.open(db, read_only=True) as store:
        _, units = store.query("SELECT unit_id, status, attempt FROM units ORDER BY unit_id")
        _, open_phases = store.query("SELECT count(*) FROM phases WHERE end_ns IS NULL")
    assert units == [(0, "done", 1), (1, "running", 1)]
    assert open_phases == [(0,)]
    # Killed in the intended phase: the engine's last event is the one it follows.
    log = event_lines(events)
    assert log[-1] == event and log.count(event) == occurrence, log
    samples_before = finished_unit_samples(db)
    assert samples_before.get(0, 0) > 0
    Store.open(db).close()

    loads_before = count_event(events, "load-start")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert count_event(events, "load-start") == loads_before + 1  # only the killed unit reran
    with Store.open(db, read_only=True) as store:
        _, units = store.query("SELECT unit_id, status, attempt FROM units ORDER BY unit_id")
        _, experiments = store.query("SELECT count(*), any_value(status) FROM experiments")
        _, measured = store.query(
            """SELECT u.unit_id, count(*) FROM requests r JOIN units u
                 ON r.experiment_id = u.experiment_id AND r.unit_id = u.unit_id
                AND r.attempt = u.attempt
               WHERE r.phase = 'measure' GROUP BY u.unit_id ORDER BY 1"""
        )
        _, closed = store.query(
            "SELECT count(*) FROM phases WHERE unit_id = 1 AND attempt = 2 AND end_ns IS NULL"
        )
    assert experiments == [(1, "done")]
    assert units == [(0, "done", 1), (1, "done", 2)]
    assert measured == [(0, 2), (1, 2)]
    assert closed == [(0,)]
    samples_after = finished_unit_samples(db)
    assert samples_after[0] == samples_before[0]
    assert samples_after[1] > 0
