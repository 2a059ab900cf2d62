"""The daemon's local API: an aiohttp server on a Unix socket, and its client.

The TUI, ``greenmon status``, ``greenmon sql`` and ``greenmon run`` talk to a running
daemon only through this API; the daemon alone holds the DuckDB file read-write.

Terms:
- *socket path*: one per database file, derived from the file's resolved path:
  ``$XDG_RUNTIME_DIR/greenmon/<hash>.sock``, else ``/tmp/greenmon-$UID/<hash>.sock``, so
  ``--db`` always reaches the daemon of that file and daemons on different files coexist.
  ``--socket`` or ``$GREENMON_SOCKET`` override it (on both sides).  The socket is mode
  0600 in a 0700 directory: only its owner may talk to the daemon, so it needs no token.
- *TCP*: optional, on 127.0.0.1 only, for viewing over an SSH tunnel; every request on it
  must carry ``Authorization: Bearer <token>``.
- *snapshot*: what ``GET /stream`` sends about 4 times a second, one JSON object per line
  (NDJSON): the latest value of every channel, cheap probe health and runner progress.
  The stream is *lossy*: one task builds and serialises each snapshot once, and every
  client's writer sends only the newest one when its previous write has completed.  A
  stalled client therefore holds at most one snapshot plus its socket buffers, and never
  slows a probe, the writer or another client.
- *runner*: ``daemon.runner`` (greenmon/runner.py): every daemon greenmon composes has
  one (greenmon/daemon.py ``build_daemon``); plans queue there and run one at a time.

Endpoints: ``GET /status``, ``GET /stream``, ``GET /events?limit=N``, ``POST /plans``,
``POST /pause``, ``POST /resume``, ``POST /cancel`` (``{"experiment_id": ...}`` for a
queued plan), ``GET /experiments`` (every experiment in the file),
``GET /experiments/{id}`` (its medians per configuration), ``POST /sql`` (read-only).
Errors come back as ``{"error": message, "title": title, "kind": error class}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import socket
import stat
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import anyio.to_thread
import duckdb
from aiohttp import web
from anyio.abc import TaskStatus

from greenmon.clock import now_ns
from greenmon.errors import GreenmonError, PlanError
from greenmon.store import confine, is_confined
from greenmon.windows_api import add_window_routes

if TYPE_CHECKING:
    from greenmon.daemon import Daemon
    from greenmon.protocols import RunnerControl
    from greenmon.store import Store

STREAM_HZ = 4.0
SQL_ROW_LIMIT = 10_000
SQL_TIMEOUT_S = 60.0
# A client whose single write has not completed in this long is disconnected, which
# frees the buffers it pins; a healthy viewer drains a snapshot in microseconds.
STREAM_WRITE_TIMEOUT_S = 30.0
# Snapshots carry the plan grid, which can reach tens of kilobytes for a large plan.
CLIENT_READ_BUFSIZE = 1 << 22


class ApiError(GreenmonError):
    title = "Daemon API"


class DaemonUnreachable(ApiError):
    title = "Daemon unreachable"


class QueryRefused(ApiError):
    title = "Query refused"


class QueryFailed(ApiError):
    title = "Query failed"


def runtime_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "greenmon"
    return Path(f"/tmp/greenmon-{os.getuid()}")


def socket_path_for(db_path: str | Path) -> Path:
    """The socket of the daemon holding ``db_path``: a hash of its resolved path.

    A hash keeps the path short (a Unix socket path has ~107 bytes) whatever the
    database's path, and the same file reached by two relative paths gets one socket.
    """
    digest = hashlib.sha256(str(Path(db_path).resolve()).encode()).hexdigest()[:16]
    return runtime_dir() / f"{digest}.sock"


def resolve_socket_path(path: str | Path | None = None, db_path: str | Path | None = None) -> Path:
    """An explicit path, else ``$GREENMON_SOCKET``, else the socket of ``db_path``."""
    if path is not None:
        return Path(path)
    env = os.environ.get("GREENMON_SOCKET")
    if env:
        return Path(env)
    if db_path is None:
        raise ApiError("No database given to find its daemon's socket.")
    return socket_path_for(db_path)


@dataclass
class ApiOptions:
    socket_path: Path | None = None
    tcp_port: int | None = None  # 127.0.0.1 only; requires ``token``
    token: str | None = None
    stream_hz: float = STREAM_HZ
    sql_row_limit: int = SQL_ROW_LIMIT
    sql_timeout_s: float = SQL_TIMEOUT_S


# -- read-only SQL -----------------------------------------------------------------------

_ALLOWED_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(ANALYZE\s+)?", re.IGNORECASE)
_STATEMENT_WORDS = {
    duckdb.StatementType.INSERT: "INSERT",
    duckdb.StatementType.UPDATE: "UPDATE",
    duckdb.StatementType.DELETE: "DELETE",
    duckdb.StatementType.CREATE: "CREATE",
    duckdb.StatementType.DROP: "DROP",
    duckdb.StatementType.ALTER: "ALTER",
    duckdb.StatementType.ATTACH: "ATTACH",
    duckdb.StatementType.DETACH: "DETACH",
    duckdb.StatementType.COPY: "COPY",
    duckdb.StatementType.COPY_DATABASE: "COPY DATABASE",
    duckdb.StatementType.EXPORT: "EXPORT",
    duckdb.StatementType.LOAD: "INSTALL/LOAD",
    duckdb.StatementType.SET: "SET/USE",
    duckdb.StatementType.VARIABLE_SET: "SET VARIABLE",
    duckdb.StatementType.PRAGMA: "PRAGMA",
    duckdb.StatementType.CALL: "CALL",
    duckdb.StatementType.TRANSACTION: "transaction control",
    duckdb.StatementType.VACUUM: "VACUUM",
    duckdb.StatementType.MERGE_INTO: "MERGE",
}


def check_read_only(sql: str) -> str:
    """The one statement in ``sql`` if it only reads; else QueryRefused saying why.

    Allowed: SELECT (with WITH, FROM-first, DESCRIBE, SHOW, SUMMARIZE, which DuckDB parses
    as SELECT) and EXPLAIN of such a statement.  PRAGMA and CALL are refused too, because
    some of them change settings; ``SELECT * FROM pragma_table_info('samples')`` reads the
    same information.  Queries also run in a READ ONLY transaction, so a function with a
    side effect (``nextval``) fails there rather than writing.
    """
    try:
        statements = duckdb.connect(":memory:").extract_statements(sql)
    except duckdb.Error as error:
        raise QueryFailed(f"{str(error).splitlines()[0]}") from None
    if len(statements) != 1:
        raise QueryRefused(
            f"Send exactly one statement (got {len(statements)}); run them one at a time."
        )
    statement = statements[0]
    if statement.type == duckdb.StatementType.EXPLAIN:
        inner = _EXPLAIN_PREFIX.sub("", statement.query, count=1)
        check_read_only(inner)
        return statement.query
    if statement.type not in _ALLOWED_STATEMENTS:
        word = _STATEMENT_WORDS.get(statement.type, statement.type.name)
        raise QueryRefused(
            f"{word} statements are refused: the daemon's SQL is read-only (SELECT, "
            "EXPLAIN, DESCRIBE, SHOW, SUMMARIZE). Anything that writes, attaches, copies, "
            "installs or loads runs only on a file no daemon holds."
        )
    return statement.query


FILE_ACCESS_REFUSED = (
    "Reading, listing or writing files is refused: SQL here reaches only the database's "
    "own tables and views (DuckDB's external access is off and its settings are locked), "
    "so read_text, read_csv, read_parquet, glob, COPY, ATTACH, INSTALL/LOAD and SET cannot "
    "touch a file outside it. {how}"
)
DAEMON_FILE_HOW = (
    "To work with files, stop the daemon and run `greenmon export` or `greenmon sql "
    "--allow-file-access` on the database file."
)


def refused_by_confinement(error: duckdb.Error, how: str) -> QueryRefused | None:
    """QueryRefused for an error raised by a confined database (greenmon.store.confine);
    None for any other error."""
    first_line = str(error).splitlines()[0]
    if isinstance(error, duckdb.PermissionException) or "configuration has been locked" in (
        first_line
    ):
        return QueryRefused(f"{FILE_ACCESS_REFUSED.format(how=how)} (DuckDB: {first_line})")
    return None


@dataclass
class SqlResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False


def run_read_only(
    con: duckdb.DuckDBPyConnection,
    lock: threading.RLock,
    sql: str,
    row_limit: int,
    timeout_s: float,
) -> SqlResult:
    """Run a checked statement on a new cursor in a READ ONLY transaction (blocking)."""
    query = check_read_only(sql)
    with lock:
        cursor = con.cursor()
    # Whoever composed the daemon, its API's SQL never reaches a file.  The settings are
    # the database's, so the cursor answers for them without holding the store's lock.
    if not is_confined(cursor):
        with lock:
            confine(con)
    timer = threading.Timer(timeout_s, cursor.interrupt)
    timer.daemon = True
    timer.start()
    try:
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        try:
            result = cursor.execute(query)
            columns = [d[0] for d in result.description or []]
            rows = result.fetchmany(row_limit + 1)
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
    except duckdb.InterruptException:
        raise QueryFailed(
            f"The query ran longer than {timeout_s:g} s and was interrupted; narrow it "
            "(a WHERE on session_id or t_ns) or use LIMIT."
        ) from None
    except duckdb.Error as error:
        refused = refused_by_confinement(error, DAEMON_FILE_HOW)
        if refused is not None:
            raise refused from None
        raise QueryFailed(
            f"{str(error).splitlines()[0]}. Queries may read any table or view (samples, "
            "channels, sessions, events, experiments, units, phases, requests, "
            "phase_channel_energy, ...)."
        ) from None
    finally:
        timer.cancel()
        cursor.close()
    truncated = len(rows) > row_limit
    return SqlResult(columns, [list(r) for r in rows[:row_limit]], truncated)


# -- the server ----------------------------------------------------------------------------


def _json_default(value: object) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _error_response(status: int, error: GreenmonError) -> web.Response:
    body = {"error": error.message, "title": error.title, "kind": type(error).__name__}
    return web.json_response(body, status=status, dumps=dumps)


def prepare_socket_path(path: Path) -> None:
    """Make the socket's directory (0700) and clear a stale socket of ours.

    Refuses, with a reason, a path owned by another user or one where a daemon listens.
    """
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise ApiError(
            f"{directory} belongs to another user (uid {info.st_uid}); greenmon will not put "
            "its socket there. Set XDG_RUNTIME_DIR or pass another socket path."
        )
    # Only tighten a directory greenmon owns by name; never a shared one like $HOME.
    if stat.S_IMODE(info.st_mode) & 0o077 and directory.name in (
        "greenmon",
        f"greenmon-{os.getuid()}",
    ):
        directory.chmod(0o700)
    try:
        existing = path.lstat()
    except FileNotFoundError:
        return
    if existing.st_uid != os.getuid():
        raise ApiError(
            f"{path} exists and belongs to another user (uid {existing.st_uid}); greenmon "
            "will not remove or reuse it. Pass another socket path."
        )
    if not stat.S_ISSOCK(existing.st_mode):
        raise ApiError(f"{path} exists and is not a socket; remove it or pass another path.")
    if socket_is_live(path):
        raise ApiError(
            f"Another greenmon daemon already serves {path} (GREENMON_SOCKET or --socket "
            "names the same path for two databases). Give each daemon its own socket, or "
            "leave both unset: each database file then gets its own."
        )
    path.unlink()


def socket_is_live(path: Path, timeout_s: float = 1.0) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout_s)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def bind_unix_socket(path: Path) -> socket.socket:
    """Bind with umask 0177 so the socket is 0600 from its first instant, not after chmod."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def runner_of(daemon: Daemon) -> RunnerControl | None:
    return daemon.runner


