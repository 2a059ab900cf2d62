"""One thread for every blocking probe; columnar buffers; the host probe on /proc."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import anyio
import numpy as np
import pytest

from greenmon.probes.base import Channel, Values
from greenmon.probes.host import HostProbe, Options
from greenmon.sampling import EdgeDesk, Sampler, _Rows, run_samplers
from greenmon.store import Event, SampleBatch
from tests.fakes.proc import FakeProc

pytestmark = pytest.mark.anyio


class ThreadProbe:
    """Records which thread read it; optionally blocks in read()."""

    name: ClassVar[str] = "thread"
    default_rate_hz: ClassVar[float] = 50.0

    def __init__(self, name: str, block_s: float = 0.0, blocking: bool = False) -> None:
        self.name = name  # type: ignore[misc]
        self.block_s = block_s
        self.blocking_reads = blocking
        self.threads: set[int] = set()
        self.reads = 0

    def open(self) -> Sequence[Channel]:
        return [Channel(f"{self.name}.n", "1", "gauge"), Channel(f"{self.name}.x", "1", "gauge")]

    def read(self) -> Values:
        self.threads.add(threading.get_ident())
        self.reads += 1
        if self.block_s:
            time.sleep(self.block_s)
        return [float(self.reads), None if self.reads % 2 else 1.0]

    def close(self) -> None:
        pass


def _sampler(probe: ThreadProbe, rate_hz: float, first_id: int) -> Sampler:
    send, receive = anyio.create_memory_object_stream[SampleBatch | Event](16)
    receive.close()
    return Sampler(probe, probe.open(), [first_id, first_id + 1], rate_hz, send)


async def _run_for(samplers: list[Sampler], seconds: float) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(run_samplers, samplers)
        await anyio.sleep(seconds)
        for sampler in samplers:
            sampler.stop()


def _stored(sampler: Sampler) -> dict[str, list[float]]:
    batch = SampleBatch()
    for handed, _events in sampler.sink:
        batch.extend(handed)
    table = batch.to_arrow().to_pydict()
    out: dict[str, list[float]] = {}
    for channel_id, value in zip(table["channel_id"], table["value"], strict=True):
        out.setdefault(sampler.channels[channel_id - sampler.channel_ids[0]].name, []).append(value)
    return out


async def test_blocking_probes_share_one_thread_each_at_its_own_rate() -> None:
    fast, slow = ThreadProbe("fast"), ThreadProbe("slow")
    samplers = [_sampler(fast, 100.0, 1), _sampler(slow, 10.0, 11)]
    await _run_for(samplers, 1.0)
    assert fast.threads == slow.threads and len(fast.threads) == 1
    assert fast.threads != {threading.get_ident()}  # not the event loop's thread
    assert slow.reads >= 3 and fast.reads >= 4 * slow.reads
    for sampler, probe in zip(samplers, (fast, slow), strict=True):
        values = _stored(sampler)
        # every read is handed off, in order; None values are no samples at all
        assert values[f"{probe.name}.n"] == [float(n) for n in range(1, probe.reads + 1)]
        assert values[f"{probe.name}.x"] == [1.0] * (probe.reads // 2)
        assert sampler.health.samples == probe.reads + probe.reads // 2
        assert sampler.health.state == "stopped"


async def test_a_probe_declaring_blocking_reads_gets_its_own_thread_and_starves_no_one() -> None:
    stuck = ThreadProbe("stuck", block_s=0.4, blocking=True)
    fast = ThreadProbe("fast")
    samplers = [_sampler(stuck, 50.0, 1), _sampler(fast, 100.0, 11)]
    await _run_for(samplers, 1.0)
    assert stuck.threads.isdisjoint(fast.threads)
    # 1 s at 100 Hz: far more reads than the 3 a shared thread would allow
    assert fast.reads > 30
    assert stuck.reads <= 4


def test_rows_buffer_grows_and_cuts_long_columns() -> None:
    rows = _Rows([7, 8, 9], capacity=2)
    for k in range(5):
        rows.append(100 + k, [float(k), None, float("nan") if k == 2 else -float(k)])
    batch = rows.take()
    table = batch.to_arrow().to_pydict()
    assert table["channel_id"] == [7, 9, 7, 9, 7, 7, 9, 7, 9]
    assert table["t_ns"] == [100, 100, 101, 101, 102, 103, 103, 104, 104]
    assert table["value"] == [0.0, -0.0, 1.0, -1.0, 2.0, 3.0, -3.0, 4.0, -4.0]
    assert len(rows.take()) == 0  # the buffer is emptied and reused
    mixed = SampleBatch()
    mixed.append_row(1, [1, 2], [5.0, None])
    mixed.extend(SampleBatch.from_columns(np.array([3]), np.array([2]), np.array([6.0])))
    assert len(mixed) == 2
    assert mixed.to_arrow().to_pydict() == {
        "channel_id": [1, 3],
        "t_ns": [1, 2],
        "value": [5.0, 6.0],
    }


def test_host_probe_reads_proc_as_psutil_counts(tmp_path: Path) -> None:
    fake = FakeProc(tmp_path / "proc", cores=2)
    probe = HostProbe(
        Options(proc_root=str(tmp_path / "proc"), sys_root=str(tmp_path / "sys"), pid=fake.pid)
    )
    names = [c.name for c in probe.open()]
    # 100 ticks per cpu: cpu0 busy 50 (30 user + 10 system + 10 irq), idle 40 + iowait 10;
    # cpu1 busy 100; guest (in user already) is not counted twice
    fake.set_cpu(
        [
            (130, 0, 10, 40, 10, 10, 0, 0, 99, 0),
            (30, 0, 10, 40, 10, 10, 0, 0, 0, 0),
            (100, 0, 0, 0, 0, 0, 0, 0, 99, 0),
        ]
    )
    fake.set_memory(total_kb=1000, available_kb=250, swap_total_kb=400, swap_free_kb=300)
    clk_tck = os.sysconf("SC_CLK_TCK")
    fake.set_process(utime=clk_tck, stime=0, rss_pages=10)
    values = dict(zip(names, probe.read(), strict=True))
    probe.close()
    assert values["cpu.percent"] == pytest.approx(75.0)
    assert values["cpu0.percent"] == pytest.approx(50.0)
    assert values["cpu1.percent"] == pytest.approx(100.0)
    assert values["cpu.freq_mhz"] == pytest.approx(2050.0)  # /proc/cpuinfo: no cpufreq
    assert values["ram.used_bytes"] == 750 * 1024
    assert values["ram.percent"] == pytest.approx(75.0)
    assert values["swap.used_bytes"] == 100 * 1024
    assert values["swap.percent"] == pytest.approx(25.0)
    assert values["proc.rss_bytes"] == 10 * os.sysconf("SC_PAGE_SIZE")
    # one second of CPU since open(), over the (short) wall time since: far above 100 %
    assert values["proc.cpu_percent"] is not None and values["proc.cpu_percent"] > 100.0


def test_host_probe_without_the_watched_process_is_unavailable(tmp_path: Path) -> None:
    FakeProc(tmp_path / "proc")
    from greenmon.probes.base import ProbeUnavailable

    probe = HostProbe(Options(proc_root=str(tmp_path / "proc"), pid=999_999))
    with pytest.raises(ProbeUnavailable, match="cannot watch process 999999"):
        probe.open()


async def test_an_edge_is_read_on_the_sampling_thread_and_stamped_on_every_probe() -> None:
    """An edge asked from another thread is served by the sampling thread at once (it
    owns the probes), every probe it drives gets a row at the returned instant, and a
    probe on a thread of its own (a stream that cannot be asked) gets none."""
    counter, gauge = ThreadProbe("counter"), ThreadProbe("gauge")
    own = ThreadProbe("own", blocking=True)
    samplers = [_sampler(counter, 1.0, 1), _sampler(gauge, 1.0, 11), _sampler(own, 1.0, 21)]
    desk = EdgeDesk()
    edges: list[int | None] = []
    async with anyio.create_task_group() as group:
        group.start_soon(run_samplers, samplers, desk)
        while not desk.serving or counter.reads == 0:
            await anyio.sleep(0.01)
        for _ in range(3):  # far inside the 1 s period: no tick falls here
            edges.append(await anyio.to_thread.run_sync(desk.ask))
        for sampler in samplers:
            sampler.stop()
    assert desk.serving is False and desk.served == 3
    assert all(isinstance(t, int) for t in edges) and edges == sorted(edges)
    assert counter.reads >= 4 and gauge.reads >= 4
    assert len(counter.threads | gauge.threads) == 1  # the sampling thread, only
    for sampler in samplers[:2]:
        stamps = set(_stamps(sampler))
        assert set(edges) <= stamps
    assert not set(edges) & set(_stamps(samplers[2]))
    # nobody serves any more: an edge is now, and not read
    assert desk.ask() is None


def _stamps(sampler: Sampler) -> list[int]:
    batch = SampleBatch()
    for handed, _events in sampler.sink:
        batch.extend(handed)
    return [int(t) for t in batch.to_arrow().to_pydict()["t_ns"]]
