"""The API's client: ``ApiClient`` over the daemon's Unix socket (or TCP with a token),
and the sync helpers the CLI uses to find a file's daemon and call it once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio
import msgspec

from greenmon.api.errors import ApiError, DaemonUnreachable
from greenmon.api.messages import (
    CancelRequest,
    ControlReply,
    DaemonEvent,
    DaemonStatus,
    EventList,
    ExperimentList,
    ExperimentRow,
    ExperimentSummary,
    OpenedWindow,
    PlanRequest,
    PlanSubmitted,
    ResultRow,
    Snapshot,
    SqlRequest,
    SqlResult,
    WindowListing,
    WindowRequest,
    WindowResult,
    decode,
)
from greenmon.api.sockets import resolve_socket_path, socket_is_live
from greenmon.api.wire import client_json, error_from

T = TypeVar("T")

# Snapshots carry the plan grid, which can reach tens of kilobytes for a large plan.
CLIENT_READ_BUFSIZE = 1 << 22


def answer(data: Any, kind: type[T]) -> T:
    """The daemon's JSON as the message ``kind``; one that does not fit (a daemon of
    another greenmon version) is an ApiError that says so, not a KeyError later."""
    try:
        return decode(data, kind)
    except msgspec.ValidationError as error:
        raise ApiError(
            f"The daemon's answer is not the {kind.__name__} this greenmon reads ({error}). "
            "Is the daemon from another greenmon version? Restart it with this one."
        ) from None


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
                connector=connector,
                headers=headers,
                read_bufsize=CLIENT_READ_BUFSIZE,
                json_serialize=client_json,  # request bodies are messages
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
                    raise error_from(payload, response.status)
                return payload
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as error:
            raise DaemonUnreachable(
                f"No greenmon daemon answers at {self._where()} ({type(error).__name__})."
            ) from None

    async def status(self) -> DaemonStatus:
        return answer(await self._request("GET", "/status"), DaemonStatus)

    async def events(self, limit: int = 100) -> list[DaemonEvent]:
        return answer(await self._request("GET", f"/events?limit={int(limit)}"), EventList).events

    async def submit(
        self,
        plan_toml: str,
        plan_path: str | None,
        *,
        force: bool = False,
        resume: bool = False,
        shard: str | None = None,
    ) -> PlanSubmitted:
        """Queue a plan (or one shard of it, "K/N"): its experiment id, whether it resumed,
        units done and total, and the experiments queued before it."""
        body = PlanRequest(
            plan_toml=plan_toml, plan_path=plan_path, force=force, resume=resume, shard=shard
        )
        return answer(await self._request("POST", "/plans", body), PlanSubmitted)

    async def experiments(self) -> list[ExperimentRow]:
        return answer(await self._request("GET", "/experiments"), ExperimentList).experiments

    async def experiment_results(self, experiment_id: str) -> list[ResultRow]:
        result = await self._request("GET", f"/experiments/{experiment_id}")
        return answer(result, ExperimentSummary).results

    async def pause(self) -> ControlReply:
        return await self._control("pause")

    async def resume(self) -> ControlReply:
        return await self._control("resume")

    async def cancel(self, experiment_id: str | None = None) -> ControlReply:
        return await self._control("cancel", CancelRequest(experiment_id=experiment_id))

    async def _control(self, action: str, body: CancelRequest | None = None) -> ControlReply:
        return answer(await self._request("POST", f"/{action}", body or {}), ControlReply)

    async def sql(self, query: str, limit: int | None = None) -> SqlResult:
        result = await self._request("POST", "/sql", SqlRequest(sql=query, limit=limit))
        return answer(result, SqlResult)

    async def stream(self) -> AsyncIterator[Snapshot]:
        """Snapshots as the daemon sends them (typed), until the connection ends."""
        session = self._get_session()
        try:
            async with session.get(
                self.base_url + "/stream",
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s),
            ) as response:
                if response.status >= 400:
                    raise error_from(await response.json(content_type=None), response.status)
                async for line in response.content:
                    if line.strip():
                        yield answer(json.loads(line), Snapshot)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as error:
            raise DaemonUnreachable(
                f"The stream from {self._where()} ended ({type(error).__name__})."
            ) from None

    # -- windows (greenmon/windows_api.py) -----------------------------------------
    async def open_window(
        self,
        name: str,
        tags: Mapping[str, Any] | None = None,
        *,
        kind: str = "window",
        baseline_window_id: int | None = None,
        baseline_s: float | None = None,
    ) -> OpenedWindow:
        body = WindowRequest(
            name=name,
            tags=dict(tags or {}),
            kind=kind,
            baseline_window_id=baseline_window_id,
            baseline_s=baseline_s,
        )
        return answer(await self._request("POST", "/windows", body), OpenedWindow)

    async def close_window(self, window_id: int) -> WindowResult:
        result = await self._request("POST", f"/windows/{int(window_id)}/close", {})
        return answer(result, WindowResult)

    async def windows(self, limit: int = 20) -> WindowListing:
        return answer(await self._request("GET", f"/windows?limit={int(limit)}"), WindowListing)


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
    status: DaemonStatus = call_daemon(ApiClient(path), ApiClient.status)
    held = Path(status.db_path)
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
