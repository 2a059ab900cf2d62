"""The attribution rules on numbers: CPU time shares, token splits, conservation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenmon.attribution import (
    CpuReading,
    CpuShareSampler,
    GpuProcessSample,
    PowerSeries,
    RequestSpan,
    attribute_cpu_time,
    attribute_shares,
    cpu_shares,
    gpu_share,
    listening_pid,
    read_gpu_process_samples,
    request_boundaries,
    request_energy,
    server_energy_j,
    split_by_tokens,
    summarise_requests,
    tokens_processed,
)
from greenmon.engines.http_engine import _Server, server_pid
from greenmon.plan import parse_plan
from tests.fakes.nvml import FakeNvml, two_gpus

S = 1_000_000_000


def _constant(power_w: float, end_s: float) -> PowerSeries:
    return PowerSeries((0, int(end_s * S)), (power_w,))


def test_shares_of_all_processes_add_up_to_the_busy_energy() -> None:
    # Three processes; interval 3 has nothing busy (its energy is charged to no one).
    machine = [0, 100, 150, 150, 250]
    trees = {"a": [0, 60, 60, 60, 100], "b": [0, 30, 50, 50, 100], "c": [0, 10, 40, 40, 50]}
    times = [0, 1 * S, 2 * S, 3 * S, 4 * S]
    series = PowerSeries(tuple(times), (10.0, 20.0, 5.0, 40.0))
    energy = {"cpu": series.energy_j}
    parts = {
        name: attribute_cpu_time(
            [CpuReading(t, b, p) for t, b, p in zip(times, machine, ticks, strict=True)], energy
        )
        for name, ticks in trees.items()
    }
    busy_j = parts["a"].busy_j["cpu"]
    assert busy_j == pytest.approx(10 + 20 + 40)
    assert parts["a"].machine_j["cpu"] == pytest.approx(75)
    assert sum(p.attributed_j["cpu"] for p in parts.values()) == pytest.approx(busy_j)
    assert parts["a"].attributed_j["cpu"] == pytest.approx(10 * 0.6 + 0 + 40 * 0.4)


def test_a_tree_ahead_of_the_machine_is_carried_not_lost() -> None:
    readings = [CpuReading(0, 0, 0), CpuReading(S, 10, 14), CpuReading(2 * S, 30, 20)]
    shares = [i.share for i in cpu_shares(readings)]
    assert shares == [1.0, pytest.approx(10 / 20)]


def test_a_window_attributes_only_its_own_span() -> None:
    readings = [CpuReading(0, 0, 0), CpuReading(2 * S, 100, 50)]
    result = attribute_cpu_time(readings, {"cpu": _constant(10, 2).energy_j}, (S // 2, S))
    assert result.attributed_j["cpu"] == pytest.approx(10 * 0.5 * 0.5)
    assert result.duration_s == pytest.approx(0.5)
    assert result.as_dict()["attributed_cpu_j"] == pytest.approx(2.5)
    assert result.flags == ["attributed"]


def test_counter_series_adds_wraps_and_drops_resets() -> None:
    wrapped = PowerSeries.from_counter(
        [(0, 90.0), (S, 10.0)], joules_per_unit=1.0, counter_range=100.0
    )
    assert wrapped.energy_j(0, S) == pytest.approx(20)
    reset = PowerSeries.from_counter([(0, 90.0), (S, 10.0), (2 * S, 30.0)], joules_per_unit=1.0)
    assert reset.energy_j(0, 2 * S) == pytest.approx(20)
    assert reset.energy_j(S // 2, S // 2) == 0.0
    gauge = PowerSeries.from_gauge([(0, 1000.0), (S, 3000.0)], watts_per_unit=1e-3)
    assert gauge.energy_j(0, S) == pytest.approx(2.0)


def test_requests_split_each_interval_by_tokens_and_conserve_it() -> None:
    spans = [
        RequestSpan("a", 0, S // 2, 2 * S, tokens_in=10, tokens_out=30),
        RequestSpan("b", S, int(1.2 * S), 3 * S, tokens_in=50, tokens_out=10),
        RequestSpan("c", int(2.5 * S), None, int(2.5 * S), tokens_in=0, tokens_out=1),
    ]
    boundaries = request_boundaries(spans, S // 10)
    energy = _constant(12.0, 4).energy_j
    parts = split_by_tokens(spans, boundaries, energy)
    assert set(parts) == {"a", "b", "c"}
    assert all(v > 0 for v in parts.values())
    # Every interval from the first start to the last end had a token: all of it is split.
    assert sum(parts.values()) == pytest.approx(12.0 * 3)
    # Decode tokens weigh 1, prompt tokens 0.1: a's 30 decode tokens outweigh b's prefill.
    assert tokens_processed(spans[0], 0, 2 * S) == pytest.approx(10 * 0.1 + 30)


def test_an_interval_without_tokens_is_charged_to_no_request() -> None:
    spans = [RequestSpan("a", 0, 0, S, 0, 10), RequestSpan("b", 2 * S, 2 * S, 3 * S, 0, 10)]
    parts = split_by_tokens(spans, [0, S, 2 * S, 3 * S], _constant(5.0, 3).energy_j)
    assert parts == {"a": pytest.approx(5.0), "b": pytest.approx(5.0)}


def test_request_energy_per_domain_and_the_unit_summary() -> None:
    spans = [RequestSpan(str(i), 0, S // 10, S, 4, 8) for i in range(4)]
    series = {"cpu": [_constant(20.0, 1)], "dram": [_constant(2.0, 1), _constant(2.0, 1)]}
    energy = request_energy(spans, series)
    assert energy["0"] == {"cpu": pytest.approx(5.0), "dram": pytest.approx(1.0)}
    summary = summarise_requests([6.0, 6.0, 6.0, 10.0], [8, 8, 8, 8])
    assert summary["j_per_request_p50"] == 6.0
    assert summary["j_per_request_p90"] == pytest.approx(8.8)
    assert summary["j_per_token_p50"] == pytest.approx(0.75)


def test_server_figures_in_usage() -> None:
    assert server_energy_j({"energy_j": 1.5}) == 1.5
    assert server_energy_j({"energy_mj": 250}) == pytest.approx(0.25)
    assert server_energy_j({"completion_tokens": 3}) is None
    assert server_energy_j({"energy_j": True}) is None


def test_gpu_share_from_per_process_utilisation() -> None:
    samples = [GpuProcessSample(10, 1, 60.0), GpuProcessSample(11, 1, 20.0)]
    assert gpu_share(samples, {10}) == pytest.approx(0.75)
    assert gpu_share([], {10}) is None
    nvml: FakeNvml = two_gpus()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    # The fake gives no per-process samples (as drivers that do not support them): none.
    assert read_gpu_process_samples(nvml, handle, 0) == []


def test_gpu_energy_by_the_trees_share_of_per_process_utilisation() -> None:
    nvml: FakeNvml = two_gpus()
    nvml.nvmlInit()
    nvml.gpus[0].process_sm_percent = {os.getpid(): 30, 999_999_999: 10}
    sampler = CpuShareSampler([os.getpid()], period_s=0.02)
    assert sampler.attach_gpu(nvml)
    sampler.start()
    time.sleep(0.2)
    readings = sampler.stop()
    gpu = sampler.gpu
    assert gpu is not None and gpu.any_samples
    start, end = readings[0].t_ns, readings[-1].t_ns
    energy = _constant(100.0, 3600).energy_j
    attributed = attribute_shares(gpu.intervals, energy, (start, end))
    # this process had 30 of the 40 % SM utilisation NVML reported per process
    assert attributed == pytest.approx(0.75 * energy(start, end), rel=0.02)


def test_without_per_process_samples_the_gpu_is_not_attributed() -> None:
    nvml: FakeNvml = two_gpus()
    nvml.nvmlInit()
    for gpu in nvml.gpus:
        gpu.not_supported.add("nvmlDeviceGetProcessUtilization")
    sampler = CpuShareSampler([os.getpid()], period_s=0.02)
    assert sampler.attach_gpu(nvml)
    sampler.start()
    time.sleep(0.05)
    sampler.stop()
    assert sampler.gpu is not None and not sampler.gpu.any_samples
    assert not CpuShareSampler([os.getpid()]).attach_gpu(object())


def test_the_sampler_follows_a_tree_that_exits(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.time() + 0.6\nwhile time.time() < end: pass",
        ]
    )
    sampler = CpuShareSampler([child.pid], period_s=0.05).start()
    child.wait()
    time.sleep(0.1)
    readings = sampler.stop()
    # The child's CPU time stays counted after it exited and was reaped.
    assert readings[-1].tree_ticks >= max(r.tree_ticks for r in readings) > 0


def test_listening_pid_finds_this_process() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert listening_pid(server.getsockname()[1]) == os.getpid()
    assert listening_pid(1) is None


def test_a_servers_pid_from_the_plan_or_its_listening_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = _Server.from_options(
            "s", {"base_url": f"http://127.0.0.1:{port}/v1", "model": "m"}
        )
        assert server_pid(server) == os.getpid()
        named = _Server.from_options(
            "s", {"base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "pid": 4242}
        )
        assert server_pid(named) == 4242
    plan = parse_plan(
        'models = ["tiny"]\nconfigurations = ["http/s"]\n'
        '[servers.s]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "tiny"\npid = 4242\n',
        Path("p.toml"),
    )
    assert plan.spec.servers["s"].pid == 4242
