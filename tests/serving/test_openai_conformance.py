"""`greenmon serve` as a separate process, checked with the official `openai` client.

The tiny model behind the real torch engine (its context is 512 tokens): completions and
chat, streamed with ``include_usage`` and not; every refusal mapped to the client's
exception class, each followed by a normal answer; clients that hang up (streamed and
not), after which the server's CPU time stops growing; 16 concurrent streamed chats.
A second server, around the fake engine (tests/fakes/engine.py, slow on purpose), shows
the bounded queue (429) and SIGTERM's bound.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key"
MAX_TOKENS = 8
# Far longer than any test's wait: a server that does not stop on a hang-up is still busy
# generating when its CPU time is read.
LONG_TOKENS = 480
# A client's patience for an answer that should come at once: a server still busy with an
# earlier request (minutes for a runaway one) misses it.
PROMPT_S = 20.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[str]
    base_url: str
    stderr_path: Path
    clients: dict[tuple[str | None, float], openai.OpenAI] = field(default_factory=dict)

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def client(self, key: str | None = KEY, timeout_s: float = PROMPT_S) -> openai.OpenAI:
        # No retries: a refusal must reach the test, not be retried away.  One client per
        # kind, closed with the server (its pool is thread-safe).
        if (key, timeout_s) not in self.clients:
            self.clients[key, timeout_s] = openai.OpenAI(
                base_url=self.v1, api_key=key or "none", max_retries=0, timeout=timeout_s
            )
        return self.clients[key, timeout_s]

    def metric(self, name: str) -> float:
        text = _http(f"{self.base_url}/metrics", headers=_auth())[1].decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """A raw request (what the openai client cannot send): status and body."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=PROMPT_S) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())
    except (urllib.error.URLError, OSError):
        return 0, b""


def _start(
    tmp: Path, *args: str, env: dict[str, str] | None = None, model: str = "tiny"
) -> Server:
    port = _port()
    stderr_path = tmp / f"serve-{port}.err"
    command = [sys.executable, "-m", "greenmon.cli", "serve", model, "--port", str(port), *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=stderr_path.open("w"), text=True,
        env=full_env, cwd=tmp,
    )  # fmt: skip
    server = Server(process, f"http://127.0.0.1:{port}", stderr_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"greenmon serve exited: {stderr_path.read_text()}")
        if _http(f"{server.base_url}/health")[0] == 200:
            return server
        time.sleep(0.2)
    _stop(server)
    raise AssertionError(f"greenmon serve did not answer /health: {stderr_path.read_text()}")


def _stop(server: Server) -> str:
    for client in server.clients.values():
        client.close()
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.stderr_path.read_text()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The key comes from the environment, as a deployment would give it.
    server = _start(
        tmp_path_factory.mktemp("serve"), "--engine", "torch", "--max-batch-size", "8",
        "--batch-wait-ms", "50", "--max-body-bytes", "65536",
        env={"GREENMON_API_KEY": KEY},
    )  # fmt: skip
    yield server
    _stop(server)


def _answers_normally(server: Server) -> None:
    """A normal request right after: the server is neither stuck nor broken."""
    done = server.client().completions.create(model="tiny", prompt="def f(x):", max_tokens=2)
    assert done.usage is not None and done.usage.completion_tokens == 2


# -- the happy paths -----------------------------------------------------------------------
def test_completions_and_chat_with_exact_usage(tiny: Server) -> None:
    client = tiny.client()
    assert [m.id for m in client.models.list()] == ["tiny"]
    done = client.completions.create(model="tiny", prompt="def add(a, b):",
                                     max_tokens=MAX_TOKENS)  # fmt: skip
    assert done.usage is not None and done.usage.completion_tokens == MAX_TOKENS
    assert done.usage.prompt_tokens > 0 and done.choices[0].finish_reason == "length"
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "write a loop"}],
        max_tokens=MAX_TOKENS,
    )  # fmt: skip
    assert chat.usage is not None and chat.usage.completion_tokens == MAX_TOKENS
    assert chat.choices[0].message.role == "assistant"


