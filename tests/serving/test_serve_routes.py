"""`greenmon serve`'s routes (greenmon/serving.py) around a fake engine, in-process."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from greenmon.serving import OpenAIServer, ServeOptions
from tests.fakes.engine import FakeEngine


class SplitTokenizer:
    """Decodes ids as their numbers joined by spaces, as FakeEngine writes its text."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


async def _client(max_batch_size: int = 4) -> TestClient[Any, Any]:
    engine = FakeEngine()
    engine.load("tiny", "cpu", {})
    server = OpenAIServer(engine, SplitTokenizer(), ServeOptions("tiny", max_batch_size, 20.0))
    client: TestClient[Any, Any] = TestClient(TestServer(server.app()))
    await client.start_server()
    return client


def _events(body: str) -> list[Any]:
    lines = [ln[6:] for ln in body.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


@pytest.mark.anyio
async def test_completions_stream_exactly_n_tokens_then_usage() -> None:
    client = await _client()
    try:
        resp = await client.post("/v1/completions", json={
            "model": "tiny", "prompt": "def f():", "max_tokens": 5, "min_tokens": 5,
            "ignore_eos": True, "stream": True, "return_token_ids": True,
            "stream_options": {"include_usage": True},
        })  # fmt: skip
        assert resp.status == 200
        events = _events(await resp.text())
        chunks = [e for e in events if e["choices"]]
        assert len(chunks) == 5 and all(len(c["choices"][0]["token_ids"]) == 1 for c in chunks)
        assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
        text = "".join(c["choices"][0]["text"] for c in chunks)
        ids = [c["choices"][0]["token_ids"][0] for c in chunks]
        assert text == " ".join(map(str, ids))
        assert events[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 5,
                                       "total_tokens": 7}
    finally:
        await client.close()


@pytest.mark.anyio
async def test_chat_and_plain_answers_and_models() -> None:
    client = await _client()
    try:
        resp = await client.post("/v1/chat/completions", json={
            "model": "tiny", "max_tokens": 3,
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "hello there"}],
        })  # fmt: skip
        body = await resp.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] == 3
        assert body["usage"]["prompt_tokens"] == 4  # "be brief\nhello there", by words
        models = await (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        assert (await client.get("/health")).status == 200
    finally:
        await client.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"prompt": "x"}, "'model' is required"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 4, "min_tokens": 6}, "min_tokens"),
        ({"model": "tiny", "prompt": ["a", "b"]}, "one string"),
        ({"model": "tiny", "prompt": "x", "n": 2}, "'n' must be 1"),
    ],
)
async def test_bad_requests_get_openai_shaped_errors(body: dict[str, Any], match: str) -> None:
    client = await _client()
    try:
        resp = await client.post("/v1/completions", json=body)
        assert resp.status == 400
        assert match in (await resp.json())["error"]["message"]
    finally:
        await client.close()


class CountingEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def generate(self, prompts: Any, max_new_tokens: int) -> Any:
        self.batches.append(len(prompts))
        return super().generate(prompts, max_new_tokens)


@pytest.mark.anyio
async def test_concurrent_requests_of_one_length_share_a_batch() -> None:
    import anyio

    engine = CountingEngine()
    engine.load("tiny", "cpu", {})
    # A long wait for companions, so the three requests surely meet.
    server = OpenAIServer(engine, None, ServeOptions("tiny", 4, 500.0))
    client: TestClient[Any, Any] = TestClient(TestServer(server.app()))
    await client.start_server()
    results: list[Any] = []
    try:

        async def one(i: int, max_tokens: int) -> None:
            resp = await client.post("/v1/completions", json={
                "model": "tiny", "prompt": f"p {i}", "max_tokens": max_tokens})  # fmt: skip
            results.append(await resp.json())

        async with anyio.create_task_group() as group:
            for i in range(3):
                group.start_soon(one, i, 2)
            group.start_soon(one, 9, 3)
    finally:
        await client.close()
    assert sorted(r["usage"]["completion_tokens"] for r in results) == [2, 2, 2, 3]
    # the three of length 2 in one batch; the other length in its own
    assert sorted(engine.batches) == [1, 3]


