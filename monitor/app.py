"""``create_app(settings)``: the FastAPI application, with nothing created at import."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import prometheus_client
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from monitor import __version__
from monitor.api import alerts, pages, queries, reports, runs
from monitor.api.deps import MetricsAccess
from monitor.api.limits import BodySizeLimit
from monitor.api.reports import RunConfigCache
from monitor.engine import Engine
from monitor.errors import Conflict, InvalidInput, NotFound
from monitor.exporter import metrics_registry
from monitor.notifier import notifier_from_settings
from monitor.settings import Settings
from monitor.store import Store
from monitor.telemetry import RequestTimer, Telemetry

log = logging.getLogger("fedsentinel")
API_PREFIX = "/api/v1"

prometheus_client.disable_created_metrics()


def _error_handlers(app: FastAPI) -> None:
    def handler(code: int) -> Callable:
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=code)

        return handle

    app.add_exception_handler(NotFound, handler(status.HTTP_404_NOT_FOUND))
    app.add_exception_handler(Conflict, handler(status.HTTP_409_CONFLICT))
    app.add_exception_handler(InvalidInput, handler(422))

    async def store_error(request: Request, exc: Exception) -> JSONResponse:
        request.app.state.telemetry.store_errors.inc()
        log.error("store error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "the store is unavailable; nothing was committed, retry later"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    app.add_exception_handler(DBAPIError, store_error)
    app.add_exception_handler(SQLAlchemyTimeoutError, store_error)  # connection pool exhausted

    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [_plain_error(e) for e in exc.errors()]}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)


def _json_safe(value: object) -> object:
    """NaN/Infinity as strings (JSON has no such numbers), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _plain_error(error: dict) -> dict:
    """A validation error fit for JSON: no huge echoed inputs, no NaN, no exception objects."""
    out = {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
    raw = error.get("input")
    if raw is not None and len(repr(raw)) <= 200:
        out["input"] = _json_safe(raw)
    return out


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
        engine = Engine(
            app.state.store,
            observe_seconds=app.state.telemetry.signal_seconds.observe,
            on_findings_opened=notifier,
        )
        app.state.engine = engine
        app.state.on_round_closed = engine.on_round_closed
        threading.Thread(target=engine.catch_up, name="fedsentinel-catch-up", daemon=True).start()
        if settings.auth_enabled:
            log.info("API keys configured: %d key(s); requests need a key", len(settings.api_keys))
        else:
            log.warning(
                "no API keys configured: the service is OPEN (anyone who can reach it may read and "
                "write); set FEDSENTINEL_API_KEYS for anything but a local demo"
            )
        log.info("store: %s", app.state.store.dialect)
        yield
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
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestTimer, telemetry=app.state.telemetry)
    _error_handlers(app)
    for router in (runs.router, reports.router, queries.router, alerts.router, pages.router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(pages.index_router)

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
