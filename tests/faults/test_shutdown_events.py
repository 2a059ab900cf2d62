"""Events raised while a stopping daemon's services clean up reach the database.

the daemon closed its writer's stream before the services finished
their shielded cleanup, so what the runner said then (hardware levels it could not
restore, an engine thread it had to abandon, memory still held) was dropped.  Here a
``greenmon run`` is stopped by SIGTERM while its engine hangs in generate(): the runner
abandons the engine thread during that cleanup and says so, and the event must be stored.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from greenmon.store import Store
from tests.fakes.rapl import standard_tree
from tests.faults.support import REPO, cli_env, count_event, greenmon_cmd, wait_for

pytestmark = pytest.mark.slow

PLAN = """
name = "shutdown-events"
models = ["tiny"]
configurations = ["fake/cpu"]
workload = "gaissa-164"
prompts = 2
max_new_tokens = 8
repetitions = 1
warmup_requests = 1
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine" }}

[engine_options.fake]
hang_s = 3.0

[cooldown]
before_s = 0.1
after_s = 0.1

[probes.rapl]
rate_hz = 100
sysfs_root = "{root}"

[probes.host]
enabled = false
[probes.estimate]
enabled = false
"""


def test_events_raised_during_shutdown_cleanup_are_stored(tmp_path: Path) -> None:
    standard_tree(tmp_path / "powercap")
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN.format(root=tmp_path / "powercap"))
    db = tmp_path / "run.duckdb"
    engine_events = tmp_path / "engine-events.log"
    process = subprocess.Popen(
        greenmon_cmd("run", str(plan), "--db", str(db), "--quiet"),
        cwd=REPO,
        env=cli_env(GREENMON_FAKE_ENGINE_EVENTS=str(engine_events)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The warm-up request hangs in the engine thread: a stop now abandons it.
        wait_for(
            lambda: count_event(engine_events, "generate-start") >= 1,
            process=process,
            what="the first generate",
        )
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "Traceback" not in stderr, stderr
    assert process.returncode == 130, stderr
    with Store.open(db, read_only=True) as store:
        _, events = store.query("SELECT t_ns, level, message FROM events ORDER BY t_ns")
        _, sessions = store.query("SELECT ended_ns FROM sessions")
    messages = [message for _, _, message in events]
    assert "received SIGTERM, stopping" in messages
    abandoned = [
        (t_ns, level) for t_ns, level, message in events if "engine thread abandoned" in message
    ]
    assert [level for _, level in abandoned] == ["warning"], messages
    # raised after the stop began, and stored within the session it belongs to
    (ended_ns,) = sessions[0]
    assert ended_ns is not None and abandoned[0][0] <= ended_ns
