"""``greenmon serve``: an OpenAI-compatible server (aiohttp) around greenmon's own engines.

It is the study's serving setup: one runtime engine behind an HTTP server, prompts sent as
requests, so a plan can measure ``torch/cpu`` in-process beside ``http/greenmon-serve``
(the same engine behind this server) and see what the serving layer itself costs.

Terms:
- *routes*: ``GET /health``, ``GET /metrics`` (prometheus-client), ``GET /v1/models``,
  ``POST /v1/completions`` and ``POST /v1/chat/completions``, streaming (server-sent
  events) or not, with ``usage``.
- *admission*: every request is checked before any work is queued: its body (size, JSON,
  field types, ``n`` = 1, one prompt, ``max_tokens`` > 0), its model (else 404
  ``model_not_found``), its length (prompt tokens + ``max_tokens`` within the model's
  context, else 400 worded as vLLM words it) and room in the queue (else 429 with
  ``Retry-After``).  Every refusal is an OpenAI-shaped error body
  (``{"error": {"message", "type", "param", "code"}}``), so the official client raises
  its matching exception.  With an API key, every route but ``/health`` needs
  ``Authorization: Bearer <key>`` (else 401).
- *exact tokens*: the engines generate exactly ``max_tokens`` new tokens greedily
  (engines/base.py); ``min_tokens`` and ``ignore_eos`` are accepted (they hold already),
  ``temperature`` and ``top_p`` are accepted and ignored: decoding is always greedy.
- *queue* and *batch*: admitted requests wait in a bounded queue; those of the same
  ``max_tokens``, up to ``max_batch_size``, collected for at most ``batch_wait_ms`` after
  the first, go to one ``generate`` call, so N concurrent requests become one batch of N
  as an in-process engine at ``batch_size = N`` would run them.
- *cancellation*: a request whose client hangs up (streamed or not), or that a shutdown
  cancels, leaves the queue at once; once in a batch, a *stoppable* engine
  (engines/base.py ``stoppable``: torch, onnx, openvino) is asked between tokens and ends
  that request's row; the batch ends as soon as none of its requests is still wanted.
- *streaming*: one chunk per generated token (the text the token adds, decoded
  incrementally), then ``usage``.  A stoppable engine hands each row's newest token to
  its stop check (engines/base.py ``StopCheck``) as it is generated; the engine thread
  passes it to the request's handler (``call_soon_threadsafe`` into an asyncio queue),
  which sends its chunk at once, so the time to first token a client sees is the time
  to the first token.  The last chunk (``finish_reason``, and with energy the request's
  ``usage``) waits for the engine's record.  Engines that hand over no tokens
  (torchscript, tensorflow, mxnet, worker and custom engines) generate a whole request
  at once, so their stream is sent after generation.  ``return_token_ids: true`` (vLLM's
  name) adds each chunk's token ids, so a client can count and compare tokens exactly.
- *chat*: the messages' contents joined by newlines are the prompt (no chat template), so
  chat and completions do the same work for the same text.
- *shutdown*: on SIGTERM or SIGINT the server stops accepting connections, lets the
  requests in flight finish for up to ``shutdown_timeout_s``, then cancels the rest; it
  logs which requests finished and which were cancelled.

torch and the engines' libraries are imported by the engine chosen, never here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from greenmon.engines.base import Engine, Prompt, RequestRecord, stoppable
from greenmon.errors import GreenmonError
from greenmon.serve_energy import EnergyCollector, MeteredBatches

log = logging.getLogger("greenmon.serve")

DEFAULT_MAX_TOKENS = 16
DEFAULT_MAX_QUEUE = 256
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0
# How often a waiting request checks that its client is still connected.
DISCONNECT_POLL_S = 0.05
# After the shutdown bound, how long cancelled requests get to end before the engine closes.
CANCEL_GRACE_S = 5.0
# The one route a load balancer may probe without the API key, as in vLLM.
OPEN_ROUTES = frozenset({"/health"})
# Latency buckets (s): from a tiny model's few milliseconds to a large model's minutes.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServeError(GreenmonError):
    title = "Cannot serve"


# -- refusals --------------------------------------------------------------------------------
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    """A request the server refuses, answered with an OpenAI-shaped error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return error_response(self.status, self.message, param=self.param, code=self.code,
                              headers=self.headers)  # fmt: skip