def experiment_rows(store: Store) -> list[dict[str, Any]]:
    """Every experiment in the file with its unit counts, newest first (blocking)."""
    columns, rows = store.query(
        """SELECT e.experiment_id, e.name AS plan_name, e.status, e.created_ns, e.finished_ns,
                  count(u.unit_id) AS units_total,
                  count(*) FILTER (u.status = 'done') AS units_done,
                  count(*) FILTER (u.status = 'failed') AS units_failed
           FROM experiments e LEFT JOIN units u USING (experiment_id)
           GROUP BY ALL ORDER BY e.created_ns DESC NULLS LAST"""
    )
    return [dict(zip(columns, row, strict=True)) for row in rows]


def probe_summary(daemon: Daemon) -> list[dict[str, Any]]:
    """Health without jitter percentiles: cheap enough for every stream snapshot."""
    rows: list[dict[str, Any]] = []
    for sampler in daemon.samplers:
        health = sampler.health
        rows.append(
            {
                "probe": health.probe,
                "state": health.state,
                "reason": health.reason,
                "target_hz": health.target_hz,
                "achieved_hz": round(health.achieved_hz, 3),
                "errors": health.errors,
                "missed_ticks": health.missed_ticks,
                "last_error": health.last_error,
            }
        )
    rows += [
        {"probe": name, "state": "unavailable", "reason": reason, "target_hz": 0.0,
         "achieved_hz": 0.0, "errors": 0, "missed_ticks": 0, "last_error": None}
        for name, reason in daemon.unavailable.items()
    ]  # fmt: skip
    return rows


