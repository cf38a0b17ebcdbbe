"""One error body for every refused request, and the handlers that produce it.

Every 4xx and 5xx the service answers carries the same JSON shape
(:class:`monitor.schemas.ErrorOut`), documented in the OpenAPI document::

    {"detail": "one human sentence", "errors": [{"loc": [...], "msg": "...", "type": "..."}]}

``detail`` is always a string (a schema-driven client can print it as is);
``errors`` lists the offending fields of a 422 and is empty otherwise.
FastAPI's own shapes (``detail`` as a list for validation errors, as a string
for everything else) are replaced here, so no route can leak a second shape.

A wrong method on a known path gets 405 with an ``Allow`` header listing every
method the path serves (Starlette names only the first route's), and OPTIONS on
a known path answers 204 with that header.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from monitor.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger("fedsentinel")

MAX_LISTED_ERRORS = 50
"""A body with thousands of bad values lists the first 50 (the count is in ``detail``)."""

DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing or unknown API key (only when API keys are configured)",
    403: "The API key lacks the scope this route needs",
    404: "Unknown run, round or client",
    408: "The request body did not arrive in time (body_timeout_seconds)",
    405: "Method not allowed on this path (the Allow header lists the allowed ones)",
    409: "Conflicts with what is already stored",
    413: "Request body or batch too large",
    422: "Invalid fields, or values that do not fit the run",
    503: "The store is unavailable or too many large uploads are in flight; retry later "
    "(see Retry-After)",
}


ERROR_REF = "#/components/schemas/ErrorOut"


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each code documented with the one error body.

    Spelled as JSON content rather than ``model=`` so that an HTML route's
    errors are still documented as JSON (which they are); the document
    builder (:mod:`monitor.api.openapi`) adds ``ErrorOut`` to the components.
    """
    content = {"application/json": {"schema": {"$ref": ERROR_REF}}}
    return {code: {"description": DESCRIPTIONS[code], "content": content} for code in codes}


def error_body(detail: str, errors: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"detail": detail, "errors": list(errors)}


def error_response(
    code: int,
    detail: str,
    errors: Iterable[dict[str, Any]] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(detail, errors), status_code=code, headers=headers)


def json_safe(value: object) -> object:
    """NaN/Infinity as strings (JSON has no such numbers), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def plain_error(error: dict) -> dict[str, Any]:
    """A validation error fit for JSON: no huge echoed inputs, no NaN, no exception objects."""
    out: dict[str, Any] = {
        "loc": [str(part) if not isinstance(part, int) else part for part in error.get("loc", ())],
        "msg": str(error.get("msg", "")),
        "type": str(error.get("type", "")),
    }
    raw = error.get("input")
    if raw is not None and len(repr(raw)) <= 200:
        out["input"] = json_safe(raw)
    return out


def summarize(errors: Sequence[dict[str, Any]]) -> str:
    """One sentence naming the first few offending fields."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "invalid request: " + "; ".join(parts) + more


PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette's 405 names only the first route's).

    Each method is probed through the routes' public ``matches``, so routers
    included into others (FastAPI wraps them) are asked the same way a request is.
    """
    methods = {
        method
        for method in PROBED_METHODS
        for route in request.app.router.routes
        if route.matches({**request.scope, "method": method})[0] is Match.FULL
    }
    return sorted(methods | {"OPTIONS"}) if methods else []


_UNPARSEABLE = "There was an error parsing the body"


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        if request.method == "OPTIONS" and allowed:
            return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)
        detail = (
            f"{request.method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
        )
        return error_response(exc.status_code, detail, headers=headers)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == status.HTTP_400_BAD_REQUEST and detail == _UNPARSEABLE:
        # FastAPI's 400 for a body it cannot even decode (not UTF-8): the same 422 as any invalid JSON
        msg = "Invalid JSON: the body could not be decoded (JSON must be UTF-8)"
        error = {"loc": ["body"], "msg": msg, "type": "json_invalid"}
        return error_response(422, summarize([error]), [error])
    if exc.status_code == status.HTTP_404_NOT_FOUND and detail == "Not Found":
        detail = f"no such path: {request.url.path}"
    return error_response(exc.status_code, detail, headers=headers or None)


async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [plain_error(e) for e in exc.errors()]
    return error_response(422, summarize(errors), errors[:MAX_LISTED_ERRORS])


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors, HTTP errors and store failures onto :class:`ErrorOut`."""

    def domain(code: int):  # noqa: ANN202
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return error_response(code, str(exc), getattr(exc, "errors", ()))

        return handle

    app.add_exception_handler(NotFound, domain(status.HTTP_404_NOT_FOUND))
    app.add_exception_handler(Conflict, domain(status.HTTP_409_CONFLICT))
    app.add_exception_handler(InvalidInput, domain(422))
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)

    async def store_error(request: Request, exc: Exception) -> JSONResponse:
        request.app.state.telemetry.store_errors.inc()
        log.error("store error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the store is unavailable; nothing was committed, retry later",
            headers={"Retry-After": "1"},
        )

    app.add_exception_handler(DBAPIError, store_error)
    app.add_exception_handler(SQLAlchemyTimeoutError, store_error)  # connection pool exhausted