class BadRequest(ApiError):
    """400, naming the field at fault in ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(400, message, param=param, code=code)


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
    return web.json_response(body, status=status, headers=headers)


# -- the request -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CompletionRequest:
    """A checked request: what to generate and how to answer."""

    model: str
    text: str
    max_tokens: int
    stream: bool
    include_usage: bool
    with_ids: bool
    chat: bool

    @property
    def prompt_field(self) -> str:
        return "messages" if self.chat else "prompt"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(body: Mapping[str, Any], name: str, check: Callable[[Any], bool], what: str) -> Any:
    """The field's value (None when absent or null), or 400 naming it."""
    value = body.get(name)
    if value is not None and not check(value):
        raise BadRequest(f"'{name}' must be {what}", param=name)
    return value


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_request(body: Any, *, chat: bool) -> CompletionRequest:
    """The checked request, or BadRequest naming the field at fault."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("'model' is required (a string; see GET /v1/models)", param="model")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list of {role, content}",
                             param="messages")  # fmt: skip
        parts = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest("every message must be an object with a string 'role'",
                                 param="messages")  # fmt: skip
            content = message.get("content")
            if not isinstance(content, str):
                raise BadRequest("every message needs 'content' as a string", param="messages")
            parts.append(content)
        text = "\n".join(parts)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest(
                "'prompt' must be one string: greenmon serve answers one prompt per request "
                "(send a list of prompts as separate requests)",
                param="prompt",
            )
        text = prompt
    max_tokens = body.get("max_tokens")
    name = "max_tokens"
    if max_tokens is None and body.get("max_completion_tokens") is not None:
        max_tokens, name = body["max_completion_tokens"], "max_completion_tokens"
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not _is_int(max_tokens) or max_tokens < 1:
        raise BadRequest(f"'{name}' must be a positive integer", param=name)
    min_tokens = _optional(body, "min_tokens", _is_int, "an integer")
    if min_tokens is not None and not 0 <= min_tokens <= max_tokens:
        raise BadRequest("'min_tokens' must be an integer from 0 to 'max_tokens'",
                         param="min_tokens")  # fmt: skip
    n = _optional(body, "n", _is_int, "an integer")
    if n is not None and n != 1:
        raise BadRequest("'n' must be 1: greenmon serve decodes one greedy answer", param="n")
    best_of = _optional(body, "best_of", _is_int, "an integer")
    if best_of is not None and best_of != 1:
        raise BadRequest("'best_of' must be 1: decoding is greedy", param="best_of")
    for flag in ("stream", "ignore_eos", "return_token_ids", "echo"):
        _optional(body, flag, lambda v: isinstance(v, bool), "true or false")
    if body.get("echo"):
        raise BadRequest("'echo' is not served", param="echo")
    if body.get("logprobs") not in (None, False):
        raise BadRequest("'logprobs' is not served", param="logprobs")
    for number in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _optional(body, number, _number, "a number")
    stream_options = _optional(body, "stream_options", lambda v: isinstance(v, dict), "an object")
    include_usage = (stream_options or {}).get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise BadRequest("'stream_options.include_usage' must be true or false",
                         param="stream_options")  # fmt: skip
    return CompletionRequest(
        model=model,
        text=text,
        max_tokens=int(max_tokens),
        stream=bool(body.get("stream")),
        include_usage=bool(include_usage),
        with_ids=bool(body.get("return_token_ids")),
        chat=chat,
    )


def check_context(
    request: CompletionRequest, prompt_tokens: int, max_model_len: int | None
) -> None:
    """400 when the prompt and the tokens asked for do not fit the model's context."""
    if prompt_tokens == 0:
        raise BadRequest(f"'{request.prompt_field}' is empty after tokenisation",
                         param=request.prompt_field)  # fmt: skip
    if max_model_len is None:
        return
    asked = prompt_tokens + request.max_tokens
    if asked > max_model_len:
        # vLLM's wording, so a client written against vLLM recognises it.
        raise BadRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {asked} tokens ({prompt_tokens} in the messages, "
            f"{request.max_tokens} in the completion). Please reduce the length of the "
            "messages or completion.",
            param=request.prompt_field if prompt_tokens >= max_model_len else "max_tokens",
            code="context_length_exceeded",
        )


