"""``create_app(settings)``: the FastAPI application, with nothing created at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import prometheus_client
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DBAPIError

from monitor import __version__
from monitor.api import alerts, analysis, pages, queries, reports, runs
from monitor.api.deps import MetricsAccess, require
from monitor.api.errors import error_responses, install_error_handlers
from monitor.api.limits import BodyGate
from monitor.api.openapi import install_openapi
from monitor.api.reports import RunConfigCache
from monitor.engine import build_engine
from monitor.exporter import metrics_registry
from monitor.notifier import notifier_from_settings
from monitor.settings import Scope, Settings
from monitor.store import Store
from monitor.telemetry import RequestTimer, Telemetry
from monitor.worker import AnalysisWorker

log = logging.getLogger("fedsentinel")
API_PREFIX = "/api/v1"

prometheus_client.disable_created_metrics()


_WEBHOOK_PATH = f"{API_PREFIX}/alerts/webhook"
_write_access = require(Scope.write)


def _may_send_a_body(request: Request) -> None:
    """Checked before any body is read: every route that takes a body needs write access
    (the alert webhook: its token or write access). Raises the route's own 401/403."""
    if request.url.path == _WEBHOOK_PATH:
        alerts.webhook_access(request)
    else:
        _write_access(request)


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """Build the service. ``store`` may be passed in (tests); otherwise made from settings."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_store = store is None
        app.state.store = store or Store(
            settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        app.state.store.create_schema()
        notifier = notifier_from_settings(settings)
        engine = build_engine(
            app.state.store,
            settings,
            observe_seconds=app.state.telemetry.signal_seconds.observe,
            on_findings_opened=notifier,
        )
        app.state.engine = engine
        worker = None
        if settings.analysis == "in_process":
            worker = AnalysisWorker(engine, poll_seconds=settings.analysis_poll_seconds).start()
            app.state.on_round_closed = worker.notify
        if settings.auth_enabled:
            log.info("API keys configured: %d key(s); requests need a key", len(settings.api_keys))
        else:
            log.warning(
                "no API keys configured: the service is OPEN (anyone who can reach it may read and "
                "write); set FEDSENTINEL_API_KEYS for anything but a local demo"
            )
        log.info("store: %s", app.state.store.dialect)
        yield
        if worker is not None:
            worker.stop()
        if notifier is not None:
            notifier.close()
        if own_store:
            app.state.store.dispose()

    app = FastAPI(
        title="fedsentinel",
        version=__version__,
        description="Observability for federated learning: ingest per-round client statistics, "
        "query runs, rounds, clients and findings.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.run_configs = RunConfigCache()
    app.state.telemetry = Telemetry()
    app.state.metrics_registry = metrics_registry(
        app.state.telemetry.registry, lambda: app.state.store, settings
    )
    app.state.on_round_closed = lambda run_id, round_number: None
    app.add_middleware(
        BodyGate,
        max_bytes=settings.max_body_bytes,
        large_bytes=settings.large_body_bytes,
        max_large=settings.max_concurrent_large_uploads,
        slot_wait_seconds=settings.upload_slot_wait_seconds,
        body_timeout_seconds=settings.body_timeout_seconds,
        authorize=_may_send_a_body,
    )
    app.add_middleware(RequestTimer, telemetry=app.state.telemetry)
    install_error_handlers(app)
    for router in (runs.router, reports.router, queries.router, analysis.router, alerts.router, pages.router):
        app.include_router(router, prefix=API_PREFIX, responses=error_responses(401, 403, 422, 503))
    app.include_router(pages.index_router)
    install_openapi(app, settings)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"])
    def readyz(request: Request) -> JSONResponse:
        """Readiness: the store answers a query."""
        from sqlalchemy import text

        try:
            with request.app.state.store.read_session() as session:
                session.execute(text("SELECT 1"))
        except DBAPIError as exc:
            log.error("readiness check failed: %s", exc)  # details in the log, not in the answer
            return JSONResponse({"status": "store unavailable"}, 503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["service"], include_in_schema=False, dependencies=[MetricsAccess])
    def metrics(request: Request) -> PlainTextResponse:
        """Prometheus exposition. With API keys configured it needs a read-scoped key
        (Prometheus: ``authorization: {credentials: KEY}``) unless FEDSENTINEL_METRICS_PUBLIC=true."""
        return PlainTextResponse(
            generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
        )

    return app
