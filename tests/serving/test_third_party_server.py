"""The http engine against a server nobody here wrote: llama-cpp-python's OpenAI server.

llama-cpp-python compiles llama.cpp when it installs (about 5 minutes on 2 cores), and its
GGUF of the embedded tiny model is converted with llama.cpp's own converter, so neither is
done here: `.ci/llama-server` prepares both (CI runs it) and says where with
GREENMON_LLAMA_PYTHON (a python with ``llama-cpp-python[server]``) and GREENMON_TINY_GGUF.
Without them the test is skipped with the reason.  bench/serving.py runs the whole
comparison.
"""

from __future__ import annotations

import socket

import pytest

from greenmon.engines.base import Prompt
from greenmon.engines.http_engine import HttpEngine
from tests.support.llama import LLAMA_PYTHON, TINY_GGUF, llama_missing


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("api", "concurrency"), [("completions", 3), ("chat", 1)])
def test_llama_cpp_server_streams_exactly_n_tokens(api: str, concurrency: int) -> None:
    reason = llama_missing()
    if reason:
        pytest.skip(reason)
    port = _port()
    engine = HttpEngine()
    server = {
        "base_url": f"http://127.0.0.1:{port}/v1",
        "model": "tiny",
        "api": api,
        "command": [LLAMA_PYTHON, "-m", "llama_cpp.server", "--model", TINY_GGUF,
                    "--model_alias", "tiny", "--host", "127.0.0.1", "--port", str(port),
                    "--n_ctx", "512", "--interrupt_requests", "False"],
        "ready_timeout_s": 240,
    }  # fmt: skip
    info = engine.load("tiny", "llama-cpp", {"server": server, "concurrency": concurrency})
    try:
        assert info.details["served_models"] == ["tiny"]
        prompts = [Prompt(f"p{i}", f"def f{i}(x):\n    return") for i in range(4)]
        records = engine.generate(prompts, 8)
        live = engine.live()
    finally:
        engine.close()
    assert [r.prompt_id for r in records] == [p.prompt_id for p in prompts]
    for record in records:
        assert record.tokens_requested == 8
        # min_tokens + ignore_eos: llama.cpp emits exactly N, streamed one chunk per token;
        # usage, when the server streams it, must agree.
        assert record.tokens_out == 8, record
        assert record.usage_tokens_out in (None, 8)
        assert record.tokens_in > 0 and record.text
        assert record.ttft_ns is not None and 0 < record.ttft_ns <= record.latency_ns
    assert live.requests_done == 4 and live.requests_in_flight == 0
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the server outlived close()"