# -- metrics ---------------------------------------------------------------------------------
class ServeMetrics:
    """The server's own Prometheus metrics, in a registry of its own (one per server)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("greenmon_serve_requests", "HTTP requests answered",
                                ["route", "status"], registry=r)  # fmt: skip
        self.prompt_tokens = Counter("greenmon_serve_prompt_tokens",
                                     "prompt tokens of answered requests", registry=r)  # fmt: skip
        self.completion_tokens = Counter("greenmon_serve_completion_tokens",
                                         "tokens generated for answered requests",
                                         registry=r)  # fmt: skip
        self.cancelled = Counter("greenmon_serve_cancelled_requests",
                                 "requests cancelled before their answer was sent",
                                 ["reason"], registry=r)  # fmt: skip
        self.latency = Histogram("greenmon_serve_request_latency_seconds",
                                 "from admission to the last byte of the answer",
                                 buckets=LATENCY_BUCKETS_S, registry=r)  # fmt: skip
        self.ttft = Histogram("greenmon_serve_time_to_first_token_seconds",
                              "from admission to the first token sent to the client",
                              buckets=LATENCY_BUCKETS_S, registry=r)  # fmt: skip
        self.queue_depth = Gauge("greenmon_serve_queue_depth",
                                 "requests admitted and waiting for a batch",
                                 registry=r)  # fmt: skip
        self.running = Gauge("greenmon_serve_requests_running",
                             "requests in the batch the engine is generating",
                             registry=r)  # fmt: skip

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# -- the queue and the engine thread ---------------------------------------------------------
class RequestCancelled(Exception):
    """The request's answer is no longer wanted: ``reason`` is disconnect or shutdown."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class _Pending:
    request_id: str
    prompt: Prompt
    max_tokens: int
    future: asyncio.Future[RequestRecord]
    # Read by the engine thread between tokens, hence a threading.Event.
    cancelled: threading.Event = field(default_factory=threading.Event)
    # A streamed request's tokens as the engine generates them (None: not streamed); put
    # on the event loop, so every token is queued before the future is done.
    tokens: asyncio.Queue[int] | None = None


