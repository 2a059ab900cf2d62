"""The http engine through the runner, against `greenmon serve` (fake engines behind it).

The servers are the real `greenmon serve` command, started by each plan's `command` as a
user's would be; only the engine behind them is a fake (tests/fakes/engine.py), so the
test is fast: one server generates exactly N tokens, the other one token fewer.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from greenmon.api.messages import Progress
from greenmon.commands import run as run_command
from greenmon.commands.run import run_experiment
from greenmon.engines.http_engine import _closed_loop, poisson_offsets_s
from greenmon.errors import PlanError
from greenmon.plan import parse_plan
from greenmon.store import Store
from tests.fakes.engine import PoweredRapl

IDLE_W = 5.0
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server(name: str, engine: str, port: int) -> str:
    # `greenmon serve` as a separate process; the repository root on the path so the
    # fake engine imports (a user gives a built-in engine or their own module).
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from greenmon.cli import main; "
        f"sys.exit(main(['serve', 'tiny', '--engine', {engine!r}, '--port', '{port}']))"
    )
    return f"""
[servers.{name}]
base_url = "http://127.0.0.1:{port}/v1"
model = "tiny"
command = [{sys.executable!r}, "-c", {code!r}]
ready_timeout_s = 90
extra = {{ return_token_ids = true }}
"""


PLAN = """
name = "served"
models = ["tiny"]
configurations = ["http/exact", "http/short"]
workload = "gaissa-164"
prompts = 6
max_new_tokens = 8
repetitions = 1
seed = 3
warmup_requests = 1

[cooldown]
before_s = 0.3
after_s = 0.2

[factors]
concurrency = [2]

[probes.rapl]
rate_hz = 200
sysfs_root = "{root}"