class StoppableEngine(FakeEngine):
    """Asks ``stop`` between tokens, as the torch engine does; notes each batch's size and
    how many tokens it got through."""

    stoppable = True

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.steps: list[int] = []

    def generate(self, prompts: Any, max_new_tokens: int, stop: Any = None) -> Any:
        self.batches.append(len(prompts))
        step = 0
        for step in range(1, max_new_tokens + 1):  # noqa: B007 - the count is the result
            time.sleep(self.token_s)
            if stop is not None and all(stop()):
                break
        self.steps.append(step)
        return super().generate(prompts, 1)


async def _until(check: Any) -> None:
    for _ in range(2000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server never got there")


@pytest.mark.anyio
async def test_hang_ups_leave_the_queue_and_stop_the_running_batch() -> None:
    engine = StoppableEngine()
    engine.load("tiny", "cpu", {})
    server = OpenAIServer(engine, None, ServeOptions("tiny", 1, 0.0))
    client: TestClient[Any, Any] = TestClient(TestServer(server.app()))
    await client.start_server()
    body = {"model": "tiny", "prompt": "p", "max_tokens": 5000}
    try:
        running = asyncio.create_task(client.post("/v1/completions", json=body))
        await _until(lambda: server.metrics.running._value.get() == 1)
        queued = asyncio.create_task(client.post("/v1/completions", json=body))
        await _until(lambda: server.metrics.queue_depth._value.get() == 1)
        # The waiting client hangs up: its place is free at once.
        queued.cancel()
        await _until(lambda: server.metrics.queue_depth._value.get() == 0)
        # The running one hangs up: the engine stops at its next token.
        running.cancel()
        await _until(lambda: engine.steps)
        await _until(lambda: not server.active)
    finally:
        await client.close()
    assert engine.batches == [1] and engine.steps[0] < 5000
    assert not server.batcher.waiting
    # both counted as hang-ups
    assert server.metrics.cancelled.labels("disconnect")._value.get() == 2


class LiveEngine(FakeEngine):
    """Hands its stop check each step's tokens, as the torch engine does, and waits after
    the first until the test sets ``release``; with ``fail`` it then raises."""

    stoppable = True

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.ended = threading.Event()
        self.fail = False

    def generate(self, prompts: Any, max_new_tokens: int, stop: Any = None) -> Any:
        records = super().generate(prompts, max_new_tokens)
        try:
            for step in range(max_new_tokens):
                stop([r.output_ids[step] for r in records])
                if step == 0:
                    self.release.wait(30)
            if self.fail:
                raise RuntimeError("simulated failure mid-generation")
            return records
        finally:
            self.ended.set()


async def _first_event(resp: Any) -> Any:
    while True:
        line = (await resp.content.readline()).decode()
        if line.startswith("data: "):
            return json.loads(line[6:])


@pytest.mark.anyio
@pytest.mark.parametrize("fail", [False, True])
async def test_stream_chunks_leave_as_tokens_are_generated(fail: bool) -> None:
    engine = LiveEngine()
    engine.load("tiny", "cpu", {})
    engine.fail = fail
    server = OpenAIServer(engine, SplitTokenizer(), ServeOptions("tiny", 1, 0.0))
    client: TestClient[Any, Any] = TestClient(TestServer(server.app()))
    await client.start_server()
    try:
        resp = await client.post("/v1/completions", json={
            "model": "tiny", "prompt": "def f():", "max_tokens": 4, "stream": True,
            "return_token_ids": True})  # fmt: skip
        first = await _first_event(resp)
        # the engine is held after its first token: this chunk left while it generated
        assert not engine.ended.is_set()
        assert first["choices"][0]["finish_reason"] is None
        engine.release.set()
        rest = (await resp.text()).splitlines()
    finally:
        engine.release.set()
        await client.close()
    events = [first] + [json.loads(x[6:]) for x in rest if x.startswith("data: {")]
    if fail:
        # a stream under way cannot change its status: an error event ends it, no [DONE]
        assert "data: [DONE]" not in rest
        assert events[-1]["error"]["code"] == "server_error"
        assert "simulated failure" in events[-1]["error"]["message"]
        return
    assert "data: [DONE]" in rest
    ids = [e["choices"][0]["token_ids"][0] for e in events]
    assert ids == [(len("def f():") + i) % 97 for i in range(4)]
    assert "".join(e["choices"][0]["text"] for e in events) == " ".join(map(str, ids))
    assert events[-1]["choices"][0]["finish_reason"] == "length"