class _Batcher:
    """One engine, one thread: admitted requests wait here and run in batches of equal
    length; a cancelled one leaves the queue, or its batch's row stops."""

    def __init__(
        self,
        engine: Engine,
        options: ServeOptions,
        metrics: ServeMetrics,
        metered: MeteredBatches | None = None,
    ) -> None:
        self.engine = engine
        self.options = options
        self.metrics = metrics
        # Per-request energy (greenmon/serve_energy.py): None leaves usage without energy_j.
        self.metered = metered
        self.waiting: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="greenmon-serve-engine"
        )

    def offer(self, pending: _Pending) -> bool:
        """Queue the request; False when the queue is full."""
        if len(self.waiting) >= self.options.max_queue:
            return False
        self.waiting.append(pending)
        self.metrics.queue_depth.set(len(self.waiting))
        self._wake.set()
        return True

    def cancel(self, pending: _Pending, reason: str) -> None:
        pending.cancelled.set()
        if pending in self.waiting:
            self.waiting.remove(pending)
            self.metrics.queue_depth.set(len(self.waiting))
        if not pending.future.done():
            pending.future.set_exception(RequestCancelled(reason))
            # Nobody may await it any more; retrieving the exception keeps asyncio quiet.
            pending.future.exception()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self.metrics.running.set(len(batch))
            try:
                records = await loop.run_in_executor(
                    self.executor, self._generate, batch, loop
                )
            except Exception as error:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            finally:
                self.metrics.running.set(0)
            for pending, record in zip(batch, records, strict=True):
                if not pending.future.done():
                    pending.future.set_result(record)

    def _generate(
        self, batch: list[_Pending], loop: asyncio.AbstractEventLoop
    ) -> list[RequestRecord]:
        """Runs in the engine thread."""
        prompts = [p.prompt for p in batch]
        max_tokens = batch[0].max_tokens
        streamed = any(p.tokens is not None for p in batch)

        def stop(newest: Sequence[int] | None = None, /) -> list[bool]:
            if newest is not None and streamed:
                loop.call_soon_threadsafe(_deliver, batch, list(newest))
            return [p.cancelled.is_set() for p in batch]

        def run() -> list[RequestRecord]:
            if stoppable(self.engine):
                generate = cast(Any, self.engine).generate
                return cast(list[RequestRecord], generate(prompts, max_tokens, stop=stop))
            return self.engine.generate(prompts, max_tokens)

        # the batch's energy is charged to its requests as it ends
        return run() if self.metered is None else self.metered.charged(run)

    async def _next_batch(self) -> list[_Pending]:
        """The oldest waiting request and those of its length that join it in time, in
        arrival order; requests of another length wait for a later batch."""
        while True:
            while not self.waiting:
                self._wake.clear()
                await self._wake.wait()
            first = self.waiting[0]
            deadline = time.monotonic() + self.options.batch_wait_ms / 1e3
            while True:
                batch = [p for p in self.waiting if p.max_tokens == first.max_tokens]
                batch = batch[: self.options.max_batch_size]
                remaining = deadline - time.monotonic()
                if len(batch) >= self.options.max_batch_size or remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            # The first may have been cancelled while the batch gathered: start again.
            if first not in self.waiting:
                continue
            batch = [p for p in self.waiting if p.max_tokens == first.max_tokens]
            batch = batch[: self.options.max_batch_size]
            for pending in batch:
                self.waiting.remove(pending)
            self.metrics.queue_depth.set(len(self.waiting))
            return batch


def _deliver(batch: Sequence[_Pending], newest: Sequence[int]) -> None:
    """On the event loop: each streamed request still wanted gets its row's newest token."""
    for pending, token in zip(batch, newest, strict=False):
        if pending.tokens is not None and not pending.future.done():
            pending.tokens.put_nowait(int(token))


