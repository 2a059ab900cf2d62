"""The ``http`` engine: any OpenAI-compatible server, measured under load.

Terms:
- *server*: a plan's ``[servers.<name>]`` table (greenmon/plan.py ``ServerSpec``): base URL,
  model name, API (``completions`` or ``chat``), and optionally the ``command`` that starts
  it.  The configuration ``http/<name>`` names it; the "provider" is the server's name.
- *load level*: ``concurrency`` N (a closed loop: N requests in flight, each slot sending
  its next prompt as soon as its last answer ends) or ``request_rate_hz`` R (an open loop:
  arrivals at seeded exponential gaps of mean 1/R s, however many are then in flight).
  This engine ``handles_load``: the runner gives it a whole phase's prompts in one call.
- *streamed tokens*: every request is streamed (server-sent events).  A chunk carrying
  ``token_ids`` (vLLM's ``return_token_ids``, greenmon serve) counts that many tokens;
  otherwise a token chunk counts one, even with empty text (``_piece``), as vLLM and
  llama.cpp send one chunk per token.  ``usage`` (asked for with
  ``stream_options.include_usage``) is the server's claim, stored beside the count; the
  unit is flagged ``token_count_mismatch`` (greenmon/views.py) when the count differs
  from ``max_new_tokens`` or from the claim.
- *TTFT*: from sending the request to the first chunk that carries a token.
- *failed request*: one the server refuses (non-200, an error event) or that times out
  (``request_timeout_s``) is recorded with the server's error (``requests.error``) and
  never retried; the unit goes on and is flagged ``failed_requests``.  Only when every
  request fails does the unit fail.

The server is started in ``load`` (its start-up is the load phase) and stopped in
``close``.  ``generate`` runs in the runner's engine thread, so it runs aiohttp on an
event loop of its own (``asyncio.run``).  Token ids for the fidelity check are the
server's when it streams them, else the text re-encoded with the model's tokenizer
(close to, not always exactly, what the server generated).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from greenmon.api.messages import ServingStats
from greenmon.attribution import listening_pid, server_energy_j
from greenmon.engines._common import check_options
from greenmon.engines.base import LoadInfo, Prompt, RequestRecord
from greenmon.errors import EngineError

OPTIONS: dict[str, object] = {
    "server": None,  # the plan's [servers.<name>] table, as a dict (Plan.engine_options_for)
    "concurrency": None,
    "request_rate_hz": None,
    "seed": 0,
}
STOP_TIMEOUT_S = 15.0
READY_POLL_S = 0.25
LOG_TAIL_CHARS = 2000
# Latencies kept for the live view (runner progress -> TUI).
LIVE_WINDOW = 256


@dataclass
class _Live:
    """What the runner's progress shows while a phase runs; read from another thread."""

    in_flight: int = 0
    done: int = 0
    failed: int = 0
    tokens: int = 0
    started_ns: int | None = None
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LIVE_WINDOW))
    ttfts_s: deque[float] = field(default_factory=lambda: deque(maxlen=LIVE_WINDOW))
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Server:
    base_url: str
    model: str
    api: str
    command: list[str] | None
    ready_url: str
    ready_timeout_s: float
    exact_tokens: bool
    extra: dict[str, Any]
    request_timeout_s: float
    pid: int | None = None

    @classmethod
    def from_options(cls, name: str, table: Mapping[str, Any] | None) -> _Server:
        if not table:
            raise EngineError(
                f"http/{name} has no server: add a [servers.{name}] table with base_url and "
                "model to the plan",
                title="No server configured",
            )
        base_url = str(table["base_url"]).rstrip("/")
        return cls(
            base_url=base_url,
            model=str(table["model"]),
            api=str(table.get("api", "completions")),
            command=list(table["command"]) if table.get("command") else None,
            ready_url=str(table.get("ready_url") or f"{base_url}/models"),
            ready_timeout_s=float(table.get("ready_timeout_s", 120.0)),
            exact_tokens=bool(table.get("exact_tokens", True)),
            extra=dict(table.get("extra") or {}),
            request_timeout_s=float(table.get("request_timeout_s", 600.0)),
            pid=None if table.get("pid") is None else int(table["pid"]),
        )

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"

    def body(self, prompt: Prompt, max_new_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt.text}]
        else:
            body["prompt"] = prompt.text
        if self.exact_tokens:
            body["min_tokens"] = max_new_tokens
            body["ignore_eos"] = True
        body.update(self.extra)
        return body


def server_pid(server: _Server) -> int | None:
    """A server greenmon did not start: the plan's ``pid``, else the process listening on
    base_url's port (None when neither is known, e.g. another user's process)."""
    if server.pid is not None:
        return server.pid
    port = urllib.parse.urlsplit(server.base_url).port
    return None if port is None else listening_pid(port)


