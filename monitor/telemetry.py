"""The service's own metrics (``fedsentinel_*``), in an app-owned registry.

Only what is per worker lives here (request latency, signal time, store
errors); counts every worker must agree on (reports ingested) are computed
from the store at scrape time by :mod:`monitor.exporter`. Kept per app instance rather than in prometheus_client's global registry so
that tests can build several apps in one process. Request latency is labelled
by route template (``/api/v1/runs/{run_id}``), never by raw path, to keep
cardinality bounded.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "fedsentinel_http_request_duration_seconds",
            "HTTP request latency by route template, method and status code.",
            ["route", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "fedsentinel_store_errors",
            "Database errors answered with 503.",
            registry=self.registry,
        )
        self.signal_seconds = Histogram(
            "fedsentinel_signal_computation_duration_seconds",
            "Time to compute a round's signals and findings.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )



class RequestTimer:
    """ASGI middleware feeding :attr:`Telemetry.requests`."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        code = 500

        async def record_status(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.telemetry.requests.labels(template, scope["method"], str(code)).observe(
                time.perf_counter() - start
            )
