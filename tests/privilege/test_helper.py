"""The greenmon helper's allowlist and protocol, in-process over fake sysfs trees and a fake
NVML module: paths outside its roots and values outside the hardware's ranges are refused,
every change is logged with the caller's uid."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import greenmon
from greenmon.privhelper import (
    Caller,
    Helper,
    HelperClient,
    HelperConfig,
    HelperRefused,
    HelperUnavailable,
    helper_answers,
    serve,
)
from tests.api.fakes import short_socket_dir
from tests.fakes.cpufreq import MAX_KHZ, MIN_KHZ, FakeCpufreqTree
from tests.fakes.rapl import standard_tree

ROOT = Caller(pid=1, uid=0, gid=0)
STRANGER = Caller(pid=os.getpid(), uid=4242, gid=4242)
NVML_SPEC = "tests.fakes.nvml:two_gpus"
REPO = Path(greenmon.__file__).resolve().parents[1]
GPU = "GPU-11111111-aaaa-bbbb-cccc-000000000000"


def cpufreq_target(path: Path | str) -> str:
    return json.dumps({"kind": "cpufreq", "path": str(path)})


def nvml_target(setting: str, module: str = NVML_SPEC, gpu: str = GPU) -> str:
    return json.dumps({"kind": "nvml", "module": module, "gpu": gpu, "setting": setting})


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, FakeCpufreqTree]:
    standard_tree(tmp_path / "powercap")
    return tmp_path / "powercap", FakeCpufreqTree(tmp_path / "cpu")


@pytest.fixture
def helper(trees: tuple[Path, FakeCpufreqTree]) -> Iterator[tuple[Helper, io.StringIO]]:
    powercap, cpu = trees
    log = io.StringIO()
    config = HelperConfig(powercap_root=powercap, cpufreq_root=cpu.root, nvml_module=NVML_SPEC)
    made = Helper(config, log)
    yield made, log
    made.close()


def test_a_change_is_applied_read_back_and_logged_with_the_callers_uid(
    helper: tuple[Helper, io.StringIO], trees: tuple[Path, FakeCpufreqTree]
) -> None:
    made, log = helper
    _, cpu = trees
    target = cpufreq_target(cpu.root / "cpu1" / "cpufreq" / "scaling_governor")
    reply = made.handle({"op": "setting_write", "target": target, "value": "performance"}, ROOT)
    assert reply == {"in_force": "performance", "previous": "powersave"}
    assert cpu.values("scaling_governor") == ["powersave", "performance"]
    assert "uid 0 (pid 1): changed " in log.getvalue()
    assert "'powersave' to 'performance'" in log.getvalue()
    power = made.handle(
        {"op": "setting_write", "target": nvml_target("power_limit_mw"), "value": "150000"}, ROOT
    )
    assert power["in_force"] == "150000" and power["previous"] == "300000"
    clocks = nvml_target("gpu_locked_clocks_mhz")
    locked = made.handle({"op": "setting_write", "target": clocks, "value": "600,1400"}, ROOT)
    assert locked["in_force"] == "1395"  # the nearest supported clock, read back
    assert made.handle({"op": "setting_write", "target": clocks, "value": "reset"}, ROOT)


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "{cpu}/cpu0/cpufreq/../../../../etc/passwd",
        "{cpu}/cpu0/cpufreq/scaling_setspeed",
        "{cpu}/cpu0/cpufreq/cpuinfo_max_freq",
        "{cpu}/online",
        "cpu0/cpufreq/scaling_governor",
        "{cpu}/cpu9/cpufreq/scaling_governor",  # does not exist
        "{cpu}/cpu5/cpufreq/scaling_governor",  # a symlink out of the root (made below)
        "{cpu}/cpux/cpufreq/scaling_governor",
    ],
)
def test_paths_outside_the_cpufreq_root_are_refused(
    helper: tuple[Helper, io.StringIO], trees: tuple[Path, FakeCpufreqTree], path: str
) -> None:
    made, log = helper
    _, cpu = trees
    outside = cpu.root.parent / "outside" / "cpufreq"
    outside.mkdir(parents=True)
    (outside / "scaling_governor").write_text("powersave\n")
    (cpu.root / "cpu5").mkdir()
    (cpu.root / "cpu5" / "cpufreq").symlink_to(outside)
    target = cpufreq_target(path.format(cpu=cpu.root))
    for op in ("setting_write", "setting_read"):
        with pytest.raises(HelperRefused):
            made.handle({"op": op, "target": target, "value": "performance"}, ROOT)
    assert (outside / "scaling_governor").read_text() == "powersave\n"
    assert cpu.values("scaling_governor") == ["powersave", "powersave"]
    assert "changed" not in log.getvalue()


@pytest.mark.parametrize(
    ("target", "value", "why"),
    [
        ("cpu0/cpufreq/scaling_governor", "ondemand", "not available"),
        ("cpu0/cpufreq/scaling_governor", "performance\nx", "not available"),
        ("cpu0/cpufreq/scaling_max_freq", str(MAX_KHZ + 1), "outside"),
        ("cpu0/cpufreq/scaling_min_freq", str(MIN_KHZ - 1), "outside"),
        ("cpu0/cpufreq/scaling_max_freq", "-5", "outside"),
        ("nvml:power_limit_mw", "400000", "outside 100000..350000 mW"),
        ("nvml:power_limit_mw", "1e9", "outside"),
        ("nvml:gpu_locked_clocks_mhz", "100,1400", "outside 210..1410"),
        ("nvml:gpu_locked_clocks_mhz", "1400,600", "outside"),
        ("nvml:memory_locked_clocks_mhz", "9501,20000", "outside"),
        ("nvml:applications_clocks_mhz", "9501,999", "not a supported pair"),
    ],
)
def test_values_outside_the_hardwares_range_are_refused(
    helper: tuple[Helper, io.StringIO],
    trees: tuple[Path, FakeCpufreqTree],
    target: str,
    value: str,
    why: str,
) -> None:
    made, log = helper
    _, cpu = trees
    full = (
        nvml_target(target.split(":")[1])
        if target.startswith("nvml:")
        else cpufreq_target(cpu.root / target)
    )
    with pytest.raises(HelperRefused, match=why):
        made.handle({"op": "setting_write", "target": full, "value": value}, ROOT)
    assert cpu.values("scaling_governor") == ["powersave", "powersave"]
    assert cpu.values("scaling_max_freq") == [str(MAX_KHZ)] * 2
    assert "changed" not in log.getvalue()


def test_nvml_targets_must_name_the_helpers_own_module_and_a_known_gpu(
    helper: tuple[Helper, io.StringIO],
) -> None:
    made, _ = helper
    for target, why in [
        (nvml_target("power_limit_mw", module="os:system"), "not the helper's"),
        (nvml_target("fan_speed"), "not one the helper changes"),
        (nvml_target("power_limit_mw", gpu="GPU-nope"), "knows no GPU"),
        (json.dumps({"kind": "msr", "path": "/dev/cpu/0/msr"}), "not one the helper changes"),
        ("not json", "not a setting target"),
    ]:
        with pytest.raises(HelperRefused, match=why):
            made.handle({"op": "setting_write", "target": target, "value": "150000"}, ROOT)


def test_only_root_and_the_group_may_ask_and_unknown_requests_are_refused(
    helper: tuple[Helper, io.StringIO],
) -> None:
    made, log = helper
    with pytest.raises(HelperRefused, match="not in the greenmon helper's group"):
        made.handle({"op": "rapl_read"}, STRANGER)
    assert "uid 4242" in log.getvalue() and "refused 'rapl_read'" in log.getvalue()
    made.config.group_gid = 4242
    assert len(made.handle({"op": "rapl_read"}, STRANGER)["values"]) == 3
    with pytest.raises(HelperRefused, match="nothing else"):
        made.handle({"op": "exec", "argv": ["sh"]}, ROOT)


def test_the_socket_carries_rapl_reads_and_refusals(
    trees: tuple[Path, FakeCpufreqTree],
) -> None:
    powercap, cpu = trees
    config = HelperConfig(powercap_root=powercap, cpufreq_root=cpu.root, nvml_module=NVML_SPEC)
    ready, stop = threading.Event(), threading.Event()
    with short_socket_dir() as directory:
        path = directory / "helper.sock"
        assert helper_answers(path) is not None  # nothing there yet
        log = io.StringIO()
        thread = threading.Thread(
            target=serve, args=(config, path), kwargs={"ready": ready, "stop": stop, "log": log}
        )
        thread.start()
        try:
            assert ready.wait(10)
            assert oct(path.stat().st_mode & 0o777) == "0o600"  # no group: root only
            assert helper_answers(path) is None
            client = HelperClient(path)
            channels = client.rapl_channels()
            assert [c["name"] for c in channels] == [
                "package-0.energy_uj", "package-0/core.energy_uj", "package-0/dram.energy_uj"
            ]  # fmt: skip
            assert client.rapl_read() == [0.0, 0.0, 0.0]
            with pytest.raises(HelperRefused, match="not a cpufreq scaling file"):
                client.setting_write(cpufreq_target("/etc/shadow"), "x")
            # a request that is not JSON is answered, and the connection stays usable
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.connect(str(path))
            raw.sendall(b"{oops\n")
            assert b"not a JSON request" in raw.recv(4096)
            raw.close()
            assert len(client.rapl_read()) == 3
            client.close()
        finally:
            stop.set()
            thread.join(10)
        assert not path.exists()
        with pytest.raises(HelperUnavailable, match="no greenmon helper answers"):
            HelperClient(path).rapl_read()


def test_the_helper_serves_the_socket_systemd_passes(
    trees: tuple[Path, FakeCpufreqTree],
) -> None:
    """Socket activation as greenmon-helper.socket does it: the listening socket arrives as
    fd 3 with LISTEN_PID / LISTEN_FDS; the helper serves it instead of binding its own."""
    powercap, cpu = trees
    with short_socket_dir() as directory:
        activated = directory / "activated.sock"
        own = directory / "own.sock"  # what the helper would bind without systemd
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(activated))
        listener.listen(16)
        fd = listener.fileno()
        log = directory / "helper.log"
        # as systemd starts it: fd 3, and LISTEN_PID naming the helper's own process
        launcher = (
            "import os, sys\n"
            "os.dup2(int(sys.argv[1]), 3)\n"
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
            "os.execv(sys.executable, [sys.executable, '-m', 'greenmon.cli', *sys.argv[2:]])\n"
        )
        with log.open("w") as log_file:
            helper = subprocess.Popen(
                [sys.executable, "-c", launcher, str(fd), "helper",
                 "--socket", str(own), "--powercap-root", str(powercap),
                 "--cpufreq-root", str(cpu.root), "--allow-non-root"],
                pass_fds=[fd], stdout=log_file, stderr=log_file,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
        listener.close()  # the helper holds it now
        try:
            deadline = time.monotonic() + 60
            while "listening at" not in log.read_text():
                assert helper.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the helper did not start"
                time.sleep(0.05)
            assert str(activated) in log.read_text()
            client = HelperClient(activated)
            assert len(client.rapl_read()) == 3
            with pytest.raises(HelperRefused, match="not a cpufreq scaling file"):
                client.setting_write(cpufreq_target("/etc/shadow"), "x")
            client.close()
            assert not own.exists()
        finally:
            helper.terminate()
            helper.wait(10)
        assert helper.returncode in (0, -15), log.read_text()