class HttpEngine:
    name: ClassVar[str] = "http"
    providers: ClassVar[tuple[str, ...]] = ()  # any server name from the plan
    handles_load: ClassVar[bool] = True

    def __init__(self, cache_dir: str | None = None) -> None:
        self.cache_dir = cache_dir
        self._server: _Server | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._tokenizer: Any = None
        self._tokenizer_tried = False
        self._model: Any = None
        self._concurrency = 1
        self._rate_hz: float | None = None
        self._seed = 0
        self._live = _Live()

    # -- load / close ----------------------------------------------------------------------
    def load(self, model: Any, provider: str, options: Mapping[str, Any]) -> LoadInfo:
        opts = check_options(self.name, options, OPTIONS)
        server = _Server.from_options(provider, opts["server"])
        self._concurrency = int(opts["concurrency"] or 1)
        self._rate_hz = None if opts["request_rate_hz"] is None else float(
            opts["request_rate_hz"]
        )
        self._seed = int(opts["seed"])
        self._server = server
        self._model = model
        self._tokenizer = None
        self._tokenizer_tried = False
        start_s = time.perf_counter()
        if server.command:
            if asyncio.run(_answers(server.ready_url)):
                raise EngineError(
                    f"something already answers at {server.ready_url} before http/{provider}'s "
                    "command ran: stop that server, or remove `command` from "
                    f"[servers.{provider}] to measure the running one",
                    title="Server already running",
                )
            self._start(server.command)
        asyncio.run(self._wait_ready(server, provider))
        models = asyncio.run(_models(server.base_url))
        load_s = time.perf_counter() - start_s
        return LoadInfo(
            export_s=0.0,
            load_s=load_s,
            export_cache_hit=False,
            details={
                "server": provider,
                "base_url": server.base_url,
                "model": server.model,
                "api": server.api,
                "exact_tokens": server.exact_tokens,
                "concurrency": None if self._rate_hz else self._concurrency,
                "request_rate_hz": self._rate_hz,
                "server_pid": (
                    self._process.pid if self._process is not None else server_pid(server)
                ),
                "server_log": None if self._log_path is None else str(self._log_path),
                "served_models": models,
            },
        )

    def _start(self, command: Sequence[str]) -> None:
        handle, name = tempfile.mkstemp(prefix="greenmon-server-", suffix=".log")
        self._log_path = Path(name)
        try:
            # A session of its own, so close() stops the server and every process it forks.
            self._process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            raise EngineError(
                f"the server command {' '.join(command)!r} could not start: {error}",
                title="Server did not start",
            ) from error
        finally:
            os.close(handle)

    async def _wait_ready(self, server: _Server, name: str) -> None:
        deadline = time.monotonic() + server.ready_timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise EngineError(
                    f"the server of http/{name} exited with status {self._process.returncode} "
                    f"before it was ready. Its output ends: {self._log_tail()}",
                    title="Server did not start",
                )
            if await _answers(server.ready_url):
                return
            await asyncio.sleep(READY_POLL_S)
        self._stop()
        raise EngineError(
            f"http/{name}: {server.ready_url} did not answer within {server.ready_timeout_s:g} s "
            f"(ready_timeout_s). Is base_url right and the server started? {self._log_tail()}",
            title="Server not ready",
        )

    def _log_tail(self) -> str:
        if self._log_path is None:
            return "(no command was run)"
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-LOG_TAIL_CHARS:].strip() or "(no output)"

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def close(self) -> None:
        self._stop()
        self._tokenizer = None
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    # -- generate ----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[RequestRecord]:
        if self._server is None:
            raise EngineError("generate called before load", title="Engine not loaded")
        if not prompts:
            raise EngineError("generate was called with no prompts", title="Empty batch")
        return asyncio.run(self._generate(self._server, list(prompts), max_new_tokens))

    async def _generate(
        self, server: _Server, prompts: list[Prompt], max_new_tokens: int
    ) -> list[RequestRecord]:
        import aiohttp

        self._live = _Live(started_ns=time.monotonic_ns())
        records: list[RequestRecord | None] = [None] * len(prompts)
        timeout = aiohttp.ClientTimeout(total=server.request_timeout_s)
        # Closed loop: exactly N connections; open loop: as many as arrivals need.  One
        # connection per request (force_close): llama-cpp-python's server (uvicorn,
        # sse-starlette) closes a connection after its stream although it answered
        # keep-alive, and a slot's next request sent down that pooled connection failed with
        # ServerDisconnectedError before the server saw it (about half the runs of
        # tests/serving/test_third_party_server.py at concurrency 3; every run when the
        # stream was read to its end).  A loopback connect costs tens of microseconds.
        limit = 0 if self._rate_hz else self._concurrency
        connector = aiohttp.TCPConnector(limit=limit, force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

            async def send(index: int) -> None:
                records[index] = await self._request(session, server, prompts[index],
                                                     max_new_tokens)

            if self._rate_hz:
                await _open_loop(send, len(prompts), self._rate_hz, self._seed)
            else:
                await _closed_loop(send, len(prompts), self._concurrency)
        done = [r for r in records if r is not None]
        if done and all(r.error is not None for r in done):
            # Not one answer: the server is down or refuses everything, a failed unit
            # rather than a flagged one.
            raise EngineError(
                f"every request to {server.endpoint} failed; the first: {done[0].error}",
                title="Server request failed",
            )
        return done

    async def _request(
        self, session: Any, server: _Server, prompt: Prompt, max_new_tokens: int
    ) -> RequestRecord:
        live = self._live
        with live.lock:
            live.in_flight += 1
        reply = _Reply(start_ns=time.monotonic_ns())
        error: str | None = None
        try:
            await _post(session, server, prompt, max_new_tokens, reply)
        except EngineError as failure:
            # Recorded as failed with the server's error, never retried: a retry would
            # put load on the server that the plan's level did not ask for, and hide how
            # often it fails.  The unit goes on and is flagged (failed_requests).
            error = failure.message
        finally:
            with live.lock:
                live.in_flight -= 1
        end_ns = time.monotonic_ns()
        text = "".join(reply.text_parts)
        output_ids = tuple(reply.token_ids) if reply.token_ids else self._encode(text)
        tokens_in = reply.usage.get("prompt_tokens")
        if tokens_in is None:
            tokens_in = len(self._encode(prompt.text))
        if error is None:
            with live.lock:
                live.done += 1
        else:
            with live.lock:
                live.failed += 1
        start_ns, first_ns = reply.start_ns, reply.first_ns
        with live.lock:
            live.tokens += reply.streamed
            live.latencies_s.append((end_ns - start_ns) / 1e9)
            if first_ns is not None:
                live.ttfts_s.append((first_ns - start_ns) / 1e9)
        claimed = reply.usage.get("completion_tokens")
        return RequestRecord(
            prompt_id=prompt.prompt_id,
            tokens_in=int(tokens_in),
            tokens_out=reply.streamed,
            start_ns=start_ns,
            end_ns=end_ns,
            ttft_ns=None if first_ns is None else first_ns - start_ns,
            output_ids=output_ids,
            text=text,
            tokens_requested=max_new_tokens,
            usage_tokens_out=None if claimed is None else int(claimed),
            error=error,
            server_energy_j=server_energy_j(reply.usage),
        )

    def _encode(self, text: str) -> tuple[int, ...]:
        # Loaded on first need only: a server that streams token ids and usage never needs
        # it, and importing transformers costs seconds.
        if not self._tokenizer_tried:
            self._tokenizer_tried = True
            self._tokenizer = _tokenizer_or_none(self._model, self.cache_dir)
        if self._tokenizer is None:
            return ()
        return tuple(int(t) for t in self._tokenizer.encode(text, add_special_tokens=False))

    # -- live progress -------------------------------------------------------------------
    def live(self) -> ServingStats:
        """Requests in flight, tokens per second and latency so far in the current phase."""
        live = self._live
        with live.lock:
            latencies = sorted(live.latencies_s)
            ttfts = sorted(live.ttfts_s)
            elapsed_s = (
                (time.monotonic_ns() - live.started_ns) / 1e9 if live.started_ns else 0.0
            )
            return ServingStats(
                requests_in_flight=live.in_flight,
                requests_done=live.done,
                requests_failed=live.failed,
                tokens_per_s=live.tokens / elapsed_s if elapsed_s > 0 else None,
                latency_p50_s=_quantile(latencies, 0.5),
                latency_p90_s=_quantile(latencies, 0.9),
                ttft_p50_s=_quantile(ttfts, 0.5),
                concurrency=None if self._rate_hz else self._concurrency,
                request_rate_hz=self._rate_hz,
            )


Engine = HttpEngine


# -- the two load loops ---------------------------------------------------------------------
async def _closed_loop(send: Any, count: int, concurrency: int) -> None:
    """N slots; each sends the next prompt as soon as its previous answer has ended."""
    next_index = 0

    async def slot() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await send(index)

    await _gather([slot() for _ in range(min(concurrency, count))])


def poisson_offsets_s(count: int, rate_hz: float, seed: int) -> list[float]:
    """Arrival times (s from the start) of ``count`` requests at mean rate ``rate_hz``:
    exponential gaps from a generator seeded by the plan, so every configuration at a
    level sees the same arrivals.  The first request arrives at 0."""
    rng = random.Random(seed)
    offsets = [0.0]
    for _ in range(count - 1):
        offsets.append(offsets[-1] + rng.expovariate(rate_hz))
    return offsets


async def _open_loop(send: Any, count: int, rate_hz: float, seed: int) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def arrive(index: int, offset_s: float) -> None:
        await asyncio.sleep(max(0.0, start + offset_s - loop.time()))
        await send(index)

    await _gather(
        [arrive(i, o) for i, o in enumerate(poisson_offsets_s(count, rate_hz, seed))]
    )


async def _gather(coroutines: list[Any]) -> None:
    """Run them all; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# -- the wire -----------------------------------------------------------------------------
async def _events(content: Any) -> Any:
    """The JSON objects of a server-sent event stream, until ``[DONE]``."""
    async for raw in content:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            if "error" in event and not event.get("choices"):
                raise EngineError(
                    f"the server streamed an error: {event['error']}",
                    title="Server request failed",
                )
            yield event


@dataclass
class _Reply:
    """What one streamed request has brought so far."""

    start_ns: int
    first_ns: int | None = None
    streamed: int = 0
    text_parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)


async def _post(
    session: Any, server: _Server, prompt: Prompt, max_new_tokens: int, reply: _Reply
) -> None:
    """Send one request and read its stream into ``reply``; failures are ``EngineError``."""
    import aiohttp

    body = server.body(prompt, max_new_tokens)
    try:
        async with session.post(server.endpoint, json=body) as resp:
            if resp.status != 200:
                detail = (await resp.text())[:500]
                raise EngineError(
                    f"{server.endpoint} answered {resp.status} to prompt {prompt.prompt_id}: "
                    f"{detail}" + _hint(detail),
                    title="Server refused a request",
                )
            async for chunk in _events(resp.content):
                if chunk.get("usage"):
                    reply.usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    piece, ids, count = _piece(choice, server.api)
                    if count and reply.first_ns is None:
                        reply.first_ns = time.monotonic_ns()
                    reply.streamed += count
                    reply.token_ids += ids
                    reply.text_parts.append(piece)
    except TimeoutError as error:
        raise EngineError(
            f"request {prompt.prompt_id} to {server.endpoint} timed out after "
            f"{server.request_timeout_s:g} s (request_timeout_s)",
            title="Server request failed",
        ) from error
    except aiohttp.ClientError as error:
        raise EngineError(
            f"request {prompt.prompt_id} to {server.endpoint} failed: "
            f"{type(error).__name__}: {error}",
            title="Server request failed",
        ) from error


def _piece(choice: Mapping[str, Any], api: str) -> tuple[str, list[int], int]:
    """A streamed choice's text, token ids and how many tokens it carries.

    With ``token_ids`` the count is theirs.  Otherwise a chunk is one token when it is a
    token chunk (no ``finish_reason`` yet; for chat, a delta with ``content``) even if its
    text is empty: llama.cpp streams a token that ends inside a UTF-8 character as "" (the
    bytes come with the next one).  The closing chunk (``finish_reason`` set) counts only
    when it carries text, as vLLM's last token does; a chat's role-only first delta never.
    """
    finished = choice.get("finish_reason") is not None
    if api == "chat":
        delta = choice.get("delta") or {}
        piece = str(delta.get("content") or "")
        is_token = "content" in delta and delta["content"] is not None
    else:
        piece = str(choice.get("text") or "")
        is_token = "text" in choice
    ids = [int(t) for t in choice.get("token_ids") or []]
    if ids:
        return piece, ids, len(ids)
    return piece, ids, 1 if is_token and (piece or not finished) else 0


def _hint(detail: str) -> str:
    if "min_tokens" in detail or "ignore_eos" in detail:
        return (
            ". This server refuses min_tokens / ignore_eos: set exact_tokens = false in its "
            "[servers.<name>] table (its counts are then only checked and flagged)"
        )
    return ""


async def _answers(url: str) -> bool:
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session,
            session.get(url) as resp,
        ):
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def _models(base_url: str) -> list[str]:
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session,
            session.get(f"{base_url}/models") as resp,
        ):
            if resp.status != 200:
                return []
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return []
    return [str(m.get("id")) for m in (data or {}).get("data", []) if isinstance(m, dict)]


def _tokenizer_or_none(model: Any, cache_dir: str | None) -> Any:
    """The model's tokenizer, to count prompt tokens and re-encode text when the server
    sends neither; None when the model is not a local transformers model."""
    try:
        from greenmon.engines._common import as_model, load_tokenizer

        return load_tokenizer(as_model(model, cache_dir))
    except Exception:
        return None


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
