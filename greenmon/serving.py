"""``greenmon serve``: an OpenAI-compatible server (aiohttp) around greenmon's own engines.

It is the study's serving setup: one runtime engine behind an HTTP server, prompts sent as
requests, so a plan can measure ``torch/cpu`` in-process beside ``http/greenmon-serve``
(the same engine behind this server) and see what the serving layer itself costs.

Terms:
- *routes*: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions`` and
  ``POST /v1/chat/completions``, streaming (server-sent events) or not, with ``usage``.
- *exact tokens*: the engines generate exactly ``max_tokens`` new tokens greedily
  (engines/base.py); ``min_tokens`` and ``ignore_eos`` are accepted (they hold already),
  ``temperature`` and ``top_p`` are accepted and ignored: decoding is always greedy.
- *batch*: requests waiting together (same ``max_tokens``), up to ``max_batch_size``,
  collected for at most ``batch_wait_ms`` after the first, go to one ``generate`` call,
  so N concurrent requests become one batch of N as an in-process engine at
  ``batch_size = N`` would run them.
- *streaming*: engines generate a whole request at once, so its stream is sent after
  generation: one chunk per generated token (the text the token adds, decoded
  incrementally), then ``usage``.  The time to first token a client sees is therefore
  the time to the whole answer.  ``return_token_ids: true`` (vLLM's name) adds each
  chunk's token ids, so a client can count and compare tokens exactly.
- *chat*: the messages' contents joined by newlines are the prompt (no chat template), so
  chat and completions do the same work for the same text.

torch and the engines' libraries are imported by the engine chosen, never here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from greenmon.engines.base import Engine, Prompt, RequestRecord
from greenmon.errors import GreenmonError
from greenmon.serve_energy import MeteredBatches, metrics_lines

DEFAULT_MAX_TOKENS = 16


class ServeError(GreenmonError):
    title = "Cannot serve"


class BadRequest(Exception):
    """A request the server refuses with 400 and an OpenAI-shaped error."""


@dataclass
class _Pending:
    prompt: Prompt
    max_tokens: int
    future: asyncio.Future[RequestRecord]


@dataclass
class ServeOptions:
    served_model_name: str
    max_batch_size: int = 1
    batch_wait_ms: float = 5.0


@dataclass
class _Batcher:
    """One engine, one thread: requests queue here and run in batches of equal length."""

    engine: Engine
    options: ServeOptions
    queue: asyncio.Queue[_Pending] = field(default_factory=asyncio.Queue)
    executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="greenmon-serve-engine"
        )
    )
    held: list[_Pending] = field(default_factory=list)
    # Per-request energy (greenmon/serve_energy.py): None leaves usage without energy_j.
    metered: MeteredBatches | None = None

    async def submit(self, prompt: Prompt, max_tokens: int) -> RequestRecord:
        future: asyncio.Future[RequestRecord] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(prompt, max_tokens, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            max_tokens = batch[0].max_tokens
            try:
                prompts = [p.prompt for p in batch]
                generate = (
                    functools.partial(self.engine.generate, prompts, max_tokens)
                    if self.metered is None
                    # the batch's energy is charged to its requests as it ends
                    else functools.partial(self.metered.generate, self.engine, prompts, max_tokens)
                )
                records = await loop.run_in_executor(self.executor, generate)
            except Exception as error:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, record in zip(batch, records, strict=True):
                if not pending.future.done():
                    pending.future.set_result(record)

    async def _next_batch(self) -> list[_Pending]:
        first = self.held.pop(0) if self.held else await self.queue.get()
        batch = [first]
        deadline = time.monotonic() + self.options.batch_wait_ms / 1e3
        # Requests of another length wait for the next batch, in arrival order.
        for pending in list(self.held):
            if len(batch) < self.options.max_batch_size and pending.max_tokens == first.max_tokens:
                self.held.remove(pending)
                batch.append(pending)
        while len(batch) < self.options.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                pending = (
                    self.queue.get_nowait()
                    if remaining <= 0
                    else await asyncio.wait_for(self.queue.get(), remaining)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if pending.max_tokens == first.max_tokens:
                batch.append(pending)
            else:
                self.held.append(pending)
        return batch


class OpenAIServer:
    """The routes, around a loaded engine and (optionally) its tokenizer for streaming."""

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
        self.batcher = _Batcher(engine, options, metered=metered)
        self._ids = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        if self.batcher.metered is not None:
            app.router.add_get("/metrics", self.energy_metrics)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self._task = asyncio.create_task(self.batcher.run())

    async def _stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.batcher.executor.shutdown(wait=True)
        self.engine.close()
        if self.batcher.metered is not None:
            self.batcher.metered.meter.close()

    # -- routes ----------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.options.served_model_name})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.options.served_model_name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "greenmon",
                    }
                ],
            }
        )

    async def energy_metrics(self, request: web.Request) -> web.Response:
        """The requests' summed attributed energy and the server's (Prometheus text)."""
        assert self.batcher.metered is not None
        text = "\n".join(metrics_lines(self.batcher.metered.meter)) + "\n"
        return web.Response(text=text, content_type="text/plain")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
            prompt_text, max_tokens = parse_request(body, chat=chat)
        except (BadRequest, ValueError) as error:
            return _error(400, str(error))
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        prompt = Prompt(f"{request_id}", prompt_text)
        try:
            record = await self.batcher.submit(prompt, max_tokens)
        except GreenmonError as error:
            return _error(400, error.message)
        with_ids = bool(body.get("return_token_ids"))
        usage: dict[str, float] = {
            "prompt_tokens": record.tokens_in,
            "completion_tokens": record.tokens_out,
            "total_tokens": record.tokens_in + record.tokens_out,
        }
        if self.batcher.metered is not None:
            # This request's share of the server's attributed energy (not measured).
            usage.update(self.batcher.metered.take(record.prompt_id))
        common = {"id": request_id, "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return web.json_response(
                {**common, **_whole(record, chat=chat, with_ids=with_ids), "usage": usage}
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"
        pieces = token_pieces(self.tokenizer, record)
        for index, (piece, ids) in enumerate(pieces):
            last = index == len(pieces) - 1
            choice = _chunk_choice(piece, ids, chat=chat, first=index == 0, with_ids=with_ids)
            choice["finish_reason"] = "length" if last else None
            chunk = {**common, "object": kind, "choices": [choice]}
            if last and "energy_j" in usage:
                chunk["usage"] = usage  # the final chunk carries the request's energy
            await _send(response, chunk)
        if (body.get("stream_options") or {}).get("include_usage"):
            await _send(response, {**common, "object": kind, "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def parse_request(body: Any, *, chat: bool) -> tuple[str, int]:
    """The prompt text and the exact number of new tokens, or BadRequest saying why."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise BadRequest("'model' is required (a string; see GET /v1/models)")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list of {role, content}")
        parts = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, str):
                raise BadRequest("every message needs 'content' as a string")
            parts.append(content)
        text = "\n".join(parts)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be one string (batches of prompts are not served)")
        text = prompt
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", DEFAULT_MAX_TOKENS))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("'max_tokens' must be a positive integer")
    min_tokens = body.get("min_tokens")
    if min_tokens is not None and (not isinstance(min_tokens, int) or min_tokens > max_tokens):
        raise BadRequest("'min_tokens' must be an integer no larger than 'max_tokens'")
    if body.get("n", 1) != 1:
        raise BadRequest("'n' must be 1: greenmon serve decodes one greedy answer")
    return text, max_tokens