@pytest.mark.parametrize("include_usage", [True, False])
def test_streams_carry_one_chunk_per_token_and_usage_when_asked(
    tiny: Server, include_usage: bool
) -> None:
    client = tiny.client()
    stream = client.completions.create(
        model="tiny", prompt="def f(x):", max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": include_usage}, extra_body={"return_token_ids": True},
    )  # fmt: skip
    chunks = list(stream)
    tokens = [c for c in chunks if c.choices]
    assert len(tokens) == MAX_TOKENS
    usage = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage) == 1 and usage[0].completion_tokens == MAX_TOKENS
    else:
        assert usage == []
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=MAX_TOKENS,
        stream=True, stream_options={"include_usage": include_usage},
    )  # fmt: skip
    chat_chunks = list(chat)
    assert len([c for c in chat_chunks if c.choices]) == MAX_TOKENS
    assert any(c.usage is not None for c in chat_chunks) == include_usage


def test_sixteen_concurrent_streamed_chats_each_get_exactly_max_tokens(tiny: Server) -> None:
    def chat(index: int) -> tuple[int, int | None]:
        stream = tiny.client(timeout_s=120).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"task {index}: sort a list"}],
            max_tokens=12, stream=True, stream_options={"include_usage": True},
            extra_body={"min_tokens": 12, "ignore_eos": True, "return_token_ids": True},
        )  # fmt: skip
        streamed, claimed = 0, None
        for chunk in stream:
            for choice in chunk.choices:
                streamed += len(getattr(choice, "token_ids", None) or [])
            if chunk.usage is not None:
                claimed = chunk.usage.completion_tokens
        return streamed, claimed

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(chat, range(16)))
    assert results == [(12, 12)] * 16


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """tiny behind the torch engine, held after each batch's first token until the test
    opens the gate (tests/fakes/gated_torch.py)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    server = _start(tmp_path, "--engine", "tests.fakes.gated_torch:GatedTorchEngine",
                    "--served-model-name", "tiny", env={"GREENMON_GATE_DIR": str(gate)})  # fmt: skip
    yield server, gate
    _stop(server)


def test_a_streamed_token_arrives_while_generation_goes_on_and_matches_the_whole_answer(
    gated: tuple[Server, Path],
) -> None:
    server, gate = gated
    client = server.client(key=None, timeout_s=120)
    arguments: dict[str, Any] = {"model": "tiny", "prompt": "def f(x):", "max_tokens": MAX_TOKENS,
                                 "extra_body": {"return_token_ids": True}}  # fmt: skip
    chunks = iter(client.completions.create(**arguments, stream=True))
    first = next(chunks)
    # The engine waits after its first token until the gate opens: the first chunk is
    # here, and the generation has not ended (a server that streamed after generation
    # would send nothing until the engine gave up waiting, a minute on).
    assert not (gate / "ended").exists()
    (gate / "open").touch()
    streamed = [first, *chunks]
    assert (gate / "ended").exists()
    ids = [t for c in streamed for ch in c.choices for t in getattr(ch, "token_ids", None) or []]
    text = "".join(ch.text for c in streamed for ch in c.choices)
    # greedy: the same tokens and text as the answer sent whole
    whole = client.completions.create(**arguments).choices[0]
    assert len(ids) == MAX_TOKENS
    assert ids == list(getattr(whole, "token_ids", [])) and text == whole.text
    assert streamed[-1].choices[0].finish_reason == "length"


# -- refusals ------------------------------------------------------------------------------
REFUSALS: list[tuple[str, dict[str, Any], type[openai.APIStatusError], int, str, str | None]] = [
    # (name, completions.create arguments, exception, status, message part, param)
    ("context", {"prompt": "def f(x):", "max_tokens": 100000}, openai.BadRequestError, 400,
     "This model's maximum context length is 512 tokens. However, you requested 100005 "
     "tokens (5 in the messages, 100000 in the completion)", "max_tokens"),
    ("unknown model", {"model": "nope"}, openai.NotFoundError, 404,
     "The model `nope` does not exist", "model"),
    ("n", {"n": 2}, openai.BadRequestError, 400, "'n' must be 1", "n"),
    ("list of prompts", {"prompt": ["a", "b"]}, openai.BadRequestError, 400,
     "'prompt' must be one string", "prompt"),
    ("max_tokens 0", {"max_tokens": 0}, openai.BadRequestError, 400,
     "'max_tokens' must be a positive integer", "max_tokens"),
    ("wrong type", {"extra_body": {"temperature": "hot"}}, openai.BadRequestError, 400,
     "'temperature' must be a number", "temperature"),
    ("oversized", {"prompt": "x " * 40000}, openai.APIStatusError, 413,
     "larger than 65536 bytes", None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "arguments", "exception", "status", "message", "param"),
                         REFUSALS, ids=[r[0] for r in REFUSALS])  # fmt: skip
def test_each_bad_request_raises_the_clients_exception_then_a_normal_one_is_answered(
    tiny: Server,
    name: str,
    arguments: dict[str, Any],
    exception: type[openai.APIStatusError],
    status: int,
    message: str,
    param: str | None,
) -> None:
    create: dict[str, Any] = {"model": "tiny", "prompt": "def f(x):", "max_tokens": 4,
                              **arguments}  # fmt: skip
    with pytest.raises(exception) as raised:
        tiny.client().completions.create(**create)
    error = raised.value
    assert error.status_code == status
    body = error.body
    assert isinstance(body, dict), body
    # the client unwraps {"error": {...}}
    assert message in body["message"], body
    assert body["param"] == param and set(body) == {"message", "type", "param", "code"}
    _answers_normally(tiny)


def test_chat_past_the_context_is_refused_as_vllm_words_it(tiny: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512 tokens"):
        tiny.client().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=600
        )
    _answers_normally(tiny)


@pytest.mark.parametrize("body", [b"{not json", b'{"model": "tiny", "prompt": 5}', b"[1, 2]"])
def test_malformed_bodies_get_openai_shaped_400s(tiny: Server, body: bytes) -> None:
    status, answer = _http(f"{tiny.v1}/completions", body,
                           {**_auth(), "Content-Type": "application/json"})  # fmt: skip
    assert status == 400
    error = json.loads(answer)["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    _answers_normally(tiny)


def test_the_api_key_is_required_everywhere_but_health(tiny: Server) -> None:
    for key in (None, "wrong"):
        with pytest.raises(openai.AuthenticationError):
            tiny.client(key=key).completions.create(model="tiny", prompt="x", max_tokens=1)
        with pytest.raises(openai.AuthenticationError):
            tiny.client(key=key).models.list()
    assert _http(f"{tiny.base_url}/metrics")[0] == 401
    assert _http(f"{tiny.base_url}/health")[0] == 200
    _answers_normally(tiny)


def test_metrics_count_requests_tokens_latency_and_queue(tiny: Server) -> None:
    before = tiny.metric("greenmon_serve_completion_tokens_total")
    tiny.client().completions.create(model="tiny", prompt="def g():", max_tokens=3)
    assert tiny.metric("greenmon_serve_completion_tokens_total") == before + 3
    text = _http(f"{tiny.base_url}/metrics", headers=_auth())[1].decode()
    for name in ("greenmon_serve_requests_total{", "greenmon_serve_request_latency_seconds_bucket",
                 "greenmon_serve_time_to_first_token_seconds_bucket",
                 "greenmon_serve_queue_depth", "greenmon_serve_prompt_tokens_total"):  # fmt: skip
        assert name in text, name
    assert 'status="404"' in text  # the unknown model above, or counted here
    assert tiny.metric("greenmon_serve_queue_depth") == 0


# -- hang-ups --------------------------------------------------------------------------------
CLIENT = """
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, timeout=600)
stream = sys.argv[3] == "stream"
answer = client.completions.create(model="tiny", prompt="def f(x):", max_tokens={tokens},
                                   stream=stream)
