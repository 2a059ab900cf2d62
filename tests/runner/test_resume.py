"""SIGKILL in the middle of a unit, then the same command again: every unit once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from greenmon.store import Store
from tests.fakes.rapl import standard_tree
from tests.support.plans import write_fake_plan

REPO = Path(__file__).resolve().parents[2]

def _finished_unit_samples(db: Path) -> dict[int, int]:
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


def test_sigkill_mid_unit_then_resume_runs_every_unit_once(tmp_path: Path) -> None:
    standard_tree(tmp_path / "powercap")
    plan = write_fake_plan(
        tmp_path / "plan.toml", "resume", prompts=6, max_new_tokens=16, repetitions=3, seed=5,
        probes={"rapl": {"rate_hz": 100, "sysfs_root": tmp_path / "powercap"}},
    )
    db = tmp_path / "run.duckdb"
    log = tmp_path / "requests.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GREENMON_FAKE_ENGINE_LOG": str(log)}
    command = [sys.executable, "-m", "greenmon.cli", "run", str(plan), "--db", str(db), "--quiet"]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # Kill during the third unit's measure phase: 7 requests per unit (1 warm-up + 6).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 2 * 7 + 4:
            break
        if process.poll() is not None:
            raise AssertionError(process.communicate())
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with Store.open(db, read_only=True) as store:  # opens cleanly after SIGKILL
        _, statuses = store.query("SELECT status, count(*) FROM units GROUP BY status")
    statuses_before = dict(statuses)
    assert statuses_before.get("done") == 2
    assert statuses_before.get("running") == 1
    samples_before = _finished_unit_samples(db)
    assert len(samples_before) == 2 and all(n > 0 for n in samples_before.values())

    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with Store.open(db, read_only=True) as store:
        _, units = store.query("SELECT unit_id, status, attempt FROM units ORDER BY unit_id")
        _, experiments = store.query("SELECT count(*), any_value(status) FROM experiments")
        _, measured = store.query(
            """SELECT u.unit_id, count(*) FROM requests r JOIN units u
                 ON r.experiment_id = u.experiment_id AND r.unit_id = u.unit_id
                AND r.attempt = u.attempt
               WHERE r.phase = 'measure' GROUP BY u.unit_id"""
        )
    assert experiments == [(1, "done")]
    assert [status for _, status, _ in units] == ["done"] * 6
    assert sorted(attempt for _, _, attempt in units) == [1, 1, 1, 1, 1, 2]
    assert dict(measured) == {unit_id: 6 for unit_id, _, _ in units}
    samples_after = _finished_unit_samples(db)
    for unit_id, count in samples_before.items():
        assert samples_after[unit_id] == count
