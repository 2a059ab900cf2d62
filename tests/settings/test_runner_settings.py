"""Hardware factors through the runner: applied per unit, recorded, restored on a normal
end, on SIGTERM, and after SIGKILL by `greenmon restore`; refused by `greenmon plan check`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from greenmon.cli import main
from greenmon.commands.run import RunInterrupted, run_experiment
from greenmon.plan import parse_plan
from greenmon.store import Store
from tests.fakes.cpufreq import FakeCpufreqTree
from tests.fakes.engine import PoweredRapl
from tests.fakes.nvml import STATE_ENV, FakeGpu, FakeNvml, load_state

REPO = Path(__file__).resolve().parents[2]

PLAN = """
name = "dvfs"
models = ["tiny"]
configurations = ["fake/cpu"]
workload = "gaissa-164"
prompts = {prompts}
max_new_tokens = 16
repetitions = {repetitions}
seed = 3
warmup_requests = 1
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine" }}

[cooldown]
before_s = 0.2
after_s = 0.1

[factors]
cpu_governor = ["performance", "schedutil"]
cpu_max_freq_khz = [2000000]
gpu_power_limit_w = [150]
gpu_locked_clocks_mhz = [[1000, 1400]]

[hardware]
cpufreq_root = "{cpufreq}"
nvml_module = "tests.fakes.nvml:file_backed"

[probes.rapl]
rate_hz = 100
sysfs_root = "{powercap}"

