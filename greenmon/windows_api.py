"""The API's window endpoints, registered on ApiServer's app in one line.

``POST /windows`` (a ``WindowRequest``: ``{"name", "tags"?, "kind"?,
"baseline_window_id"?, "baseline_s"?}``) opens a window and answers an ``OpenedWindow``
(``{"window_id", "start_ns", ...}``); ``POST /windows/{id}/close`` closes it and answers its
figures (a ``WindowResult``); ``GET /windows?limit=N`` answers a ``WindowListing``
(``{"open": [...], "recent": [...]}``): the open windows (name, tags, start, elapsed
seconds) and the last N closed ones of this session with their figures, which is what a
viewer needs to list them beside the current unit.  The messages are greenmon/api/messages.py's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from greenmon.api.messages import WindowRequest
from greenmon.windows import WindowError, WindowRegistry, registry_of

if TYPE_CHECKING:
    from greenmon.daemon import Daemon


def _dumps(value: Any) -> str:
    from greenmon.api.wire import dumps

    return dumps(value)


def _error(status: int, message: str) -> web.Response:
    error = WindowError(message)
    body = {"error": error.message, "title": error.title, "kind": type(error).__name__}
    return web.json_response(body, status=status, dumps=_dumps)


class WindowRoutes:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def _registry(self) -> WindowRegistry | None:
        return registry_of(self.daemon)

    async def open(self, request: web.Request) -> web.Response:
        registry = self._registry()
        if registry is None:
            return _error(409, "This daemon keeps no windows (it runs no windows service).")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "POST /windows needs a JSON object body with at least a name.")
        if not isinstance(body, dict):
            return _error(400, "POST /windows needs a JSON object body with at least a name.")
        try:
            # lax about scalars ("8" for 8), as the endpoint was before it was typed
            asked = msgspec.convert(body, WindowRequest, strict=False)
        except msgspec.ValidationError as error:
            return _error(
                400,
                f"POST /windows takes a name, tags (a JSON object: name -> value), kind, "
                f"and baseline_window_id or baseline_s ({error}).",
            )
        window = await registry.open_window(
            asked.name or "",
            asked.tags or {},
            kind=asked.kind or "window",
            baseline_window_id=asked.baseline_window_id,
            baseline_s=asked.baseline_s,
        )
        return web.json_response(window.message(), dumps=_dumps)

    async def close(self, request: web.Request) -> web.Response:
        registry = self._registry()
        if registry is None:
            return _error(409, "This daemon keeps no windows (it runs no windows service).")
        try:
            window_id = int(request.match_info["window_id"])
        except ValueError:
            return _error(400, "The window id in /windows/{id}/close must be an integer.")
        if window_id not in registry.open:
            return _error(
                404,
                f"Window {window_id} is not open in this daemon (closed already, or opened "
                "in another session). GET /windows lists the open ones.",
            )
        result = await registry.close_window(window_id)
        return web.json_response(result, dumps=_dumps)

    async def listing(self, request: web.Request) -> web.Response:
        registry = self._registry()
        if registry is None:
            return _error(409, "This daemon keeps no windows (it runs no windows service).")
        try:
            limit = max(0, min(1000, int(request.query.get("limit", "20"))))
        except ValueError:
            return _error(400, "limit must be an integer")
        return web.json_response(await registry.listing(limit), dumps=_dumps)


def add_window_routes(app: web.Application, daemon: Daemon) -> None:
    routes = WindowRoutes(daemon)
    app.add_routes(
        [
            web.post("/windows", routes.open),
            web.post("/windows/{window_id}/close", routes.close),
            web.get("/windows", routes.listing),
        ]
    )
