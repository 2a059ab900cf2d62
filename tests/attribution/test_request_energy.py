"""Per-request energy of a served unit: `greenmon run` against `greenmon serve tiny`.

A fake RAPL package at a constant power, a plan whose unit sends its prompts four at a
time to a `greenmon serve tiny` that the plan starts.  Every measured request gets
``energy_j``; the requests' energies add up to the unit's measured energy over the span in
which they ran (each interval split by tokens, none lost or counted twice), which contains
the steady window; and the server's own figure (``usage.energy_j``) is stored beside it.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenmon.store import Store
from tests.fakes.rapl import PoweredRapl
from tests.measure.support import cli_env, greenmon_command
from tests.support.llama import LLAMA_PYTHON, TINY_GGUF, llama_missing

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
POWER_W = 25.0

PLAN = """
name = "per-request"
models = ["tiny"]
configurations = ["http/tiny"]
workload = "gaissa-164"
prompts = 8
max_new_tokens = 8
repetitions = 1
seed = 3
warmup_requests = 1

[cooldown]
before_s = 0.2
after_s = 0.2

[factors]
concurrency = [4]

[probes.rapl]
rate_hz = 100
sysfs_root = "{root}"

[probes.host]
enabled = false

[servers.tiny]
base_url = "http://127.0.0.1:{port}/v1"
model = "tiny"
command = {command}
ready_timeout_s = 240
{extra}
"""
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def power(tmp_path: Path) -> Iterator[PoweredRapl]:
    source = PoweredRapl(tmp_path / "powercap", POWER_W).start()
    yield source
    source.stop()


@pytest.mark.parametrize("server", ["greenmon-serve", "llama.cpp"])
def test_served_requests_energy_adds_up_to_the_units(
    tmp_path: Path, power: PoweredRapl, server: str
) -> None:
    port = _free_port()
    if server == "llama.cpp":
        reason = llama_missing()
        if reason:
            pytest.skip(reason)
        command = [
            LLAMA_PYTHON, "-m", "llama_cpp.server", "--model", TINY_GGUF, "--model_alias",
            "tiny", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512",
            "--interrupt_requests", "False",
        ]  # fmt: skip
        extra = 'api = "completions"'
    else:
        server_config = tmp_path / "serve.toml"
        server_config.write_text(f'[probes.rapl]\nsysfs_root = "{power.tree.root}"\n')
        command = [
            *greenmon_command(), "serve", "tiny", "--port", str(port),
            "--config", str(server_config),
        ]  # fmt: skip
        extra = "extra = { return_token_ids = true }"
    plan = tmp_path / "plan.toml"
    plan.write_text(
        PLAN.format(root=power.tree.root, port=port, command=json.dumps(command), extra=extra)
    )
    db = tmp_path / "run.duckdb"
    done = subprocess.run(
        greenmon_command("run", str(plan), "--db", str(db), "--quiet"),
        capture_output=True, text=True, cwd=tmp_path, timeout=800,
        env=cli_env(tmp_path / "none.sock", HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with Store.open(db, read_only=True) as store:
        _, requests = store.query(
            """SELECT energy_j, energy_cpu_j, energy_method, server_energy_j, start_ns, end_ns,
                      tokens_out
               FROM requests WHERE phase = 'measure'"""
        )
        _, units = store.query("SELECT status, steady_energy_j FROM unit_results_for(NULL)")
        _, attributed = store.query(
            "SELECT attributed_cpu_j, attribution FROM units WHERE status = 'done'"
        )
        _, measure = store.query("SELECT energy_cpu_j FROM unit_results_for(NULL)")
    assert [u[0] for u in units] == ["done"]
    assert len(requests) == 8
    for energy_j, cpu_j, method, server_j, _start, _end, tokens in requests:
        if server == "greenmon-serve":
            assert tokens == 8
        else:
            # llama.cpp streams one chunk per complete UTF-8 piece: with these random-token
            # prompts its chunks are not its tokens (the unit says token_count_mismatch;
            # exact counts are test_third_party_server's, with text prompts).  The split
            # uses what was streamed, so the parts still add up.
            assert tokens >= 1
        assert energy_j is not None and energy_j > 0
        assert energy_j == pytest.approx(cpu_j)
        assert method == "tokens in flight"
        # greenmon serve's own figure, beside greenmon's (its own rule, its own process);
        # llama.cpp reports none
        assert (server_j is not None and server_j > 0) == (server == "greenmon-serve")
    total_j = sum(r[0] for r in requests)
    span_s = (max(r[5] for r in requests) - min(r[4] for r in requests)) / 1e9
    # Constant power: the unit's energy over the requests' span is power x span.
    assert total_j == pytest.approx(POWER_W * span_s, rel=0.03), (total_j, span_s)
    steady_j = units[0][1]
    assert steady_j is not None and steady_j <= total_j * 1.03

    # The server's process tree (the plan's command) is attributed its share of the
    # measure's energy: a part of it, said to be attributed.
    server_cpu_j, how = attributed[0]
    assert server_cpu_j is not None and 0 < server_cpu_j < POWER_W * 600
    how = json.loads(how)
    assert how["method"]["cpu"] == "busy CPU time share" and how["flags"] == ["attributed"]
    assert server_cpu_j <= how["machine_energy_j"]["cpu"] * 1.0001
    assert server_cpu_j < measure[0][0]

    analysis = subprocess.run(
        greenmon_command("analyze", "--db", str(db), "--json", "--workers", "1"),
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env=cli_env(tmp_path / "none.sock"),
    )  # fmt: skip
    assert analysis.returncode == 0, analysis.stderr
    section = json.loads(analysis.stdout)["request_energy"]
    assert section["figures"] == "attributed"
    (unit,) = section["units"]
    assert unit["requests"] == 8
    assert unit["j_per_request_p50"] > 0 and unit["j_per_token_p50"] > 0
    assert unit["j_per_request_p90"] >= unit["j_per_request_p50"]
