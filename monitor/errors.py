"""Domain errors; the HTTP layer maps them to status codes."""


class FedSentinelError(Exception):
    """Base class; ``str(exc)`` is the message a user sees."""


class NotFound(FedSentinelError):
    """404: an unknown run, round or client."""


class Conflict(FedSentinelError):
    """409: the request contradicts what is already stored."""


class InvalidInput(FedSentinelError):
    """422: the request is well-formed but does not fit its run."""
