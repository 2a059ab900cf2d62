"""The daemon's API server: aiohttp on a Unix socket (and optionally TCP), its handlers,
and ``api_service``, the daemon service that runs it.

*TCP*: optional, on 127.0.0.1 only, for viewing over an SSH tunnel; every request on it
must carry ``Authorization: Bearer <token>``.  *runner*: ``daemon.runner``
(greenmon/runner.py): every daemon greenmon composes has one (greenmon/daemon.py
``build_daemon``); plans queue there and run one at a time.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import msgspec
from aiohttp import web
from anyio.abc import TaskStatus

from greenmon.api.errors import ApiError
from greenmon.api.messages import (
    CancelRequest,
    ControlReply,
    DaemonEvent,
    DaemonStatus,
    EventList,
    ExperimentList,
    ExperimentRow,
    ExperimentSummary,
    PlanRequest,
    SqlRequest,
)
from greenmon.api.snapshot import STREAM_HZ, STREAM_WRITE_TIMEOUT_S, SnapshotHub
from greenmon.api.sockets import bind_unix_socket, prepare_socket_path, resolve_socket_path
from greenmon.api.sql import SQL_ROW_LIMIT, SQL_TIMEOUT_S, check_read_only, run_read_only
from greenmon.api.wire import dumps, error_response, request_as
from greenmon.errors import GreenmonError, PlanError
from greenmon.windows_api import add_window_routes

if TYPE_CHECKING:
    from greenmon.daemon import Daemon
    from greenmon.protocols import RunnerControl
    from greenmon.store import Store


@dataclass
class ApiOptions:
    socket_path: Path | None = None
    tcp_port: int | None = None  # 127.0.0.1 only; requires ``token``
    token: str | None = None
    stream_hz: float = STREAM_HZ
    sql_row_limit: int = SQL_ROW_LIMIT
    sql_timeout_s: float = SQL_TIMEOUT_S


def experiment_rows(store: Store) -> list[ExperimentRow]:
    """Every experiment in the file with its unit counts, newest first (blocking)."""
    columns, rows = store.query(
        """SELECT e.experiment_id, e.name AS plan_name, e.status, e.created_ns, e.finished_ns,
                  count(u.unit_id) AS units_total,
                  count(*) FILTER (u.status = 'done') AS units_done,
                  count(*) FILTER (u.status = 'failed') AS units_failed
           FROM experiments e LEFT JOIN units u USING (experiment_id)
           GROUP BY ALL ORDER BY e.created_ns DESC NULLS LAST"""
    )
    return [ExperimentRow(**dict(zip(columns, row, strict=True))) for row in rows]


class ApiServer:
    def __init__(self, daemon: Daemon, options: ApiOptions) -> None:
        self.daemon = daemon
        self.options = options
        self.socket_path = resolve_socket_path(options.socket_path, daemon.store.path)
        self.hub = SnapshotHub()
        self.app = web.Application(middlewares=[self._auth])
        self.app.add_routes(
            [
                web.get("/status", self.status),
                web.get("/stream", self.stream),
                web.get("/events", self.events),
                web.post("/plans", self.submit),
                web.post("/pause", self.control),
                web.post("/resume", self.control),
                web.post("/cancel", self.control),
                web.get("/experiments", self.experiments),
                web.get("/experiments/{experiment_id}", self.experiment),
                web.post("/sql", self.sql),
            ]
        )
        add_window_routes(self.app, daemon)  # /windows (greenmon/windows_api.py)
        self._runner: web.AppRunner | None = None
        self._started_ns: int | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        if self.options.tcp_port is not None and not self.options.token:
            raise ApiError("TCP access needs a token: pass one with the TCP port.")
        prepare_socket_path(self.socket_path)
        sock = bind_unix_socket(self.socket_path)
        # Short shutdown: open streams end when the hub closes; nothing else is long.
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        if self.options.tcp_port is not None:
            await web.TCPSite(self._runner, "127.0.0.1", self.options.tcp_port).start()
        self.daemon.socket_path = self.socket_path

    async def stop(self) -> None:
        self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def publish_loop(self) -> None:
        period_s = 1.0 / self.options.stream_hz
        while True:
            if self.hub.clients:
                self.hub.publish((dumps(self.daemon.snapshot()) + "\n").encode())
            await anyio.sleep(period_s)

    # -- middleware --------------------------------------------------------------------
    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        peer = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(peer, tuple):  # TCP: a Unix socket's name is a str
            expected = f"Bearer {self.options.token}"
            given = request.headers.get("Authorization", "")
            if not self.options.token or not hmac.compare_digest(given, expected):
                return error_response(401, ApiError("A valid bearer token is required."))
        try:
            response: web.StreamResponse = await handler(request)
        except GreenmonError as error:
            return error_response(400, error)
        return response

    # -- handlers ----------------------------------------------------------------------
    async def status(self, request: web.Request) -> web.Response:
        daemon = self.daemon
        if self._started_ns is None:
            _, rows = await anyio.to_thread.run_sync(
                daemon.store.query,
                "SELECT started_ns FROM sessions WHERE session_id = ?",
                [daemon.session_id],
            )
            self._started_ns = int(rows[0][0]) if rows and rows[0][0] is not None else None
        status = DaemonStatus(
            pid=os.getpid(),
            started_ns=self._started_ns,
            db_path=str(daemon.store.path.resolve()),
            socket_path=str(self.socket_path),
            **msgspec.structs.asdict(daemon.status()),
        )
        return web.json_response(status, dumps=dumps)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        # The first line arrives at once: a viewer need not wait a period to draw.
        await response.write((dumps(self.daemon.snapshot()) + "\n").encode())
        self.hub.clients += 1
        version = self.hub.version
        try:
            while True:
                newest = await self.hub.newer_than(version)
                if newest is None:
                    break
                version, data = newest
                with anyio.fail_after(STREAM_WRITE_TIMEOUT_S):
                    await response.write(data)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self.hub.clients -= 1
        return response

    async def events(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(10_000, int(request.query.get("limit", "100"))))
        except ValueError:
            raise ApiError("limit must be an integer") from None
        store = self.daemon.store
        _, rows = await anyio.to_thread.run_sync(
            store.query,
            "SELECT t_ns, level, probe, message FROM events WHERE session_id = ? "
            "ORDER BY t_ns DESC LIMIT ?",
            [self.daemon.session_id, limit],
        )
        events = [
            DaemonEvent(t_ns=t_ns, level=level, probe=probe, message=message)
            for t_ns, level, probe, message in reversed(rows)
        ]
        return web.json_response(EventList(events=events), dumps=dumps)

    def _experiment_runner(self) -> RunnerControl:
        runner = self.daemon.runner
        if runner is None:
            raise ApiError("This daemon is starting or stopping: it runs no experiment runner.")
        return runner

    async def submit(self, request: web.Request) -> web.Response:
        plan = await request_as(
            request, PlanRequest, "POST /plans needs a JSON body with plan_toml (the plan's text)."
        )
        try:
            submission = await self._experiment_runner().submit(
                plan.plan_toml,
                plan.plan_path,
                force=plan.force,
                resume=plan.resume,
                shard=plan.shard or None,
            )
        except PlanError as error:
            return error_response(400, error)
        return web.json_response(submission, dumps=dumps)

    async def control(self, request: web.Request) -> web.Response:
        runner = self._experiment_runner()
        action = request.path.strip("/")
        if action == "cancel":
            which = (
                await request_as(
                    request, CancelRequest, 'POST /cancel takes {"experiment_id": ...} or no body.'
                )
                if request.can_read_body
                else CancelRequest()
            )
            try:
                runner.cancel(which.experiment_id or None)
            except PlanError as error:
                return error_response(409, error)
        else:
            getattr(runner, action)()
        self.daemon.event("info", f"{action} requested through the API")
        return web.json_response(ControlReply(ok=True, progress=runner.progress()), dumps=dumps)

    async def experiments(self, request: web.Request) -> web.Response:
        rows = await anyio.to_thread.run_sync(experiment_rows, self.daemon.store)
        return web.json_response(ExperimentList(experiments=rows), dumps=dumps)

    async def experiment(self, request: web.Request) -> web.Response:
        experiment_id = request.match_info["experiment_id"]
        runner = self._experiment_runner()
        summary = await anyio.to_thread.run_sync(runner.summary_rows, experiment_id)
        message = ExperimentSummary(experiment_id=experiment_id, results=summary)
        return web.json_response(message, dumps=dumps)

    async def sql(self, request: web.Request) -> web.Response:
        asked = await request_as(
            request, SqlRequest, 'POST /sql needs a JSON body {"sql": "SELECT ..."}.'
        )
        limit = max(1, min(asked.limit or self.options.sql_row_limit, self.options.sql_row_limit))
        check_read_only(asked.sql)  # refuse before taking a thread
        result = await anyio.to_thread.run_sync(
            run_read_only, self.daemon.store, asked.sql, limit, self.options.sql_timeout_s
        )
        return web.json_response(result, dumps=dumps)


Service = Callable[..., Any]


def api_service(options: ApiOptions | None = None) -> Service:
    """A daemon service serving the API: ``Daemon(store, config, services=[api_service()])``.

    Start-up errors (socket path taken, owned by another user) surface from
    ``daemon.run`` because the service reports readiness only once the socket listens.
    """
    chosen = options or ApiOptions()

    async def serve_api(
        daemon: Daemon, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        server = ApiServer(daemon, chosen)
        await server.start()
        try:
            task_status.started()
            await server.publish_loop()
        finally:
            with anyio.CancelScope(shield=True):
                await server.stop()

    return serve_api