def token_pieces(tokenizer: Any, record: RequestRecord) -> list[tuple[str, list[int]]]:
    """The text each generated token adds, decoded incrementally (so the pieces join to
    the whole text); one piece with all ids when no tokenizer is at hand."""
    ids = list(record.output_ids)
    if tokenizer is None or not ids:
        return [(record.text, ids)]
    pieces: list[tuple[str, list[int]]] = []
    previous = ""
    for end in range(1, len(ids) + 1):
        current = tokenizer.decode(ids[:end], skip_special_tokens=True)
        # A token that ends inside a multi-byte character adds nothing until it completes.
        piece = current[len(previous) :] if current.startswith(previous) else ""
        if current.startswith(previous):
            previous = current
        pieces.append((piece, [ids[end - 1]]))
    return pieces


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


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error", "code": status}},
        status=status,
    )


def load_served_engine(
    model: str,
    engine_name: str,
    provider: str,
    options: Mapping[str, Any],
    *,
    cache_dir: str | None = None,
) -> tuple[Engine, Any]:
    """The loaded engine and the model's tokenizer (None when it has none at hand)."""
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
        # A custom engine brings its tokenizer (or none: its streams then send each
        # answer's text in one piece with all its token ids).
        return engine, getattr(engine, "tokenizer", None)
    try:
        from greenmon.engines._common import load_tokenizer

        tokenizer = load_tokenizer(info)
    except Exception:
        tokenizer = None
    return engine, tokenizer


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
        web.run_app(server.app(), host=host, port=port, print=None, access_log=None)
    except OSError as error:
        engine.close()
        raise ServeError(
            f"cannot listen on {host}:{port}: {error.strerror or error}. Choose another "
            "--port, or stop what holds it."
        ) from None
