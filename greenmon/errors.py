"""The project's error types.

Every error greenmon shows a person derives from GreenmonError, which carries a title and
a one-paragraph message that says what to do.  The CLI prints these without a traceback;
anything else reaching the top is a bug and is shown as one.
"""

from __future__ import annotations


class GreenmonError(Exception):
    """An error fit to show a person: a short title and a message saying what to do."""

    title = "greenmon error"

    def __init__(self, message: str, *, title: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if title is not None:
            self.title = title

    def __str__(self) -> str:
        return self.message


class ConfigError(GreenmonError):
    title = "Invalid configuration"


class StoreError(GreenmonError):
    title = "Database problem"


class DatabaseLockedError(StoreError):
    title = "Database in use"


class DatabaseNotFoundError(StoreError):
    title = "No such database"


class PlanError(GreenmonError):
    title = "Invalid plan"


class EngineError(GreenmonError):
    title = "Engine failed"


class WorkloadError(GreenmonError):
    title = "Invalid workload"