# -- the server ------------------------------------------------------------------------------
@dataclass
class ServeOptions:
    served_model_name: str
    max_batch_size: int = 1
    batch_wait_ms: float = 5.0
    # The model's context in tokens (prompt + completion); None: not checked.
    max_model_len: int | None = None
    api_key: str | None = None
    max_queue: int = DEFAULT_MAX_QUEUE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OpenAIServer:
    """The routes, around a loaded engine and (optionally) its tokenizer, which counts
    prompt tokens for the context check and decodes streamed pieces."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        options: ServeOptions,
        metered: MeteredBatches | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.options = options
        self.metrics = ServeMetrics()
        if metered is not None:
            self.metrics.registry.register(EnergyCollector(metered.meter))
        self.batcher = _Batcher(engine, options, self.metrics, metered)
        self._task: asyncio.Task[None] | None = None
        self.draining = False
        # Requests admitted and not yet answered, by id (what a shutdown reports on).
        self.active: dict[str, _Pending] = {}

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._errors_and_auth], client_max_size=self.options.max_body_bytes
        )
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_route)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._drain)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self._task = asyncio.create_task(self.batcher.run())

    async def _drain(self, app: web.Application) -> None:
        """Let the requests in flight finish within the bound, then cancel the rest."""
        self.draining = True
        if not self.active:
            return
        bound_s = self.options.shutdown_timeout_s
        log.warning("shutting down: %d request(s) in flight (%s); finishing them for up to %g s",
                    len(self.active), ", ".join(self.active), bound_s)  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound_s
        while self.active and loop.time() < deadline:
            await asyncio.sleep(DISCONNECT_POLL_S)
        for request_id, pending in list(self.active.items()):
            log.warning("request %s cancelled: unfinished after the %g s shutdown bound",
                        request_id, bound_s)  # fmt: skip
            self._cancel(pending, "shutdown")
        deadline = loop.time() + CANCEL_GRACE_S
        while self.active and loop.time() < deadline:
            await asyncio.sleep(DISCONNECT_POLL_S)

    async def _stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.batcher.executor.shutdown(wait=True)
        self.engine.close()
        if self.batcher.metered is not None:
            self.batcher.metered.meter.close()

    def _cancel(self, pending: _Pending, reason: str) -> None:
        if not pending.cancelled.is_set():
            self.metrics.cancelled.labels(reason).inc()
        self.batcher.cancel(pending, reason)

    @web.middleware
    async def _errors_and_auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.path if request.match_info.route.resource is not None else "other"
        try:
            if self.options.api_key is not None and request.path not in OPEN_ROUTES:
                self._check_key(request)
            response = await handler(request)
        except ApiError as error:
            response = error.response()
        except web.HTTPException as error:
            # aiohttp's own refusals (no such route, wrong method, body too large), shaped
            # as OpenAI errors too.
            code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
            message = error.reason if error.status != 413 else (
                f"the request body is larger than {self.options.max_body_bytes} bytes"
            )  # fmt: skip
            response = error_response(error.status, message, code=code.get(error.status))
        self.metrics.requests.labels(route, str(response.status)).inc()
        return response

    def _check_key(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        key = cast(str, self.options.api_key).encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")  # fmt: skip

    # -- routes ----------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        status = "shutting_down" if self.draining else "ok"
        return web.json_response(
            {"status": status, "model": self.options.served_model_name},
            status=503 if self.draining else 200,
        )

    async def metrics_route(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def models(self, request: web.Request) -> web.Response:
        model: dict[str, Any] = {
            "id": self.options.served_model_name,
            "object": "model",
            "created": 0,
            "owned_by": "greenmon",
        }
        if self.options.max_model_len is not None:
            model["max_model_len"] = self.options.max_model_len
        return web.json_response({"object": "list", "data": [model]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _read_body(self, request: web.Request) -> Any:
        if self.draining:
            raise ApiError(503, "the server is shutting down", code="shutting_down")
        limit = self.options.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes",
                           code="request_too_large")  # fmt: skip
        raw = await request.read()
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadRequest(f"the request body is not valid JSON: {error}") from None

    def count_tokens(self, text: str) -> int:
        """Prompt tokens as the engine will count them (no special tokens added); without
        a tokenizer (a custom engine that brings none), whitespace-separated words."""
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None:
            return len(text.split())
        return len(encode(text, add_special_tokens=False))

    async def _serve(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        received_s = time.perf_counter()
        req = parse_request(await self._read_body(request), chat=chat)
        if req.model != self.options.served_model_name:
            raise ApiError(404, f"The model `{req.model}` does not exist.", param="model",
                           code="model_not_found")  # fmt: skip
        check_context(req, self.count_tokens(req.text), self.options.max_model_len)
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        future: asyncio.Future[RequestRecord] = asyncio.get_running_loop().create_future()
        pending = _Pending(request_id, Prompt(request_id, req.text), req.max_tokens, future,
                           tokens=asyncio.Queue() if req.stream else None)  # fmt: skip
        if not self.batcher.offer(pending):
            raise ApiError(
                429,
                f"the server's queue is full ({self.options.max_queue} requests waiting); "
                "retry after the time in Retry-After",
                code="queue_full",
                headers={"Retry-After": str(self._retry_after_s())},
            )
        self.active[request_id] = pending
        record: RequestRecord | None
        try:
            if req.stream:
                response, record = await self._stream(request, req, request_id, pending,
                                                      received_s)  # fmt: skip
            else:
                record = await self._wait(request, pending)
                response = await self._answer(req, request_id, record, received_s)
        except RequestCancelled as cancelled:
            if cancelled.reason == "shutdown":
                raise ApiError(503, "the server shut down before this request finished",
                               code="shutting_down") from None  # fmt: skip
            # The client is gone: nobody reads this; 499 as proxies log a hang-up.
            return web.Response(status=499)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the connection is lost.
            self._cancel(pending, "disconnect")
            raise
        finally:
            self.active.pop(request_id, None)
            if self.draining and not pending.cancelled.is_set():
                log.warning("request %s finished during shutdown", request_id)
        if record is not None:
            self.metrics.latency.observe(time.perf_counter() - received_s)
            self.metrics.prompt_tokens.inc(record.tokens_in)
            self.metrics.completion_tokens.inc(record.tokens_out)
        return response

    async def _wait(self, request: web.Request, pending: _Pending) -> RequestRecord:
        """The request's record, or RequestCancelled when its client hangs up first."""
        while True:
            done, _ = await asyncio.wait({pending.future}, timeout=DISCONNECT_POLL_S)
            if done:
                return pending.future.result()
            self._check_connected(request, pending)

    def _check_connected(self, request: web.Request, pending: _Pending) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            self._cancel(pending, "disconnect")

    async def _next_token(self, request: web.Request, pending: _Pending) -> int | None:
        """The request's next generated token as soon as the engine has it; None once its
        generation has ended (or failed, or was cancelled) with no token left to send."""
        tokens = cast("asyncio.Queue[int]", pending.tokens)
        while True:
            if not tokens.empty():
                return tokens.get_nowait()
            if pending.future.done():
                return None
            getter = asyncio.ensure_future(tokens.get())
            waited: set[asyncio.Future[Any]] = {getter, pending.future}
            try:
                done, _ = await asyncio.wait(waited, timeout=DISCONNECT_POLL_S,
                                             return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            finally:
                # A get cancelled before it took a token leaves that token in the queue
                # for the next round (and none is left pending when the handler is).
                if not getter.done():
                    getter.cancel()
            if getter in done and not getter.cancelled():
                return getter.result()
            self._check_connected(request, pending)

    def _retry_after_s(self) -> int:
        """Seconds until the queue is likely to have room: one batch's mean latency."""
        count = sum(s.value for s in _samples(self.metrics.latency, "_count"))
        total = sum(s.value for s in _samples(self.metrics.latency, "_sum"))
        return max(1, math.ceil(total / count)) if count else 1

    async def _answer(
        self, req: CompletionRequest, request_id: str, record: RequestRecord, received_s: float
    ) -> web.StreamResponse:
        usage = self.usage(record)
        common = {"id": request_id, "created": int(time.time()), "model": req.model}
        self.metrics.ttft.observe(time.perf_counter() - received_s)
        return web.json_response(
            {**common, **_whole(record, chat=req.chat, with_ids=req.with_ids), "usage": usage}
        )

    async def _stream(
        self,
        request: web.Request,
        req: CompletionRequest,
        request_id: str,
        pending: _Pending,
        received_s: float,
    ) -> tuple[web.StreamResponse, RequestRecord | None]:
        """The streamed answer and its record: each token's chunk as soon as the engine
        has it (every one but the last), the rest once its record is done.  Refusals and
        cancellations before the first chunk raise as for a whole answer; after it, the
        stream ends with an error event (shutdown, engine failure) or quietly (hang-up),
        and the record is None."""
        common = {"id": request_id, "created": int(time.time()), "model": req.model}
        kind = "chat.completion.chunk" if req.chat else "text_completion"
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        decoder = None if self.tokenizer is None else PieceDecoder(self.tokenizer)
        sent = 0

        async def send(piece: str, ids: list[int], last: bool, usage: Mapping[str, Any]) -> None:
            nonlocal sent
            if not response.prepared:
                await response.prepare(request)
            choice = _chunk_choice(piece, ids, chat=req.chat, first=sent == 0,
                                   with_ids=req.with_ids)  # fmt: skip
            choice["finish_reason"] = "length" if last else None
            chunk = {**common, "object": kind, "choices": [choice]}
            if last and "energy_j" in usage:
                chunk["usage"] = usage  # the final chunk carries the request's energy
            await _send(response, chunk)
            sent += 1
            if sent == 1:
                self.metrics.ttft.observe(time.perf_counter() - received_s)

        try:
            # The last token's chunk waits for the record: it says finish_reason and,
            # with energy, the usage the whole batch's end decides.
            while decoder is not None and sent < req.max_tokens - 1:
                token = await self._next_token(request, pending)
                if token is None:
                    break
                await send(decoder.add(token), [token], False, {})
            try:
                record = await self._wait(request, pending)
            except Exception as error:
                if not response.prepared:
                    raise
                await self._end_with_error(response, error)
                return response, None
            usage = self.usage(record)
            ids = list(record.output_ids)
            rest: list[tuple[str, list[int]]]
            if decoder is None:
                rest = token_pieces(None, record)
            else:
                rest = [(decoder.add(t), [t]) for t in ids[sent:]] or [("", [])]
            for index, (piece, piece_ids) in enumerate(rest):
                await send(piece, piece_ids, index == len(rest) - 1, usage)
            if req.include_usage:
                await _send(response, {**common, "object": kind, "choices": [], "usage": usage})
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            # The client hung up mid-stream: the engine stops its row at the next token.
            self._cancel(pending, "disconnect")
            return response, None
        return response, record

    async def _end_with_error(self, response: web.StreamResponse, error: Exception) -> None:
        """A stream already under way cannot change its status: an OpenAI-shaped error
        event ends it (the official client raises it), without ``[DONE]``."""
        if isinstance(error, RequestCancelled):
            if error.reason == "disconnect":
                return
            status, message, code = 503, "the server shut down before this request finished", (
                "shutting_down")  # fmt: skip
        else:
            log.error("generation failed mid-stream: %s", error)
            status, message, code = 500, f"generation failed: {error}", "server_error"
        body = {"error": {"message": message, "type": ERROR_TYPES[status], "param": None,
                          "code": code}}  # fmt: skip
        with contextlib.suppress(ConnectionError):
            await _send(response, body)
            await response.write_eof()

    def usage(self, record: RequestRecord) -> dict[str, Any]:
        """The answer's ``usage``: the one place it is built, streamed or not."""
        usage: dict[str, Any] = {
            "prompt_tokens": record.tokens_in,
            "completion_tokens": record.tokens_out,
            "total_tokens": record.tokens_in + record.tokens_out,
        }
        if self.batcher.metered is not None:
            # This request's share of the server's attributed energy (not measured).
            usage.update(self.batcher.metered.take(record.prompt_id))
        return usage


def _samples(metric: Histogram, suffix: str) -> list[Any]:
    return [s for m in metric.collect() for s in m.samples if s.name.endswith(suffix)]


class PieceDecoder:
    """Incremental detokenisation: the text each token adds to those before it (so the
    pieces join to the whole text), one token at a time as a stream gets them."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.previous = ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        current = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        # A token that ends inside a multi-byte character adds nothing until it completes.
        if not current.startswith(self.previous):
            return ""
        piece = current[len(self.previous) :]
        self.previous = current
        return str(piece)


def token_pieces(tokenizer: Any, record: RequestRecord) -> list[tuple[str, list[int]]]:
    """The text each generated token adds, decoded incrementally (so the pieces join to
    the whole text); one piece with all ids when no tokenizer is at hand."""
    ids = list(record.output_ids)
    if tokenizer is None or not ids:
        return [(record.text, ids)]
    decoder = PieceDecoder(tokenizer)
    return [(decoder.add(t), [t]) for t in ids]


def _chunk_choice(
    piece: str, ids: Sequence[int], *, chat: bool, first: bool, with_ids: bool
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0}
    if chat:
        delta: dict[str, Any] = {"content": piece}
        if first:
            delta["role"] = "assistant"
        choice["delta"] = delta
    else:
        choice["text"] = piece
        choice["logprobs"] = None
    if with_ids:
        choice["token_ids"] = list(ids)
    return choice


def _whole(record: RequestRecord, *, chat: bool, with_ids: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
    if chat:
        choice["message"] = {"role": "assistant", "content": record.text}
    else:
        choice["text"] = record.text
        choice["logprobs"] = None
    if with_ids:
        choice["token_ids"] = list(record.output_ids)
    return {"object": "chat.completion" if chat else "text_completion", "choices": [choice]}


async def _send(response: web.StreamResponse, payload: Mapping[str, Any]) -> None:
    await response.write(f"data: {json.dumps(payload)}\n\n".encode())


# -- loading and running ---------------------------------------------------------------------
@dataclass
class ServedEngine:
    """A loaded engine, its tokenizer (None when it has none at hand) and its context in
    tokens (None when unknown)."""

    engine: Engine
    tokenizer: Any
    max_model_len: int | None


def context_tokens(config: Mapping[str, Any]) -> int | None:
    """The model's context in tokens, from its transformers config."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def load_served_engine(
    model: str,
    engine_name: str,
    provider: str,
    options: Mapping[str, Any],
    *,
    cache_dir: str | None = None,
) -> ServedEngine:
    """The loaded engine, its tokenizer and its context."""
    from greenmon.engines import SERVED_ENGINES, get_engine
    from greenmon.models import resolve_model

    if engine_name in SERVED_ENGINES:
        raise ServeError(
            f"greenmon serve runs an in-process engine (torch, onnx, openvino, torchscript), "
            f"not {engine_name!r}"
        )
    info = resolve_model(model, cache_dir=cache_dir)
    engine: Engine
    if ":" in engine_name:
        # A user's own engine (or a test's fake), as a plan's custom_engines names one.
        import importlib

        module_name, _, class_name = engine_name.partition(":")
        try:
            engine = getattr(importlib.import_module(module_name), class_name)()
        except (ImportError, AttributeError) as error:
            raise ServeError(
                f"engine {engine_name!r} cannot be loaded: {error}. Give a built-in engine "
                "or 'package.module:Class' importable here."
            ) from None
    else:
        engine = get_engine(engine_name, cache_dir=cache_dir)
    engine.load(info, provider, options)
    if ":" in engine_name:
        # A custom engine brings its tokenizer and context (or none: its streams then send
        # each answer's text in one piece, and its prompts are counted in words).
        return ServedEngine(
            engine, getattr(engine, "tokenizer", None), getattr(engine, "max_model_len", None)
        )
    try:
        from greenmon.engines._common import load_tokenizer

        tokenizer = load_tokenizer(info)
    except Exception:
        tokenizer = None
    try:
        config = json.loads((info.path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    return ServedEngine(engine, tokenizer, context_tokens(config))


def serve(
    engine: Engine,
    tokenizer: Any,
    options: ServeOptions,
    *,
    host: str,
    port: int,
    metered: MeteredBatches | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; the engine is closed on the way out."""
    server = OpenAIServer(engine, tokenizer, options, metered)
    try:
        web.run_app(
            server.app(),
            host=host,
            port=port,
            print=None,
            access_log=None,
            # Our own drain (on_shutdown) bounds the wait; aiohttp's then only closes.
            shutdown_timeout=CANCEL_GRACE_S,
            # A lost connection cancels its handler at once (the poll in _wait is the
            # backstop for a half-closed one).
            handler_cancellation=True,
        )
    except OSError as error:
        engine.close()
        raise ServeError(
            f"cannot listen on {host}:{port}: {error.strerror or error}. Choose another "
            "--port, or stop what holds it."
        ) from None
