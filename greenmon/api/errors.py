"""The API's errors: what a client sees when the daemon refuses, fails or is not there."""

from __future__ import annotations

from greenmon.errors import GreenmonError


class ApiError(GreenmonError):
    title = "Daemon API"


class DaemonUnreachable(ApiError):
    title = "Daemon unreachable"


class QueryRefused(ApiError):
    title = "Query refused"


class QueryFailed(ApiError):
    title = "Query failed"
