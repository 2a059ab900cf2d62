"""SIGTERM and SIGINT of ``greenmon daemon`` and ``greenmon run``.

What must be kept: every sample a probe took reached the database (the daemon's summary
counts equal the stored rows; for a run, samples go on up to the signal), the session is
closed, an interrupted unit is marked and its phases closed, and the EnergiBridge child
(the fake executable) is reaped with its working files: no process the command started
outlives it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from greenmon.sampling import HANDOFF_INTERVAL_S
from greenmon.store import Store
from tests.fakes.energibridge import write_fake_energibridge
from tests.fakes.rapl import standard_tree
from tests.faults.support import (
    REPO,
    alive,
    cli_env,
    count_event,
    descendants,
    greenmon_cmd,
    wait_for,
)
from tests.support.plans import write_fake_plan

pytestmark = pytest.mark.slow

SIGNALS = [signal.SIGTERM, signal.SIGINT]


def energibridge_children(pid: int) -> list[psutil.Process]:
    found = []
    for child in descendants(pid):
        try:
            if any("energibridge" in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def csv_dirs(children: list[psutil.Process]) -> list[Path]:
    dirs = []
    for child in children:
        argv = child.cmdline()
        dirs.append(Path(argv[argv.index("-o") + 1]).parent)
    return dirs


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_daemon_signal_flushes_every_sample_and_reaps_energibridge(
    tmp_path: Path, signum: signal.Signals
) -> None:
    standard_tree(tmp_path / "powercap")
    fake = write_fake_energibridge(tmp_path / "bin")
    config = tmp_path / "greenmon.toml"
    config.write_text(
        f'[probes.rapl]\nrate_hz = 200\nsysfs_root = "{tmp_path / "powercap"}"\n'
        "[probes.host]\nrate_hz = 20\n"
        f'[probes.energibridge]\nrate_hz = 20\npath = "{fake.path}"\nmsr_device = ""\n'
        "interval_ms = 20\n"
        "[probes.nvml]\nenabled = false\n[probes.estimate]\nenabled = false\n"
    )
    db = tmp_path / "daemon.duckdb"
    socket_dir = Path(tempfile.mkdtemp(dir="/tmp"))
    process = subprocess.Popen(
        greenmon_cmd("daemon", "--db", str(db), "--config", str(config), "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=cli_env(GREENMON_SOCKET=str(socket_dir / "d.sock")),
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "greenmon daemon started" in line, line + process.stderr.read()
        children = energibridge_children(process.pid)
        assert children, "the fake EnergiBridge did not start"
        workdirs = csv_dirs(children)
        assert all(d.is_dir() for d in workdirs)
        time.sleep(1.0)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert alive(children) == []
    assert not any(d.exists() for d in workdirs)
    summary = json.loads(stdout)
    taken = {p["probe"]: p["samples"] for p in summary["probes"] if p["state"] != "unavailable"}
    assert set(taken) == {"rapl", "host", "energibridge"}
    assert taken["energibridge"] > 0
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            "SELECT c.probe, count(*) FROM samples s JOIN channels c USING (channel_id) GROUP BY 1"
        )
        _, received = store.query(
            "SELECT count(*) FROM events WHERE message = ?", [f"received {signum.name}, stopping"]
        )
        _, sessions = store.query("SELECT ended_ns IS NOT NULL FROM sessions")
    assert dict(rows) == taken
    assert summary["samples_written"] == sum(taken.values())
    assert received == [(1,)]
    assert sessions == [(True,)]


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_run_signal_mid_unit_flushes_closes_and_reaps(
    tmp_path: Path, signum: signal.Signals
) -> None:
    standard_tree(tmp_path / "powercap")
    fake = write_fake_energibridge(tmp_path / "bin")
    plan = write_fake_plan(
        tmp_path / "plan.toml", "signal", configurations=["fake/cpu"], prompts=2, seed=None,
        cooldown_s=(20.0, 0.1),
        probes={"rapl": {"rate_hz": 200, "sysfs_root": tmp_path / "powercap"},
                "energibridge": {"rate_hz": 20, "path": fake.path, "msr_device": "",
                                 "interval_ms": 20},
                # 10 Hz, so its last sample before the signal says what a hand-off kept
                "host": {"rate_hz": 10},
                "estimate": {"enabled": False}},
    )  # fmt: skip
    db = tmp_path / "run.duckdb"
    events = tmp_path / "engine-events.log"
    process = subprocess.Popen(
        greenmon_cmd("run", str(plan), "--db", str(db), "--quiet"),
        cwd=REPO,
        env=cli_env(GREENMON_FAKE_ENGINE_EVENTS=str(events)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The warm-up request is done: the unit is in its 20 s cooldown_before.
        wait_for(lambda: count_event(events, "generate-end") >= 1, process=process, what="warm-up")
        children = energibridge_children(process.pid)
        assert children, "the fake EnergiBridge did not start"
        workdirs = csv_dirs(children)
        time.sleep(0.5)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "Traceback" not in stderr, stderr
    # interrupted: exit 130 and say how to resume, not a finished-looking summary
    assert process.returncode == 130, stderr
    assert "Run the same command again to resume" in stderr
    assert alive(children) == []
    assert not any(d.exists() for d in workdirs)
    with Store.open(db, read_only=True) as store:
        _, units = store.query("SELECT unit_id, status FROM units ORDER BY unit_id")
        _, experiments = store.query("SELECT status FROM experiments")
        _, open_phases = store.query("SELECT count(*) FROM phases WHERE end_ns IS NULL")
        _, cooldowns = store.query(
            "SELECT (end_ns - start_ns) / 1e9 FROM phases WHERE phase = 'cooldown_before'"
        )
        _, received = store.query(
            "SELECT t_ns FROM events WHERE message = ?", [f"received {signum.name}, stopping"]
        )
        _, last = store.query(
            "SELECT c.probe, max(s.t_ns), count(*) FROM samples s JOIN channels c "
            "USING (channel_id) GROUP BY 1"
        )
        _, ended = store.query("SELECT ended_ns FROM sessions")
    assert units == [(0, "cancelled"), (1, "pending")]
    assert experiments == [("interrupted",)]
    assert open_phases == [(0,)]
    # The signal cut the 20 s cooldown short instead of waiting it out (how fast the run
    # stops is a figure in bench/shutdown.py, not an assertion here).
    assert len(cooldowns) == 1 and cooldowns[0][0] < 20.0, cooldowns
    assert len(received) == 1 and ended[0][0] is not None
    signal_ns = received[0][0]
    by_probe = {probe: (t_ns, n) for probe, t_ns, n in last}
    assert by_probe["energibridge"][1] > 0
    # Samples were taken and stored up to the signal: nothing queued in the sampler's
    # hand-off (100 ms) or the writer's flush interval (0.5 s) was dropped.
    assert by_probe["rapl"][0] >= signal_ns - 50_000_000
    assert by_probe["host"][0] >= signal_ns - 250_000_000


def test_daemon_sigkill_loses_at_most_one_flush_interval_and_one_handoff(
    tmp_path: Path,
) -> None:
    """README's bound: after a SIGKILL the file keeps every flushed sample, and the samples
    lost are at most the last ``flush_interval_s`` + one hand-off (0.5 s) before the kill.
    The margin allows for a flush in progress and for this shared machine's scheduling."""
    flush_interval_s, handoff_s, margin_s = 0.5, HANDOFF_INTERVAL_S, 0.5
    rate_hz = 100
    standard_tree(tmp_path / "powercap")
    config = tmp_path / "greenmon.toml"
    config.write_text(
        f"[daemon]\nflush_interval_s = {flush_interval_s}\n"
        f'[probes.rapl]\nrate_hz = {rate_hz}\nsysfs_root = "{tmp_path / "powercap"}"\n'
        "[probes.host]\nenabled = false\n[probes.nvml]\nenabled = false\n"
        "[probes.estimate]\nenabled = false\n"
    )
    db = tmp_path / "daemon.duckdb"
    socket_dir = Path(tempfile.mkdtemp(dir="/tmp"))
    process = subprocess.Popen(
        greenmon_cmd("daemon", "--db", str(db), "--config", str(config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=cli_env(GREENMON_SOCKET=str(socket_dir / "d.sock")),
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "greenmon daemon started" in line, line + process.stderr.read()
        time.sleep(2.5)
        # CLOCK_MONOTONIC is one clock for every process: comparable with samples' t_ns.
        killed_ns = time.monotonic_ns()
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert process.returncode == -signal.SIGKILL
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            "SELECT channel_id, count(*), max(t_ns), max(gap_ns) FROM ("
            "  SELECT s.channel_id, t_ns, t_ns - lag(t_ns) OVER (PARTITION BY s.channel_id "
            "  ORDER BY t_ns) AS gap_ns FROM samples s JOIN channels c USING (channel_id) "
            "  WHERE c.probe = 'rapl') GROUP BY 1"
        )
    assert rows, "no flushed sample survived the kill"
    for _channel, count, last_ns, max_gap_ns in rows:
        # everything flushed is there: a lost hand-off would leave a hole of one hand-off
        assert count > rate_hz
        assert max_gap_ns < handoff_s * 1e9, max_gap_ns
        lost_s = (killed_ns - last_ns) / 1e9
        assert 0 <= lost_s <= flush_interval_s + handoff_s + margin_s, lost_s
