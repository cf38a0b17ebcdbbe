"""Domain errors; the HTTP layer maps them to status codes."""

from __future__ import annotations


class FedSentinelError(Exception):
    """Base class; ``str(exc)`` is the message a user sees."""


class NotFound(FedSentinelError):
    """404: an unknown run, round or client."""


class Conflict(FedSentinelError):
    """409: the request contradicts what is already stored."""


class InvalidInput(FedSentinelError):
    """422: the request is well-formed but does not fit its run.

    ``loc`` names the offending field (``("query", "limit")``) so that the
    answer's ``errors`` list points at it, as a schema validation error would.
    """

    def __init__(self, message: str, loc: tuple[str | int, ...] | None = None) -> None:
        super().__init__(message)
        self.errors = [{"loc": list(loc), "msg": message, "type": "value_error"}] if loc else []
