"""Parse large JSON bodies straight from bytes with pydantic-core.

FastAPI's default path is ``json.loads`` then validation of the Python objects;
for a batch of thousands of reports, validating the raw bytes in pydantic-core
(``model_validate_json``) is about twice as fast. Errors keep the service's 422
shape, and the schema still appears in the OpenAPI document (its definitions
under ``components/schemas``, see :mod:`monitor.api.openapi`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
REF_TEMPLATE = "#/components/schemas/{model}"
COMPONENTS_KEY = "x-fedsentinel-components"
"""Where :func:`body_schema` leaves definitions for :mod:`monitor.api.openapi` to move."""


def validate_json(model: type[M], raw: bytes) -> M:
    """``model`` from JSON bytes; errors as FastAPI's 422, located under ``body``."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        for error in errors:
            error["loc"] = ("body", *error["loc"])
        raise RequestValidationError(errors) from None


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    async def parse(request: Request) -> M:
        raw = await request.body()
        # Megabytes of JSON: validate in the threadpool, not on the event loop.
        return await run_in_threadpool(validate_json, model, raw)

    return parse


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is parsed by :func:`json_body`.

    The body refers to ``#/components/schemas/<Model>``; the model and its
    definitions travel under :data:`COMPONENTS_KEY` until the document is built.
    """
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    definitions = {**schema.pop("$defs", {}), model.__name__: schema}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF_TEMPLATE.format(model=model.__name__)}}
            },
        },
        COMPONENTS_KEY: definitions,
    }
