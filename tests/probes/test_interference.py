"""The host probe splits busy CPU into greenmon's own process tree and the
background; the NVML probe counts the background's processes on each GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmon.probes.host import HostProbe, Options
from greenmon.probes.nvml import NvmlProbe
from greenmon.probes.nvml import Options as NvmlOptions
from greenmon.probes.proctree import ProcessTree, split_percent, tree_pids
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.fakes.proc import FakeProc


def test_background_is_busy_time_minus_the_own_tree(tmp_path: Path) -> None:
    fake = FakeProc(tmp_path / "proc", cores=2)
    # the watched process (the daemon) with one child (a served engine) and a grandchild
    fake.set_process(utime=0, stime=0, rss_pages=10, children=(5000,))
    fake.set_process(utime=0, stime=0, rss_pages=10, pid=5000, ppid=fake.pid, children=(5001,))
    fake.set_process(utime=0, stime=0, rss_pages=10, pid=5001, ppid=5000)
    fake.set_process(utime=0, stime=0, rss_pages=10, pid=7000)  # not ours
    probe = HostProbe(
        Options(proc_root=str(tmp_path / "proc"), sys_root=str(tmp_path / "sys"), pid=fake.pid)
    )
    names = [c.name for c in probe.open()]
    assert names[-3:] == ["tree.cpu_percent", "background.cpu_percent", "steal.cpu_percent"]
    # 100 ticks per core have passed: processes ran 150 of the 200, and the hypervisor
    # stole 20 more (no process here ran then: not background)
    fake.set_cpu(
        [
            (150, 0, 0, 30, 0, 0, 0, 20, 0, 0),
            (100, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            (50, 0, 0, 50, 0, 0, 0, 0, 0, 0),
        ]
    )
    # own tree: 30 + 10 ticks, and 20 from the grandchild; pid 7000's 90 are background
    fake.set_process(utime=30, stime=10, rss_pages=10, children=(5000,))
    fake.set_process(utime=0, stime=0, rss_pages=10, pid=5000, ppid=fake.pid, children=(5001,))
    fake.set_process(utime=20, stime=0, rss_pages=10, pid=5001, ppid=5000)
    fake.set_process(utime=90, stime=0, rss_pages=10, pid=7000)
    values = dict(zip(names, probe.read(), strict=True))
    probe.close()
    assert values["tree.cpu_percent"] == pytest.approx(60.0)  # of one core
    assert values["background.cpu_percent"] == pytest.approx(90.0)
    assert values["steal.cpu_percent"] == pytest.approx(20.0)
    assert values["cpu.percent"] == pytest.approx(85.0)  # psutil's figure: steal is busy


def test_tree_membership_without_children_files_scans_parents(tmp_path: Path) -> None:
    fake = FakeProc(tmp_path / "proc", cores=1)
    fake.set_process(utime=1, stime=1, rss_pages=1, children=(5000,))
    fake.set_process(utime=1, stime=1, rss_pages=1, pid=5000, ppid=fake.pid)
    fake.set_process(utime=1, stime=1, rss_pages=1, pid=7000, ppid=1)
    for children in (tmp_path / "proc").glob("*/task/*/children"):
        children.unlink()  # a kernel without CONFIG_PROC_CHILDREN
    assert tree_pids(tmp_path / "proc", [fake.pid, 999]) == {fake.pid, 5000}
    assert ProcessTree(tmp_path / "proc", [fake.pid]).cpu_ticks() == 4


def test_split_never_gives_the_tree_more_than_was_busy() -> None:
    assert split_percent(busy_ticks=10, total_ticks=200, own_ticks=30, cores=2) == (
        10.0,
        0.0,
        0.0,
    )
    assert split_percent(busy_ticks=10, total_ticks=0, own_ticks=0, cores=2) == (0.0, 0.0, 0.0)
    # steal is neither the tree's nor the background's
    assert split_percent(busy_ticks=50, total_ticks=200, own_ticks=30, cores=2, steal=15) == (
        30.0,
        5.0,
        15.0,
    )


def test_nvml_counts_gpu_processes_outside_the_own_tree(tmp_path: Path) -> None:
    fake = FakeProc(tmp_path / "proc", cores=1)
    fake.set_process(utime=0, stime=0, rss_pages=1, children=(5000,))
    fake.set_process(utime=0, stime=0, rss_pages=1, pid=5000, ppid=fake.pid)
    gpu = FakeGpu("GPU-a", compute_pids=[5000])  # greenmon's served engine: not background
    probe = NvmlProbe(
        NvmlOptions(proc_root=str(tmp_path / "proc"), tree_pids=[fake.pid]),
        nvml=FakeNvml([gpu]),
    )
    names = [c.name for c in probe.open()]
    assert dict(zip(names, probe.read(), strict=True))["gpu0.background_processes"] == 0.0
    gpu.compute_pids = [5000, 8001, 8002]
    assert dict(zip(names, probe.read(), strict=True))["gpu0.background_processes"] == 2.0
    probe.close()


def test_interference_keys_at_their_defaults_keep_the_plan_hash() -> None:
    from greenmon.errors import PlanError
    from greenmon.plan import parse_plan

    base = 'models = ["tiny"]\nconfigurations = ["torch/cpu"]\n'
    plain = parse_plan(base)
    assert "background_cpu_percent_max" not in plain.canonical()["cooldown"]
    defaults = parse_plan(base + "[cooldown]\nbackground_cpu_percent_max = 25.0\n")
    assert defaults.plan_hash == plain.plan_hash  # experiments started earlier still resume
    waiting = parse_plan(base + "[cooldown]\nwait_for_quiet_s = 60\n")
    assert waiting.plan_hash != plain.plan_hash
    with pytest.raises(PlanError, match=r"cooldown\.wait_for_quiet_s must not be negative"):
        parse_plan(base + "[cooldown]\nwait_for_quiet_s = -1\n")


def _stat(fake: FakeProc, busy: int, total_per_core: int) -> None:
    per_core = [(busy // 2, 0, 0, total_per_core - busy // 2, 0, 0, 0, 0, 0, 0)] * 2
    fake.set_cpu([(busy, 0, 0, 2 * total_per_core - busy, 0, 0, 0, 0, 0, 0), *per_core])  # type: ignore[list-item]


def test_the_meter_reads_what_the_host_probe_reads(tmp_path: Path) -> None:
    from greenmon.interference import busy_note, meter_for

    fake = FakeProc(tmp_path / "proc", cores=2)
    host = {"proc_root": str(tmp_path / "proc"), "pid": fake.pid}
    meter = meter_for(host)
    _stat(fake, busy=100, total_per_core=100)
    fake.set_process(utime=20, stime=0, rss_pages=1)  # the watched process: own tree
    assert meter.percent() == pytest.approx(80.0)
    assert meter.percent() == 0.0  # nothing since the last look
    # nothing changes while it looks: no note
    assert busy_note(25.0, host_options=host, duration_s=0.01) is None


def test_status_and_the_tui_count_the_units_beside_other_load() -> None:
    from greenmon.api.messages import Progress, decode
    from greenmon.commands.status import progress_lines
    from greenmon.tui.model import result_rows

    results = [
        {"configuration": "onnx/cpu", "units": 3, "flags": [], "background_load_units": 0},
        {
            "configuration": "torch/cpu",
            "units": 3,
            "flags": ["estimated", "background_load"],
            "background_load_units": 2,
        },
    ]
    progress = {"experiment_id": "e1", "plan_name": "p", "status": "running", "results": results}
    typed = decode(progress, Progress)
    assert (
        "  background_load: 2 finished units ran beside other load (torch/cpu 2)"
        in progress_lines(typed)
    )
    flags = [row[-1] for row in result_rows(typed.results)]
    assert flags == ["ok", "estimated, background_load (2 units)"]


def test_steal_is_flagged_on_its_own_and_said_in_the_findings(tmp_path: Path) -> None:
    """A unit whose measure the hypervisor slowed (steal above the threshold) is flagged
    cpu_steal, not background_load, and the findings say so with the figure."""
    import pandas as pd

    from greenmon.analysis.background import steal_note
    from greenmon.probes.base import Channel
    from greenmon.store import SampleBatch, Store

    period_ns, s = 100_000_000, 1_000_000_000
    with Store.open(tmp_path / "steal.duckdb") as store:
        session = store.start_session({"host": "vm"}, 0, 0)
        background, steal = store.register_channels(
            session,
            "host",
            [
                Channel("background.cpu_percent", "%", "gauge"),
                Channel("steal.cpu_percent", "%", "gauge"),
            ],
            period_ns,
        )
        batch = SampleBatch()
        for k in range(61):  # 6 s: steal 40% of a core from 2 s on, background 5% throughout
            batch.append_row(k * period_ns, [background, steal], [5.0, 40.0 if k >= 20 else 0.0])
        store.write(batch, [], session)
        store.execute(
            "INSERT INTO units (experiment_id, unit_id, model, engine, provider, repetition, "
            "status, attempt, session_id, started_ns, ended_ns) "
            "VALUES ('e', 0, 'tiny', 'torch', 'cpu', 1, 'done', 1, ?, 0, ?)",
            [session, 6 * s],
        )
        for phase, start_ns, end_ns in (("cooldown_before", 0, 2 * s), ("measure", 2 * s, 6 * s)):
            store.execute(
                "INSERT INTO phases (experiment_id, unit_id, attempt, phase, session_id, "
                "start_ns, end_ns) VALUES ('e', 0, 1, ?, ?, ?, ?)",
                [phase, session, start_ns, end_ns],
            )
        columns, rows = store.query(
            "SELECT configuration, flags, steal_cpu_percent, background_cpu_percent "
            "FROM unit_results"
        )
    (row,) = [dict(zip(columns, r, strict=True)) for r in rows]
    assert row["steal_cpu_percent"] == pytest.approx(40.0)
    assert row["background_cpu_percent"] == pytest.approx(5.0)
    assert "cpu_steal" in row["flags"] and "background_load" not in row["flags"]
    note = steal_note(pd.DataFrame([row]))
    assert note is not None and "1 of 1 units" in str(note) and "40% of a core" in str(note)
    assert steal_note(pd.DataFrame([{**row, "flags": ["estimated"]}])) is None
