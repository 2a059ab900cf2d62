"""The deployment as README describes it: ``greenmon helper`` runs as root, ``greenmon
daemon`` (and ``probes``, ``restore``, ``plan check``) as an unprivileged user, each a
separate process, over a fake powercap tree whose ``energy_uj`` files are root's (0400)
and a fake cpufreq tree.

Needs root (to start the helper and to switch to the user with ``setpriv``), as CI runs;
skipped with the reason elsewhere.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import greenmon
from greenmon.store import Store
from tests.fakes.cpufreq import FakeCpufreqTree
from tests.fakes.rapl import FakeRaplTree, standard_tree

pytestmark = pytest.mark.slow

USER = "nobody"
REPO = Path(greenmon.__file__).resolve().parents[1]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the helper runs as root and the daemon as another user"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to run the daemon as an unprivileged user"
    try:
        user = pwd.getpwnam(USER)
    except KeyError:
        return f"needs the unprivileged user {USER!r}"
    group = grp.getgrgid(user.pw_gid).gr_name
    done = subprocess.run(
        ["setpriv", f"--reuid={USER}", f"--regid={group}", "--clear-groups",
         sys.executable, "-c", "import greenmon.privhelper, duckdb"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        return (
            f"user {USER!r} cannot run {sys.executable} with greenmon from {REPO} "
            f"(make the checkout and the virtual environment readable: o+rx): {done.stderr}"
        )
    return None


@dataclass
class Deployment:
    base: Path
    group: str
    powercap: Path
    cpu: FakeCpufreqTree
    tree: FakeRaplTree
    socket: Path
    data: Path
    log: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
        return env | {
            "PYTHONPATH": str(REPO),
            "HOME": str(self.data),
            # the API socket's directory must be the daemon user's own
            "GREENMON_SOCKET": str(self.data / "run" / "api.sock"),
            "GREENMON_HELPER_SOCKET": str(self.socket),
            "GREENMON_CACHE_DIR": str(self.data / "cache"),
            "HF_HUB_OFFLINE": "1",
        }

    def as_user(self, args: Sequence[str], timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
        """``greenmon ARGS`` as the unprivileged user, in a separate process."""
        return subprocess.run(
            ["setpriv", f"--reuid={USER}", f"--regid={self.group}", "--clear-groups",
             sys.executable, "-m", "greenmon.cli", *args],
            env=self.env(), cwd=self.data, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip

    def config(self, name: str, helper_socket: Path) -> Path:
        path = self.data / name
        path.write_text(
            # 50 Hz (the default polls at 5 Hz): many reads through the helper in 3 s
            f'[probes.rapl]\nrate_hz = 50\nsysfs_root = "{self.powercap}"\n'
            f'helper_socket = "{helper_socket}"\n'
            "[probes.host]\nenabled = false\n[probes.estimate]\nenabled = false\n"
        )
        return path


def _advance(tree: FakeRaplTree, stop: threading.Event) -> None:
    while not stop.wait(0.01):
        for zone in tree.zones.values():
            zone.advance(1000)


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    why = _why_not()
    if why is not None:
        pytest.skip(why)
    group = grp.getgrgid(pwd.getpwnam(USER).pw_gid).gr_name
    base = Path(tempfile.mkdtemp(prefix="gmh-", dir="/tmp"))
    base.chmod(0o755)  # the user must reach the trees and its data directory
    tree = standard_tree(base / "powercap")
    for zone in tree.zones.values():
        (zone.path / "energy_uj").chmod(0o400)  # root's only, as since PLATYPUS
    cpu = FakeCpufreqTree(base / "cpu")
    data = base / "data"
    data.mkdir()
    data.chmod(0o777)
    socket_path = base / "helper" / "helper.sock"
    log = base / "helper.log"
    stop = threading.Event()
    advancer = threading.Thread(target=_advance, args=(tree, stop))
    advancer.start()
    with log.open("w") as log_file:
        helper = subprocess.Popen(
            [sys.executable, "-m", "greenmon.cli", "helper", "--socket", str(socket_path),
             "--group", group, "--powercap-root", str(tree.root),
             "--cpufreq-root", str(cpu.root)],
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log_file, stderr=log_file,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "listening at" not in log.read_text():
            assert helper.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the helper did not start"
            time.sleep(0.1)
        yield Deployment(base, group, tree.root, cpu, tree, socket_path, data, log)
    finally:
        helper.terminate()
        try:
            helper.wait(10)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()
        stop.set()
        advancer.join()
        shutil.rmtree(base, ignore_errors=True)


def test_the_helper_socket_is_root_and_the_groups(deployment: Deployment) -> None:
    info = deployment.socket.stat()
    assert info.st_uid == 0
    assert grp.getgrgid(info.st_gid).gr_name == deployment.group
    assert info.st_mode & 0o777 == 0o660


def test_a_daemon_run_as_a_user_measures_rapl_through_the_helper(
    deployment: Deployment,
) -> None:
    config = deployment.config("with-helper.toml", deployment.socket)
    probes = deployment.as_user(["probes", "--config", str(config), "--json"])
    assert probes.returncode == 0, probes.stderr
    rapl = next(p for p in json.loads(probes.stdout) if p["probe"] == "rapl")
    assert rapl["available"], rapl
    assert rapl["access"] == f"through the greenmon helper at {deployment.socket}"
    db = deployment.data / "user.duckdb"
    daemon = deployment.as_user(
        ["daemon", "--db", str(db), "--config", str(config), "--duration", "3", "--json"]
    )
    assert daemon.returncode == 0, daemon.stderr
    summary = json.loads(daemon.stdout)
    state = {p["probe"]: p for p in summary["probes"]}["rapl"]
    assert state["state"] == "stopped" and state["errors"] == 0, state
    assert db.stat().st_uid == pwd.getpwnam(USER).pw_uid  # written by the user, not root
    with Store.open(db, read_only=True) as store:
        _, rows = store.query(
            """SELECT c.name, c.metadata->>'access', count(*), min(s.value), max(s.value),
                      bool_and(s.t_ns > 0)
               FROM samples s JOIN channels c USING (channel_id)
               WHERE c.probe = 'rapl' GROUP BY ALL ORDER BY 1"""
        )
    assert [r[0] for r in rows] == [
        "package-0.energy_uj", "package-0/core.energy_uj", "package-0/dram.energy_uj"
    ]  # fmt: skip
    for name, access, count, low, high, stamped in rows:
        assert access == "helper", name
        assert count > 30, (name, count)  # 50 Hz for about 3 s, on a busy 2-core machine
        assert high > low, name  # the counters the test advances, really read
        assert stamped


def test_without_the_helper_the_daemon_says_rapl_is_unreadable_and_why(
    deployment: Deployment,
) -> None:
    missing = deployment.base / "helper" / "none.sock"
    config = deployment.config("without-helper.toml", missing)
    daemon = deployment.as_user(
        ["daemon", "--db", str(deployment.data / "none.duckdb"), "--config", str(config),
         "--duration", "1"]
    )  # fmt: skip
    assert daemon.returncode == 0, daemon.stderr
    line = next(x for x in daemon.stdout.splitlines() if x.strip().startswith("rapl"))
    assert "unavailable" in line
    assert "energy_uj is readable only by root" in line
    assert f"no greenmon helper answers at {missing}" in line
    assert "sudo greenmon helper --group GROUP" in line
    assert "Traceback" not in daemon.stderr


def test_restore_as_a_user_goes_through_the_helper_and_is_logged_with_its_uid(
    deployment: Deployment,
) -> None:
    db = deployment.data / "journal.duckdb"
    governor = deployment.cpu.root / "cpu0" / "cpufreq" / "scaling_governor"
    governor.write_text("performance\n")  # what a killed run left in force
    with Store.open(db) as store:
        store.execute(
            """INSERT INTO restore_journal (session_id, experiment_id, unit_id, target,
                   previous_value, applied_value, status)
               VALUES ('s', 'e', 1, ?, 'powersave', 'performance', 'applied')""",
            [json.dumps({"kind": "cpufreq", "path": str(governor)})],
        )
    os.chown(db, pwd.getpwnam(USER).pw_uid, -1)
    done = deployment.as_user(["restore", "--db", str(db)])
    assert done.returncode == 0, done.stderr
    assert f"restored {governor} to powersave" in done.stdout
    assert governor.read_text().strip() == "powersave"
    uid = pwd.getpwnam(USER).pw_uid
    assert f"uid {uid} " in deployment.log.read_text()
    assert "'performance' to 'powersave'" in deployment.log.read_text()


def test_the_helper_refuses_a_user_paths_outside_its_roots_and_values_outside_ranges(
    deployment: Deployment,
) -> None:
    cpu0 = deployment.cpu.root / "cpu0" / "cpufreq"
    attempts = [
        ("/etc/shadow", "x"),
        (f"{cpu0}/../../../../../etc/hostname", "x"),
        (f"{cpu0}/scaling_max_freq", "99999999"),
        (f"{cpu0}/scaling_governor", "userspace-evil"),
    ]
    script = (
        "import json, sys\n"
        "from greenmon.privhelper import HelperClient, HelperRefused\n"
        "client, out = HelperClient(), []\n"
        "for path, value in json.loads(sys.argv[1]):\n"
        "    target = json.dumps({'kind': 'cpufreq', 'path': path})\n"
        "    try:\n"
        "        out.append('ran: ' + client.setting_write(target, value))\n"
        "    except HelperRefused as error:\n"
        "        out.append(str(error))\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        ["setpriv", f"--reuid={USER}", f"--regid={deployment.group}", "--clear-groups",
         sys.executable, "-c", script, json.dumps(attempts)],
        env=deployment.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout)
    assert "not a cpufreq scaling file" in outcomes[0]
    assert "not a cpufreq scaling file" in outcomes[1]
    assert "outside" in outcomes[2] and "kHz" in outcomes[2]
    assert "not available" in outcomes[3]
    assert deployment.cpu.read(0, "scaling_max_freq") == "3600000"


def test_plan_check_as_a_user_says_settings_go_through_the_helper_or_why_not(
    deployment: Deployment,
) -> None:
    def plan(name: str, helper_socket: Path) -> Path:
        path = deployment.data / name
        path.write_text(
            'name = "dvfs"\nmodels = ["tiny"]\nconfigurations = ["torch/cpu"]\n'
            "prompts = 2\nmax_new_tokens = 2\nrepetitions = 1\n"
            '[factors]\ncpu_governor = ["performance", "powersave"]\n'
            f'[hardware]\ncpufreq_root = "{deployment.cpu.root}"\n'
            f'helper_socket = "{helper_socket}"\n'
        )
        return path

    from greenmon.models import build_builtin_model

    # The built-in model, built once by this (root) process, read by the user: building it
    # again as the user would only cost time.
    built = build_builtin_model("tiny")
    copy = deployment.data / "cache" / "models" / built.name
    if not copy.exists():
        shutil.copytree(built, copy)
    subprocess.run(["chmod", "-R", "a+rX", str(deployment.data / "cache")], check=True)
    done = deployment.as_user(["plan", "check", str(plan("helper.toml", deployment.socket))])
    assert done.returncode == 0, done.stderr
    assert f"hardware settings are written through the greenmon helper at {deployment.socket}" in (
        done.stdout
    )
    missing = deployment.base / "helper" / "none.sock"
    refused = deployment.as_user(["plan", "check", str(plan("no-helper.toml", missing))])
    assert refused.returncode == 2
    assert "cpufreq files are not writable by this user" in refused.stderr
    assert f"no greenmon helper answers at {missing}" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_plan_run_as_a_user_applies_its_factors_through_the_helper(
    deployment: Deployment,
) -> None:
    """`greenmon run` as the user: each unit's governor is written through the helper (the
    helper logs the user's uid), in force for the unit, restored after; RAPL read through
    the helper too."""
    before = deployment.cpu.values("scaling_governor")
    plan = deployment.data / "run-dvfs.toml"
    plan.write_text(
        'name = "dvfs-user"\nmodels = ["tiny"]\nconfigurations = ["fake/cpu"]\n'
        'workload = "gaissa-164"\nprompts = 2\nmax_new_tokens = 4\nrepetitions = 1\nseed = 3\n'
        'warmup_requests = 0\ncustom_engines = { fake = "tests.fakes.engine:FakeEngine" }\n'
        "[cooldown]\nbefore_s = 0.1\nafter_s = 0.1\n"
        '[factors]\ncpu_governor = ["performance", "schedutil"]\n'
        f'[hardware]\ncpufreq_root = "{deployment.cpu.root}"\n'
        f'helper_socket = "{deployment.socket}"\n'
        f'[probes.rapl]\nsysfs_root = "{deployment.powercap}"\n'
        f'helper_socket = "{deployment.socket}"\n'
        "[probes.host]\nenabled = false\n[probes.estimate]\nenabled = false\n"
    )
    db = deployment.data / "run.duckdb"
    done = deployment.as_user(["run", str(plan), "--db", str(db), "--quiet"], timeout_s=300)
    assert done.returncode == 0, done.stderr
    assert deployment.cpu.values("scaling_governor") == before  # restored after the run
    uid = pwd.getpwnam(USER).pw_uid
    helper_log = deployment.log.read_text()
    for governor in ("performance", "schedutil"):
        assert f"to '{governor}'" in helper_log, helper_log
    assert f"uid {uid} " in helper_log
    with Store.open(db, read_only=True) as store:
        _, units = store.query("SELECT status, factors, settings FROM units ORDER BY unit_id")
        _, journal = store.query("SELECT DISTINCT status FROM restore_journal")
        _, access = store.query(
            "SELECT DISTINCT metadata->>'access' FROM channels WHERE probe = 'rapl'"
        )
    assert [u[0] for u in units] == ["done", "done"]
    for _, factors, settings in units:
        in_force = json.loads(settings)["cpu_governor"]["in_force"]
        assert in_force == json.loads(factors)["cpu_governor"]
    assert journal == [("restored",)]
    assert access == [("helper",)]