[probes.host]
enabled = false
"""


@pytest.fixture
def power(tmp_path: Path) -> Iterator[PoweredRapl]:
    source = PoweredRapl(tmp_path / "powercap", IDLE_W).start()
    yield source
    source.stop()


@pytest.mark.slow
def test_served_units_measure_load_and_flag_inexact_servers(
    tmp_path: Path, power: PoweredRapl, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact_port, short_port = _free_port(), _free_port()
    # The runner's progress as the run follows it (every 0.25 s): what the API streams and
    # the TUI's unit panel draws.  Only observed; the runner's own wiring is untouched.
    seen: list[Progress] = []
    draw = run_command.progress_line

    def observe(progress: Progress, meter: Any = None) -> str:
        seen.append(progress)
        return draw(progress, meter)

    monkeypatch.setattr(run_command, "progress_line", observe)
    text = (
        PLAN.format(root=power.tree.root)
        + _server("exact", "tests.fakes.engine:FakeEngine", exact_port)
        + _server("short", "tests.fakes.engine:ShortEngine", short_port)
    )
    plan = parse_plan(text, Path("served.toml"))
    db = tmp_path / "run.duckdb"
    experiment_id, _ = anyio.run(
        lambda: run_experiment(
            plan, db, resume=False, force=False, quiet=True, reference=None
        )
    )
    with Store.open(db, read_only=True) as store:
        _, units = store.query(
            """SELECT provider, status, reason, requests, tokens_out, flags, duration_s,
                      steady_s, steady_tokens, steady_energy_j, throughput_tok_s,
                      latency_p50_s, ttft_p50_s, load_s
               FROM unit_results_for(?) ORDER BY provider""",
            [experiment_id],
        )
        _, requests = store.query(
            """SELECT u.provider, q.tokens_out, q.tokens_requested, q.usage_tokens_out,
                      q.ttft_ns, q.start_ns, q.end_ns
               FROM requests q JOIN units u USING (experiment_id, unit_id)
               WHERE q.experiment_id = ? AND q.phase = 'measure'""",
            [experiment_id],
        )
    by_server = {row[0]: row for row in units}
    for server in ("exact", "short"):
        (_, status, reason, count, tokens, flags, duration_s, steady_s, steady_tokens,
         steady_j, throughput, latency_s, ttft_s, load_s) = by_server[server]  # fmt: skip
        assert status == "done", reason
        assert count == 6
        # the server's start-up is the load phase
        assert load_s > 0.1
        assert 0 < steady_s <= duration_s
        # a steady window of a fraction of a second: allow the fake counter's own lateness
        assert steady_j == pytest.approx(IDLE_W * steady_s, rel=0.1, abs=power.stale_j())
        assert 0 < steady_tokens <= tokens
        assert throughput == pytest.approx(tokens / duration_s)
        assert latency_s >= ttft_s > 0
        assert ("token_count_mismatch" in flags) == (server == "short")
        assert tokens == 6 * (8 if server == "exact" else 7)
    for server, out, asked, claimed, ttft_ns, start_ns, end_ns in requests:
        assert asked == 8
        assert out == claimed == (8 if server == "exact" else 7)
        assert 0 < ttft_ns <= end_ns - start_ns
    # Closed loop of 2: never more than two of a unit's requests overlap.
    for server in ("exact", "short"):
        spans = sorted((r[5], r[6]) for r in requests if r[0] == server)
        for start_ns, _ in spans:
            assert sum(1 for s, e in spans if s <= start_ns < e) <= 2
    # While a served unit ran, the progress carried its live load (item 5's source).
    served = [p.serving for p in seen
              if p.unit is not None and p.unit.configuration.startswith("http/")
              and p.serving is not None]  # fmt: skip
    assert served, [(p.unit, p.phase, p.serving) for p in seen]
    for live in served:
        assert live.concurrency == 2 and live.request_rate_hz is None
        assert 0 <= live.requests_in_flight <= 2 and live.requests_done >= 0
    # Both servers were stopped with their units.
    for port in (exact_port, short_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_poisson_arrivals_are_seeded_and_average_the_rate() -> None:
    first = poisson_offsets_s(2000, 4.0, seed=1)
    assert first == poisson_offsets_s(2000, 4.0, seed=1)
    assert first != poisson_offsets_s(2000, 4.0, seed=2)
    assert first[0] == 0.0 and first == sorted(first)
    mean_gap_s = first[-1] / (len(first) - 1)
    assert mean_gap_s == pytest.approx(1 / 4.0, rel=0.1)


def test_closed_loop_keeps_n_in_flight_and_sends_each_prompt_once() -> None:
    in_flight = peak = 0
    sent: list[int] = []

    async def send(index: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001 * (index % 3))
        sent.append(index)
        in_flight -= 1

    asyncio.run(_closed_loop(send, 10, 3))
    assert sorted(sent) == list(range(10)) and peak == 3


BASE = 'models = ["tiny"]\nconfigurations = ["http/a"]\n'
SERVER = '[servers.a]\nbase_url = "http://127.0.0.1:1/v1"\nmodel = "m"\n'


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (BASE, r"no \[servers.a\] table"),
        (BASE + SERVER.replace('model = "m"', 'model = "m"\napi = "embeddings"'), "api must"),
        (BASE + SERVER.replace("http://", "ftp://"), "base_url must"),
        (BASE + "[factors]\nconcurrency = [1]\nrequest_rate_hz = [2.0]\n" + SERVER, "cannot be"),
        (BASE + "[factors]\nconcurrency = [0]\n" + SERVER, "positive"),
        (BASE + SERVER + "command = []\n", "command is empty"),
    ],
)
def test_bad_server_plans_get_clear_errors(text: str, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        parse_plan(text)


def test_plans_without_servers_keep_their_hash() -> None:
    plan = parse_plan('models = ["tiny"]\nconfigurations = ["torch/cpu"]\n')
    canonical = plan.canonical()
    assert "servers" not in canonical
    assert "concurrency" not in canonical["factors"]
    served = parse_plan(BASE + "[factors]\nconcurrency = [1, 4]\n" + SERVER)
    units = served.units()
    assert {u.factors["concurrency"] for u in units} == {1, 4}
    options = served.engine_options_for(units[0])
    assert options["server"]["base_url"] == "http://127.0.0.1:1/v1"
    assert options["concurrency"] == units[0].factors["concurrency"]
    in_process = parse_plan('models = ["tiny"]\nconfigurations = ["torch/cpu"]\n'
                            "[factors]\nconcurrency = [4]\n")
    assert in_process.batch_size_for(in_process.units()[0]) == 4


class FlakyServer:
    """An OpenAI-shaped server that misbehaves on cue, in a thread of its own: the Nth
    completion (counted from 0) is refused with 503, the Mth never answers in time; the
    others stream exactly the tokens asked for.  It counts every POST, so a retry shows."""

    def __init__(self, refuse: int, stall: int) -> None:
        self.refuse, self.stall = refuse, stall
        self.posts = 0
        self.port = _free_port()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "tiny"}]})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        index, self.posts = self.posts, self.posts + 1
        body = await request.json()
        if index == self.refuse:
            return web.json_response({"error": {"message": "overloaded, try later",
                                                "type": "server_error"}}, status=503)  # fmt: skip
        if index == self.stall:
            await asyncio.sleep(5)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for token in range(body["max_tokens"]):
            chunk = {"choices": [{"index": 0, "text": f" t{token}", "token_ids": [token],
                                  "finish_reason": None}]}  # fmt: skip
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"prompt_tokens": 3, "completion_tokens": body["max_tokens"]}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    def _run(self) -> None:
        async def main() -> None:
            app = web.Application()
            app.router.add_get("/v1/models", self._models)
            app.router.add_post("/v1/completions", self._complete)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(main())
        self._loop.close()

    def __enter__(self) -> FlakyServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


FLAKY_PLAN = """
name = "flaky"
models = ["tiny"]
configurations = ["http/flaky"]
workload = "gaissa-164"
prompts = 4
max_new_tokens = 3
repetitions = 1
seed = 3
warmup_requests = 1

