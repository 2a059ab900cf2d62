"""AMD GPU power caps as a factor level, through a fake amdsmi module: checked, applied,
read back, journaled, restored (normally, and by `greenmon restore` after a SIGKILL), and
through the greenmon helper's allowlist."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenmon.hardware.checks import check_hardware
from greenmon.hardware.journal import UnitSettings
from greenmon.hardware.spec import Hardware
from greenmon.plan import parse_plan
from greenmon.privhelper import Caller, Helper, HelperConfig, HelperRefused
from greenmon.store import Store
from tests.fakes.amdsmi import STATE_ENV, FakeAmdGpu, FakeAmdsmi, load_state
from tests.fakes.rapl import standard_tree

REPO = Path(__file__).resolve().parents[2]
GPU = "aa000000-0000-0000-0000-000000000001"
SPEC = "tests.fakes.amdsmi:file_backed"

PLAN = """
name = "amdcap"
models = ["tiny"]
configurations = ["fake/cpu"]
workload = "gaissa-164"
prompts = {prompts}
max_new_tokens = 16
repetitions = 1
seed = 3
warmup_requests = 1
custom_engines = {{ fake = "tests.fakes.engine:FakeEngine" }}

[cooldown]
before_s = 0.2
after_s = 0.1

[factors]
gpu_power_limit_w = [{watts}]

[hardware]
gpu_vendor = "amd"
amdsmi_module = "{spec}"

[probes.rapl]
rate_hz = 100
sysfs_root = "{powercap}"

[probes.host]
enabled = false
"""


def statuses(store: Store) -> dict[str, int]:
    _, rows = store.query("SELECT status, count(*) FROM restore_journal GROUP BY status")
    return dict(rows)


def test_a_cap_is_applied_read_back_journaled_and_restored(tmp_path: Path) -> None:
    gpu = FakeAmdGpu(GPU)
    module = FakeAmdsmi([gpu])
    hardware = Hardware(gpu_vendor="amd", amdsmi_module="fake-amdsmi")
    with Store.open(tmp_path / "db.duckdb") as store:
        settings = UnitSettings(store, hardware, "s", "e", 1, amdsmi=module)
        record = settings.apply({"gpu_power_limit_w": 300})
        assert record["gpu_power_limit_mw"] == {"requested": 300_000, "in_force": "300000"}
        assert gpu.power_cap_uw == 300_000_000
        _, rows = store.query("SELECT target, previous_value, read_back FROM restore_journal")
        [(target, previous, read_back)] = rows
        assert json.loads(target) == {
            "kind": "amdsmi",
            "module": "fake-amdsmi",
            "gpu": GPU,
            "setting": "power_cap_mw",
        }
        assert (previous, read_back) == ("750000", "300000")
        assert statuses(store) == {"applied": 1}
        assert settings.restore() == []
        assert gpu.power_cap_uw == 750_000_000
        assert statuses(store) == {"restored": 1}


def test_plan_check_refuses_levels_outside_the_range_and_nvidia_clocks(tmp_path: Path) -> None:
    module = FakeAmdsmi([FakeAmdGpu(GPU)])
    text = PLAN.format(prompts=2, watts="100, 300", spec="fake-amdsmi", powercap=tmp_path)
    plan = parse_plan(text.replace("[hardware]", "[hardware]\ngpu_devices = [0]"))
    problems = check_hardware(plan, amdsmi=module)
    assert len(problems) == 1 and "level 100 is outside AMD GPU" in problems[0]
    assert "200..750 W" in problems[0]
    clocks = parse_plan(
        text.replace("gpu_power_limit_w = [100, 300]", "gpu_locked_clocks_mhz = [[500, 900]]")
    )
    assert any("NVIDIA factor" in p for p in check_hardware(clocks, amdsmi=module))


def test_the_helper_writes_amd_caps_of_its_own_module_only(tmp_path: Path) -> None:
    os.environ[STATE_ENV] = str(tmp_path / "amd.json")
    try:
        standard_tree(tmp_path / "powercap")
        config = HelperConfig(tmp_path / "powercap", tmp_path / "cpu", amdsmi_module=SPEC)
        log = io.StringIO()
        helper = Helper(config, log)
        root = Caller(pid=1, uid=0, gid=0)

        def target(module: str = SPEC, gpu: str = GPU, setting: str = "power_cap_mw") -> str:
            return json.dumps({"kind": "amdsmi", "module": module, "gpu": gpu, "setting": setting})

        reply = helper.handle({"op": "setting_write", "target": target(), "value": "400000"}, root)
        assert reply == {"in_force": "400000", "previous": "750000"}
        assert load_state(tmp_path / "amd.json")[0].power_cap_uw == 400_000_000
        assert "AMD GPU" in log.getvalue() and "power_cap_mw" in log.getvalue()
        for bad, value, why in [
            (target(), "100000", "outside 200000..750000 mW"),
            (target(module="os:system"), "400000", "not the helper's"),
            (target(setting="fan"), "400000", "not one it changes"),
            (target(gpu="nope"), "400000", "knows no GPU"),
        ]:
            with pytest.raises(HelperRefused, match=why):
                helper.handle({"op": "setting_write", "target": bad, "value": value}, root)
        helper.close()
    finally:
        del os.environ[STATE_ENV]


def test_sigkill_mid_unit_then_greenmon_restore(tmp_path: Path) -> None:
    standard_tree(tmp_path / "powercap")
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN.format(prompts=40, watts=300, spec=SPEC, powercap=tmp_path / "powercap"))
    db = tmp_path / "run.duckdb"
    log = tmp_path / "requests.log"
    state = tmp_path / "amd.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GREENMON_FAKE_ENGINE_LOG": str(log),
        STATE_ENV: str(state),
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "greenmon.cli", "run", str(plan), "--db", str(db), "--quiet"]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # 1 warm-up request, then the measured ones: the third line is inside measure.
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached its measure phase"
        time.sleep(0.01)
    assert load_state(state)[0].power_cap_uw == 300_000_000  # in force while it measures
    process.send_signal(signal.SIGKILL)
    process.wait()
    with Store.open(db, read_only=True) as store:
        assert statuses(store) == {"applied": 1}
    restore = [sys.executable, "-m", "greenmon.cli", "restore", "--db", str(db)]
    result = subprocess.run(restore, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"AMD GPU {GPU} power_cap_mw" in result.stdout and "750000" in result.stdout
    assert load_state(state)[0].power_cap_uw == 750_000_000
    with Store.open(db, read_only=True) as store:
        assert statuses(store) == {"restored": 1}
