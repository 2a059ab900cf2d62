"""What travels between server and client: JSON, and the shape of an error.

An error crosses as ``{"error": message, "title": title, "kind": error class}``: the
server writes it here (``error_response``) and the client turns it back into the same
GreenmonError subclass (``error_from``), so a refused query or a bad plan reads the same on
both sides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from greenmon.api.errors import ApiError, QueryFailed, QueryRefused
from greenmon.errors import GreenmonError, PlanError

T = TypeVar("T")


def _json_default(value: object) -> Any:
    if isinstance(value, msgspec.Struct):  # a typed message (greenmon.api.messages)
        # One level at a time, so the values inside (a query's dates, bytes, decimals)
        # are written by the same rules below as they are outside a message.
        return msgspec.structs.asdict(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def dumps(value: Any, *, indent: int | None = None) -> str:
    """``value`` as the API writes JSON: compact, or indented for a person to read."""
    if indent is not None:
        return json.dumps(value, default=_json_default, indent=indent)
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def error_response(status: int, error: GreenmonError) -> web.Response:
    body = {"error": error.message, "title": error.title, "kind": type(error).__name__}
    return web.json_response(body, status=status, dumps=dumps)


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError:
        raise ApiError("The request body must be JSON.") from None
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.")
    return body


async def request_as(request: web.Request, kind: type[T], usage: str) -> T:
    """The request's JSON body as the message ``kind`` (greenmon.api.messages), or an
    ApiError saying ``usage`` and what did not fit.  Lax about scalars ("10" for 10,
    "true" for true), as the dict reads before the messages were."""
    body = await json_body(request)
    try:
        return msgspec.convert(body, kind, strict=False)
    except msgspec.ValidationError as error:
        raise ApiError(f"{usage} ({error})") from None


def client_json(value: Any) -> str:
    """A client's request body: a message (greenmon.api.messages) or plain JSON values."""
    return msgspec.json.encode(value).decode()


def error_from(payload: Any, status: int) -> GreenmonError:
    if not isinstance(payload, Mapping):
        return ApiError(f"The daemon answered HTTP {status} without a message.")
    message = str(payload.get("error", f"HTTP {status}"))
    kinds: dict[str, type[GreenmonError]] = {
        "PlanError": PlanError,
        "QueryRefused": QueryRefused,
        "QueryFailed": QueryFailed,
    }
    kind = kinds.get(str(payload.get("kind")), ApiError)
    title = payload.get("title")
    return kind(message, title=str(title) if title else None)