if stream:
    for _ in answer:
        pass
"""


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@pytest.fixture(scope="module")
def slower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """tiny-20m served as "tiny": tiny writes LONG_TOKENS in about 0.5 s on a quiet core,
    before a hang-up can be seen; tiny-20m takes about 6 s, so the client hangs up while
    the server is still generating, however fast the machine."""
    server = _start(
        tmp_path_factory.mktemp("serve-20m"), "--engine", "torch", "--served-model-name",
        "tiny", env={"GREENMON_API_KEY": KEY}, model="tiny-20m",
    )  # fmt: skip
    yield server
    _stop(server)


@pytest.mark.parametrize("mode", ["stream", "whole"])
def test_a_client_that_hangs_up_stops_generation(slower: Server, mode: str) -> None:
    tiny = slower
    server = psutil.Process(tiny.process.pid)
    cancelled = tiny.metric("greenmon_serve_cancelled_requests_total")
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT.format(tokens=LONG_TOKENS), tiny.v1, KEY, mode]
    )
    try:
        deadline = time.monotonic() + 60
        while tiny.metric("greenmon_serve_requests_running") < 1:
            assert client.poll() is None and time.monotonic() < deadline, "never started"
            time.sleep(0.05)
        # Generating: the server burns CPU (on a shared machine, less than a core)...
        busy_start = _cpu_s(server)
        time.sleep(1.0)
        busy_s = _cpu_s(server) - busy_start
        assert busy_s > 0.05
    finally:
        client.kill()
        client.wait()
    # ...and within 2 s of the hang-up it has stopped: over the next second it uses next
    # to nothing, and a small share of what generation used (which it would go on using
    # for minutes had it not stopped).
    time.sleep(2.0)
    idle_start = _cpu_s(server)
    time.sleep(1.0)
    idle_s = _cpu_s(server) - idle_start
    assert idle_s < min(0.1, busy_s / 4), (idle_s, busy_s)
    assert tiny.metric("greenmon_serve_cancelled_requests_total") == cancelled + 1
    assert tiny.metric("greenmon_serve_requests_running") == 0
    _answers_normally(tiny)


# -- back-pressure and shutdown (a slow fake engine) ---------------------------------------
@pytest.fixture
def slow(tmp_path: Path) -> Iterator[Server]:
    server = _start(
        tmp_path, "--engine", "tests.fakes.engine:FakeEngine", "--option", "generate_s=1.5",
        "--max-batch-size", "1", "--batch-wait-ms", "0", "--max-queue", "1",
        "--shutdown-timeout", "2",
    )  # fmt: skip
    yield server
    _stop(server)


def _wait_metric(server: Server, name: str, value: float) -> None:
    deadline = time.monotonic() + 30
    while server.metric(name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def test_a_full_queue_answers_429_with_retry_after_and_sigterm_is_bounded(slow: Server) -> None:
    def complete(index: int) -> Any:
        try:
            return slow.client(key=None, timeout_s=60).completions.create(
                model="tiny", prompt=f"p {index}", max_tokens=2)
        except openai.APIStatusError as error:
            return error

    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(complete, 0)
        _wait_metric(slow, "greenmon_serve_requests_running", 1)
        queued = pool.submit(complete, 1)
        _wait_metric(slow, "greenmon_serve_queue_depth", 1)
        with pytest.raises(openai.RateLimitError) as raised:
            slow.client(key=None).completions.create(model="tiny", prompt="p", max_tokens=2)
        assert int(raised.value.response.headers["Retry-After"]) >= 1
        # SIGTERM while one request runs and one waits: the first finishes within the 2 s
        # bound; the second (1.5 s of its own after the first) is cancelled at the bound.
        slow.process.send_signal(signal.SIGTERM)
        first, second = running.result(), queued.result()
    assert slow.process.wait(timeout=30) == 0
    log = slow.stderr_path.read_text()
    assert first.usage.completion_tokens == 2, first
    assert isinstance(second, openai.InternalServerError) and second.status_code == 503
    assert "2 request(s) in flight" in log, log
    assert f"request {first.id} finished during shutdown" in log, log
    assert "cancelled: unfinished after the 2 s shutdown bound" in log, log


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--max-queue", "0"], {}, "--max-queue must be at least 1"),
        (["--max-model-len", "1"], {}, "--max-model-len must be at least 2"),
        (["--shutdown-timeout", "-1"], {}, "--shutdown-timeout must be 0 or more"),
        ([], {"GREENMON_API_KEY": " "}, "the API key is empty"),
    ],
)
def test_bad_serve_options_get_one_paragraph(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "greenmon.cli", "serve", "tiny", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )  # fmt: skip
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