[probes.host]
enabled = false
"""


@pytest.fixture
def power(tmp_path: Path) -> Iterator[PoweredRapl]:
    source = PoweredRapl(tmp_path / "powercap", 5.0).start()
    yield source
    source.stop()


def _journal_statuses(db: Path) -> dict[str, int]:
    with Store.open(db, read_only=True) as store:
        _, rows = store.query("SELECT status, count(*) FROM restore_journal GROUP BY status")
    return dict(rows)


def test_settings_in_force_for_the_unit_and_restored_after(
    tmp_path: Path, power: PoweredRapl
) -> None:
    tree = FakeCpufreqTree(tmp_path / "cpu", cpus=2)
    nvml = FakeNvml([FakeGpu("GPU-aaaa")])
    text = PLAN.format(
        prompts=3, repetitions=1, cpufreq=tree.root, powercap=power.tree.root
    ).replace("tests.fakes.nvml:file_backed", "injected")
    plan = parse_plan(text)
    db = tmp_path / "run.duckdb"
    experiment_id, _ = anyio.run(
        lambda: run_experiment(
            plan,
            db,
            resume=False,
            force=False,
            quiet=True,
            reference=None,
            engine_kwargs={"power": power},
            nvml=nvml,
        )
    )
    assert tree.values("scaling_governor") == ["powersave"] * 2
    assert tree.values("scaling_max_freq") == ["3600000"] * 2
    gpu = nvml.gpus[0]
    assert gpu.power_limit_mw == 300_000 and gpu.locked_sm_clocks_mhz is None
    assert "nvmlDeviceSetGpuLockedClocks" in gpu.setter_calls
    with Store.open(db, read_only=True) as store:
        _, units = store.query(
            "SELECT unit_id, status, factors, settings FROM units WHERE experiment_id = ? "
            "ORDER BY unit_id",
            [experiment_id],
        )
        _, windows = store.query(
            """SELECT j.unit_id, min(j.applied_ns), max(j.restored_ns),
                      min(p.start_ns) FILTER (WHERE p.phase = 'warmup'),
                      max(p.end_ns) FILTER (WHERE p.phase = 'cooldown_after'),
                      bool_and(j.status = 'restored')
               FROM restore_journal j JOIN phases p
                 ON p.experiment_id = j.experiment_id AND p.unit_id = j.unit_id
               WHERE j.experiment_id = ? GROUP BY j.unit_id""",
            [experiment_id],
        )
    assert [u[1] for u in units] == ["done", "done"]
    for _uid, _status, factors_json, settings_json in units:
        factors = json.loads(factors_json)
        settings = json.loads(settings_json)
        assert settings["cpu_governor"]["in_force"] == factors["cpu_governor"]
        assert settings["cpu_max_freq_khz"]["in_force"] == "2000000"
        assert settings["gpu_power_limit_mw"]["in_force"] == "150000"
        assert settings["gpu_sm_clock_mhz"]["in_force"] == "1395"  # clamped, as recorded
    assert len(windows) == 2
    for _uid, applied_ns, restored_ns, warmup_ns, tail_end_ns, all_restored in windows:
        # in force from before warm-up until after the tail cooldown
        assert applied_ns < warmup_ns and restored_ns > tail_end_ns and all_restored


def _start_run(
    tmp_path: Path, plan_text: str
) -> tuple[subprocess.Popen[str], Path, dict[str, str]]:
    plan = tmp_path / "plan.toml"
    plan.write_text(plan_text)
    db = tmp_path / "run.duckdb"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GREENMON_FAKE_ENGINE_LOG": str(tmp_path / "requests.log"),
        STATE_ENV: str(tmp_path / "nvml.json"),
    }
    command = [sys.executable, "-m", "greenmon.cli", "run", str(plan), "--db", str(db), "--quiet"]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, db, env


def _wait_for_measure(process: subprocess.Popen[str], log: Path) -> None:
    # 1 warm-up request, then the measured ones: the third line is inside measure.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            return
        if process.poll() is not None:
            raise AssertionError(process.communicate())
        time.sleep(0.01)
    raise AssertionError("the run never reached its measure phase")


def _subprocess_plan(tmp_path: Path, tree: FakeCpufreqTree) -> str:
    powercap = tmp_path / "powercap"
    from tests.fakes.rapl import standard_tree

    standard_tree(powercap)
    # Long enough per unit that a signal lands inside the first unit.
    return PLAN.format(prompts=40, repetitions=1, cpufreq=tree.root, powercap=powercap)


def test_sigterm_mid_unit_restores_everything(tmp_path: Path) -> None:
    tree = FakeCpufreqTree(tmp_path / "cpu", cpus=2)
    process, db, _ = _start_run(tmp_path, _subprocess_plan(tmp_path, tree))
    _wait_for_measure(process, tmp_path / "requests.log")
    # in force while the unit measures
    assert set(tree.values("scaling_max_freq")) == {"2000000"}
    assert load_state(tmp_path / "nvml.json")[0].power_limit_mw == 150_000
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert tree.values("scaling_governor") == ["powersave"] * 2
    assert tree.values("scaling_max_freq") == ["3600000"] * 2
    gpu = load_state(tmp_path / "nvml.json")[0]
    assert gpu.power_limit_mw == 300_000 and gpu.locked_sm_clocks_mhz is None, stderr
    assert set(_journal_statuses(db)) == {"restored"}
    with Store.open(db, read_only=True) as store:
        _, units = store.query("SELECT status, count(*) FROM units GROUP BY status")
    assert dict(units).get("cancelled") == 1


def test_sigkill_then_greenmon_restore(tmp_path: Path) -> None:
    tree = FakeCpufreqTree(tmp_path / "cpu", cpus=2)
    process, db, env = _start_run(tmp_path, _subprocess_plan(tmp_path, tree))
    _wait_for_measure(process, tmp_path / "requests.log")
    process.send_signal(signal.SIGKILL)
    process.wait()
    # left changed, and the journal knows
    assert tree.values("scaling_max_freq") == ["2000000"] * 2
    assert load_state(tmp_path / "nvml.json")[0].locked_sm_clocks_mhz == [1005, 1395]
    assert set(_journal_statuses(db)) == {"applied"}

    restore = [sys.executable, "-m", "greenmon.cli", "restore", "--db", str(db)]
    result = subprocess.run(restore, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "restored" in result.stdout and "scaling_governor to powersave" in result.stdout
    assert "power_limit_mw" in result.stdout and "restored 6 setting(s)" in result.stdout
    assert tree.values("scaling_governor") == ["powersave"] * 2
    assert tree.values("scaling_max_freq") == ["3600000"] * 2
    gpu = load_state(tmp_path / "nvml.json")[0]
    assert gpu.power_limit_mw == 300_000 and gpu.locked_sm_clocks_mhz is None
    assert set(_journal_statuses(db)) == {"restored"}
    again = subprocess.run(restore, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert "nothing to restore" in again.stdout


def test_next_daemon_start_restores(tmp_path: Path) -> None:
    """A journal row left 'applied' (the process died) is restored when a daemon starts."""
    tree = FakeCpufreqTree(tmp_path / "cpu", cpus=1)
    db = tmp_path / "run.duckdb"
    target = tree.root / "cpu0" / "cpufreq" / "scaling_governor"
    with Store.open(db) as store:
        store.execute(
            "INSERT INTO restore_journal (target, previous_value, applied_value, status) "
            "VALUES (?, 'powersave', 'performance', 'applied')",
            [json.dumps({"kind": "cpufreq", "path": str(target)})],
        )
    target.write_text("performance")
    from greenmon.config import parse_config
    from greenmon.daemon import Daemon

    async def start_and_stop() -> None:
        with Store.open(db) as store:
            await Daemon(store, parse_config(""), probes={}, handle_signals=False).run(0.1)

    anyio.run(start_and_stop)
    assert tree.read(0, "scaling_governor") == "powersave"
    assert set(_journal_statuses(db)) == {"restored"}


def test_plan_check_refuses_an_out_of_range_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = FakeCpufreqTree(tmp_path / "cpu", cpus=2)
    monkeypatch.setenv(STATE_ENV, str(tmp_path / "nvml.json"))
    text = PLAN.format(prompts=2, repetitions=1, cpufreq=tree.root, powercap=tmp_path)
    plan = tmp_path / "plan.toml"
    plan.write_text(text.replace("cpu_max_freq_khz = [2000000]", "cpu_max_freq_khz = [5000000]"))
    assert main(["plan", "check", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "cpu_max_freq_khz level 5000000 is outside this CPU's range 800000..3600000 kHz" in err
    plan.write_text(text.replace("gpu_power_limit_w = [150]", "gpu_power_limit_w = [400]"))
    assert main(["plan", "check", str(plan)]) == 2
    assert "gpu_power_limit_w level 400 is outside GPU" in capsys.readouterr().err
    plan.write_text(text)
    assert main(["plan", "check", str(plan)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("ok")


def test_refused_hardware_stops_the_plan_before_the_first_unit(
    tmp_path: Path, power: PoweredRapl
) -> None:
    tree = FakeCpufreqTree(tmp_path / "cpu", cpus=2)
    text = PLAN.format(
        prompts=2, repetitions=1, cpufreq=tree.root, powercap=power.tree.root
    ).replace("gpu_power_limit_w = [150]", "gpu_power_limit_w = [999]")
    db = tmp_path / "run.duckdb"
    with pytest.raises(RunInterrupted) as stopped:
        anyio.run(
            lambda: run_experiment(
                parse_plan(text), db, resume=False, force=False, quiet=True, reference=None,
                nvml=FakeNvml([FakeGpu("GPU-aaaa")]),
            )
        )  # fmt: skip
    assert stopped.value.status == "failed"
    with Store.open(db, read_only=True) as store:
        _, experiments = store.query("SELECT status FROM experiments")
        _, units = store.query("SELECT DISTINCT status FROM units")
        _, events = store.query("SELECT message FROM events WHERE level = 'error'")
    assert experiments == [("failed",)] and units == [("pending",)]
    assert any("gpu_power_limit_w level 999" in m for (m,) in events)
    assert tree.values("scaling_governor") == ["powersave"] * 2
    assert _journal_statuses(db) == {}


def test_input_tokens_levels_get_windows_of_that_length(tmp_path: Path, power: PoweredRapl) -> None:
    text = f"""
name = "input-tokens"
models = ["tiny"]
configurations = ["fake/cpu"]
prompts = 3
max_new_tokens = 4
repetitions = 1
warmup_requests = 0
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine" }}
[cooldown]
before_s = 0.05
after_s = 0.05
[factors]
input_tokens = [16, 48]
[probes.rapl]
sysfs_root = "{power.tree.root}"
[probes.host]
enabled = false
"""
    db = tmp_path / "run.duckdb"
    experiment_id, _ = anyio.run(
        lambda: run_experiment(
            parse_plan(text), db, resume=False, force=False, quiet=True, reference=None,
            engine_kwargs={"power": power},
        )
    )  # fmt: skip
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            """SELECT u.factors ->> 'input_tokens', r.prompt_id FROM requests r JOIN units u
                 USING (experiment_id, unit_id) WHERE r.experiment_id = ? AND u.status = 'done'
               ORDER BY 1, 2""",
            [experiment_id],
        )
    assert [(int(n), p) for n, p in rows] == [
        (n, f"HumanEval/{i}@{n}tok") for n in (16, 48) for i in range(3)
    ]
