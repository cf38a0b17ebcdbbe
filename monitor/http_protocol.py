"""uvicorn's HTTP protocol with a deadline for request headers.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``,
but only once a response has been sent, and any byte that arrives cancels
that timer. A client that connects and sends nothing, or sends its headers
one byte every few seconds ("slowloris"), holds a connection for as long as it
likes. :class:`HeaderDeadline` closes a connection whose request line and
headers are not complete ``header_timeout_seconds`` after it opened, or after
its previous response. A request whose headers are complete is never cut by
it (how long its body may take is the body gate's business, see
monitor/api/limits.py).

The service should still run behind a reverse proxy (nginx, Envoy, a cloud
load balancer) for TLS and connection limits; these deadlines make the
service safe on its own too.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from monitor.settings import Settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover  (uvicorn without httptools: the pure-Python parser)
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

PROTOCOL = "monitor.http_protocol:GuardedHttpProtocol"
"""The import string uvicorn workers load (``uvicorn.run(http=PROTOCOL)``)."""


@functools.cache
def _configured_header_timeout() -> float:
    """Read once per worker process: workers get their settings from FEDSENTINEL_* variables."""
    return Settings().header_timeout_seconds


class HeaderDeadline:
    """Mixin for uvicorn's HTTP protocols (httptools and h11 both have ``cycle``,
    ``loop``, ``transport`` and ``on_response_complete``)."""

    header_timeout_seconds: float | None = None
    """Set on a subclass to fix the deadline; None reads it from the settings."""

    _header_timer: asyncio.TimerHandle | None = None

    def _header_timeout(self) -> float:
        return type(self).header_timeout_seconds or _configured_header_timeout()

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_timer = self.loop.call_later(  # type: ignore[attr-defined]
            self._header_timeout(), self._header_deadline_passed
        )

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        cycle = self.cycle  # type: ignore[attr-defined]
        waiting = cycle is None or cycle.response_complete  # no request has complete headers
        if waiting and not self.transport.is_closing():  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():  # type: ignore[attr-defined]
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)  # type: ignore[misc]


class GuardedHttpProtocol(HeaderDeadline, _Base):  # type: ignore[misc,valid-type]
    """uvicorn's default HTTP protocol with :class:`HeaderDeadline`."""


def protocol_with_deadline(seconds: float) -> type[GuardedHttpProtocol]:
    """A protocol class with a fixed deadline, for a server in this process (tests, the demo)."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"header_timeout_seconds": seconds})