def channel_table(daemon: Daemon) -> list[dict[str, Any]]:
    return [
        {
            "channel_id": channel_id,
            "probe": probe,
            "name": channel.name,
            "unit": channel.unit,
            "kind": channel.kind,
            "domain": channel.domain,
            "estimated": channel.estimated,
            "energy_source": channel_id in daemon.energy_source_ids,
            "metadata": dict(channel.metadata),
        }
        for channel_id, (probe, channel) in sorted(daemon.channels.items())
    ]


def channel_values(daemon: Daemon) -> list[list[Any]]:
    """``[channel_id, t_ns, value]`` for the latest reading of every channel."""
    values: list[list[Any]] = []
    for sampler in daemon.samplers:
        health = sampler.health
        # The sampler thread replaces last_values with a new dict: read it once.
        last, t_ns = health.last_values, health.last_t_ns
        if t_ns is None:
            continue
        for channel_id, channel in zip(sampler.channel_ids, sampler.channels, strict=True):
            value = last.get(channel.name)
            if value is not None:
                values.append([channel_id, t_ns, value])
    return values


def runner_progress(daemon: Daemon) -> dict[str, Any] | None:
    runner = runner_of(daemon)
    if runner is None:
        return None
    return runner.progress()


def snapshot(daemon: Daemon) -> dict[str, Any]:
    return {
        "t_ns": now_ns(),
        "session_id": daemon.session_id,
        "values": channel_values(daemon),
        "probes": probe_summary(daemon),
        "progress": runner_progress(daemon),
    }