[cooldown]
before_s = 0.1
after_s = 0.1

[factors]
concurrency = [1]

[probes.rapl]
rate_hz = 100
sysfs_root = "{root}"

[probes.host]
enabled = false

[servers.flaky]
base_url = "http://127.0.0.1:{port}/v1"
model = "tiny"
request_timeout_s = 1.0
"""


@pytest.mark.slow
def test_failed_and_timed_out_requests_are_recorded_not_retried_and_flag_the_unit(
    tmp_path: Path, power: PoweredRapl
) -> None:
    # POST 0 is the warm-up; of the four measured, the second is refused, the third stalls.
    with FlakyServer(refuse=2, stall=3) as server:
        plan = parse_plan(FLAKY_PLAN.format(root=power.tree.root, port=server.port),
                          Path("flaky.toml"))  # fmt: skip
        db = tmp_path / "run.duckdb"
        experiment_id, _ = anyio.run(
            lambda: run_experiment(
                plan, db, resume=False, force=False, quiet=True, reference=None
            )
        )
        posts = server.posts
    # one POST per request: nothing was retried
    assert posts == 1 + 4
    with Store.open(db, read_only=True) as store:
        _, units = store.query(
            "SELECT status, reason, requests, flags FROM unit_results_for(?)", [experiment_id]
        )
        _, requests = store.query(
            """SELECT tokens_out, error FROM requests
               WHERE experiment_id = ? AND phase = 'measure' ORDER BY start_ns""",
            [experiment_id],
        )
    ((status, reason, count, flags),) = units
    assert status == "done", reason
    assert count == 4
    assert "failed_requests" in flags and "token_count_mismatch" not in flags
    assert [r[0] for r in requests] == [3, 0, 0, 3]
    ok, refused, stalled, ok_again = (r[1] for r in requests)
    assert ok is None and ok_again is None
    assert "answered 503" in refused and "overloaded, try later" in refused
    assert "timed out after 1 s (request_timeout_s)" in stalled
