"""`greenmon serve tiny` gives each response its share of the server's attributed energy.

A fake RAPL package at a constant power; eight streamed requests at once.  Every response's
final chunk carries ``usage.energy_j``; their sum is the server's attributed energy over
the intervals in which it served them, as ``/metrics`` reports it (conservation).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.rapl import PoweredRapl
from tests.measure.support import cli_env, greenmon_command, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def power(tmp_path: Path) -> Iterator[PoweredRapl]:
    source = PoweredRapl(tmp_path / "powercap", 40.0).start()
    yield source
    source.stop()


@pytest.fixture
def server(tmp_path: Path, power: PoweredRapl) -> Iterator[str]:
    port = _free_port()
    config = write_config(tmp_path, power.tree.root)
    process = subprocess.Popen(
        greenmon_command("serve", "tiny", "--port", str(port), "--config", str(config)),
        cwd=tmp_path, env=cli_env(tmp_path / "none.sock", HF_HUB_OFFLINE="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, process.communicate()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "greenmon serve did not start"
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
        assert "per-request energy on" in stderr, stderr


async def _stream(session: aiohttp.ClientSession, base: str, i: int) -> dict[str, Any]:
    body = {"model": "tiny", "prompt": f"def f{i}(x):", "max_tokens": 12, "stream": True}
    async with session.post(f"{base}/v1/completions", json=body) as response:
        assert response.status == 200
        text = await response.text()
    events = [json.loads(line[6:]) for line in text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]  # fmt: skip
    usage: dict[str, Any] = events[-1]["usage"]
    return usage


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of metric ``name``'s samples whose labels include ``labels``."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


def test_eight_streamed_requests_carry_energy_that_adds_up(server: str) -> None:
    async def go() -> tuple[list[dict[str, Any]], str]:
        async with aiohttp.ClientSession() as session:
            usages = await asyncio.gather(*(_stream(session, server, i) for i in range(8)))
            async with session.get(f"{server}/metrics") as response:
                return list(usages), await response.text()

    usages, metrics = asyncio.run(go())
    assert len(usages) == 8
    for usage in usages:
        assert usage["completion_tokens"] == 12
        assert usage["energy_j"] > 0, usage
        assert usage["energy_j"] == pytest.approx(usage["energy_cpu_j"])
    total_j = sum(u["energy_j"] for u in usages)
    requests_j = _metric(metrics, "greenmon_serve_requests_energy_joules_total")
    serving_j = _metric(metrics, "greenmon_serve_attributed_energy_joules_total", state="serving")
    assert total_j == pytest.approx(requests_j, rel=1e-9)
    # Conservation: the requests' parts add up to the server's attributed energy over the
    # intervals in which it served them.
    assert total_j == pytest.approx(serving_j, rel=1e-6)