class SnapshotHub:
    """The newest serialised snapshot, and a way to wait for a newer one."""

    def __init__(self) -> None:
        self.version = 0
        self.data = b""
        self.clients = 0
        self.closed = False
        self._changed = anyio.Event()

    def publish(self, data: bytes) -> None:
        self.version += 1
        self.data = data
        self._changed.set()
        self._changed = anyio.Event()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def newer_than(self, version: int) -> tuple[int, bytes] | None:
        while self.version <= version and not self.closed:
            await self._changed.wait()
        return None if self.closed else (self.version, self.data)


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
        add_window_routes(self.app, daemon)  # issue 15: /windows (greenmon/windows_api.py)
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
                self.hub.publish((dumps(snapshot(self.daemon)) + "\n").encode())
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
                return _error_response(401, ApiError("A valid bearer token is required."))
        try:
            response: web.StreamResponse = await handler(request)
        except GreenmonError as error:
            return _error_response(400, error)
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
        body = {
            "pid": os.getpid(),
            "session_id": daemon.session_id,
            "started_ns": self._started_ns,
            "db_path": str(daemon.store.path.resolve()),
            "socket_path": str(self.socket_path),
            "probes": daemon.health(),
            "writer": daemon.store.flush_stats.as_dict(),
            "channels": channel_table(daemon),
            "runner": runner_of(daemon) is not None,
            "progress": runner_progress(daemon),
        }
        return web.json_response(body, dumps=dumps)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        # The first line arrives at once: a viewer need not wait a period to draw.
        await response.write((dumps(snapshot(self.daemon)) + "\n").encode())
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
            {"t_ns": t_ns, "level": level, "probe": probe, "message": message}
            for t_ns, level, probe, message in reversed(rows)
        ]
        return web.json_response({"events": events}, dumps=dumps)

    def _experiment_runner(self) -> RunnerControl:
        runner = runner_of(self.daemon)
        if runner is None:
            raise ApiError("This daemon is starting or stopping: it runs no experiment runner.")
        return runner

    async def submit(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        plan_toml = body.get("plan_toml")
        if not isinstance(plan_toml, str):
            raise ApiError("POST /plans needs a JSON body with plan_toml (the plan's text).")
        try:
            submission = await self._experiment_runner().submit(
                plan_toml,
                body.get("plan_path"),
                force=bool(body.get("force", False)),
                resume=bool(body.get("resume", False)),
                shard=str(body["shard"]) if body.get("shard") else None,
            )
        except PlanError as error:
            return _error_response(400, error)
        return web.json_response(submission, dumps=dumps)

    async def control(self, request: web.Request) -> web.Response:
        runner = self._experiment_runner()
        action = request.path.strip("/")
        if action == "cancel":
            body = await _json_body(request) if request.can_read_body else {}
            experiment_id = body.get("experiment_id")
            try:
                runner.cancel(str(experiment_id) if experiment_id else None)
            except PlanError as error:
                return _error_response(409, error)
        else:
            getattr(runner, action)()
        self.daemon.event("info", f"{action} requested through the API")
        return web.json_response({"ok": True, "progress": runner.progress()}, dumps=dumps)

    async def experiments(self, request: web.Request) -> web.Response:
        rows = await anyio.to_thread.run_sync(experiment_rows, self.daemon.store)
        return web.json_response({"experiments": rows}, dumps=dumps)

    async def experiment(self, request: web.Request) -> web.Response:
        experiment_id = request.match_info["experiment_id"]
        runner = self._experiment_runner()
        summary = await anyio.to_thread.run_sync(runner.summary_rows, experiment_id)
        return web.json_response({"experiment_id": experiment_id, "results": summary}, dumps=dumps)

    async def sql(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        query = body.get("sql")
        if not isinstance(query, str):
            raise ApiError('POST /sql needs a JSON body {"sql": "SELECT ..."}.')
        limit = int(body.get("limit") or self.options.sql_row_limit)
        limit = max(1, min(limit, self.options.sql_row_limit))
        check_read_only(query)  # refuse before taking a thread
        store = self.daemon.store
        result = await anyio.to_thread.run_sync(
            run_read_only, store.con, store.lock, query, limit, self.options.sql_timeout_s
        )
        return web.json_response(
            {"columns": result.columns, "rows": result.rows, "truncated": result.truncated},
            dumps=dumps,
        )


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError:
        raise ApiError("The request body must be JSON.") from None
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.")
    return body


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


# -- the client ----------------------------------------------------------------------------


class ApiClient:
    """Talks to a daemon's API over its Unix socket (or TCP with a token).

    Use as ``async with ApiClient(path) as client:``; every method raises
    DaemonUnreachable when no daemon answers, and the server's own errors as ApiError
    (PlanError for a bad plan, QueryRefused / QueryFailed for SQL).
    """

    def __init__(
        self,
        socket_path: str | Path | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.socket_path = resolve_socket_path(socket_path) if url is None else None
        self.base_url = url.rstrip("/") if url else "http://greenmon"
        self.token = token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector | None = (
                aiohttp.UnixConnector(path=str(self.socket_path)) if self.socket_path else None
            )
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                connector=connector, headers=headers, read_bufsize=CLIENT_READ_BUFSIZE
            )
        return self._session

    def _where(self) -> str:
        return str(self.socket_path) if self.socket_path else self.base_url

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        session = self._get_session()
        try:
            async with session.request(
                method,
                self.base_url + path,
                json=body,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                payload = await response.json(content_type=None)
                if response.status >= 400:
                    raise _error_from(payload, response.status)
                return payload
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as error:
            raise DaemonUnreachable(
                f"No greenmon daemon answers at {self._where()} ({type(error).__name__})."
            ) from None

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/status")
        return result

    async def events(self, limit: int = 100) -> list[dict[str, Any]]:
        result = await self._request("GET", f"/events?limit={int(limit)}")
        events: list[dict[str, Any]] = result["events"]
        return events

    async def submit(
        self,
        plan_toml: str,
        plan_path: str | None,
        *,
        force: bool = False,
        resume: bool = False,
        shard: str | None = None,
    ) -> dict[str, Any]:
        """Queue a plan (or one shard of it, "K/N"): its experiment id, whether it resumed,
        units done and total, and the experiments queued before it."""
        body = {
            "plan_toml": plan_toml,
            "plan_path": plan_path,
            "force": force,
            "resume": resume,
            "shard": shard,
        }
        result: dict[str, Any] = await self._request("POST", "/plans", body)
        return result

    async def experiments(self) -> list[dict[str, Any]]:
        result = await self._request("GET", "/experiments")
        rows: list[dict[str, Any]] = result["experiments"]
        return rows

    async def experiment_results(self, experiment_id: str) -> list[dict[str, Any]]:
        result = await self._request("GET", f"/experiments/{experiment_id}")
        rows: list[dict[str, Any]] = result["results"]
        return rows

    async def pause(self) -> dict[str, Any]:
        return await self._control("pause")

    async def resume(self) -> dict[str, Any]:
        return await self._control("resume")

    async def cancel(self, experiment_id: str | None = None) -> dict[str, Any]:
        return await self._control("cancel", {"experiment_id": experiment_id})

    async def _control(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", f"/{action}", body or {})
        return result

    async def sql(self, query: str, limit: int | None = None) -> SqlResult:
        result = await self._request("POST", "/sql", {"sql": query, "limit": limit})
        return SqlResult(result["columns"], result["rows"], bool(result["truncated"]))

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        """Snapshots as the daemon sends them, until the connection ends."""
        session = self._get_session()
        try:
            async with session.get(
                self.base_url + "/stream",
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s),
            ) as response:
                if response.status >= 400:
                    raise _error_from(await response.json(content_type=None), response.status)
                async for line in response.content:
                    if line.strip():
                        yield json.loads(line)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as error:
            raise DaemonUnreachable(
                f"The stream from {self._where()} ended ({type(error).__name__})."
            ) from None

    # -- windows (issue 15; greenmon/windows_api.py) -----------------------------------------
    async def open_window(
        self,
        name: str,
        tags: Mapping[str, Any] | None = None,
        *,
        kind: str = "window",
        baseline_window_id: int | None = None,
        baseline_s: float | None = None,
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "tags": dict(tags or {}),
            "kind": kind,
            "baseline_window_id": baseline_window_id,
            "baseline_s": baseline_s,
        }
        result: dict[str, Any] = await self._request("POST", "/windows", body)
        return result

    async def close_window(self, window_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", f"/windows/{int(window_id)}/close", {})
        return result

    async def windows(self, limit: int = 20) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/windows?limit={int(limit)}")
        return result


def _error_from(payload: Any, status: int) -> GreenmonError:
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


# -- sync helpers for the CLI --------------------------------------------------------------


def find_daemon(db_path: str | Path, socket_path: str | Path | None = None) -> ApiClient | None:
    """A client for the daemon holding ``db_path``, or None when none runs.

    The daemon is found at the file's socket (or the override); one that answers there
    but holds another file (two databases given one socket) is an error, never silently
    the answer for this file.
    """
    path = resolve_socket_path(socket_path, db_path)
    if not path.exists() or not socket_is_live(path):
        return None
    client = ApiClient(path)
    held = Path(call_daemon(ApiClient(path), ApiClient.status)["db_path"])
    if held != Path(db_path).resolve():
        raise ApiError(
            f"The daemon at {path} holds {held}, not {Path(db_path).resolve()}. Unset "
            "GREENMON_SOCKET / --socket to reach the daemon of this file (each file has its "
            "own socket), or pass --db for the file that daemon holds."
        )
    return client


def call_daemon(client: ApiClient, method: Callable[[ApiClient], Any]) -> Any:
    """Run one client coroutine from sync code and close the client afterwards."""

    async def once() -> Any:
        async with client:
            return await method(client)

    return anyio.run(once)
