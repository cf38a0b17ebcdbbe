"""The OpenAPI document, made to match what the service really does.

FastAPI's generated document is adjusted in three ways:

- request bodies parsed by :func:`monitor.api.body.json_body` carry their
  models' definitions under :data:`monitor.api.body.COMPONENTS_KEY`; they are
  moved into ``components/schemas`` so every ``$ref`` resolves from the
  document root (an embedded ``$defs`` does not);
- a query parameter ``limit`` gets its maximum from the settings
  (``page_size_max`` is a setting, so it cannot be a static annotation);
- every operation documents the one error body (:class:`monitor.schemas.ErrorOut`)
  for the statuses its router declares (see :func:`monitor.api.errors.error_responses`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from monitor.api.body import COMPONENTS_KEY, REF_TEMPLATE
from monitor.schemas import ErrorOut
from monitor.settings import Settings


def _error_components() -> dict[str, Any]:
    schema = ErrorOut.model_json_schema(ref_template=REF_TEMPLATE, mode="serialization")
    return {**schema.pop("$defs", {}), "ErrorOut": schema}


def _lift_components(doc: dict[str, Any]) -> None:
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    components.update(_error_components())
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            for name, schema in operation.pop(COMPONENTS_KEY, {}).items():
                existing = components.setdefault(name, schema)
                if existing != schema:
                    raise RuntimeError(f"OpenAPI: two different schemas are both named {name!r}")


def _limit_maxima(doc: dict[str, Any], page_size_max: int) -> None:
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            for param in operation.get("parameters", []):
                if param.get("in") == "query" and param.get("name") == "limit":
                    param["schema"]["maximum"] = page_size_max


def build_document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    _lift_components(doc)
    _limit_maxima(doc, settings.page_size_max)
    return doc


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve :func:`build_document` at /openapi.json (built once per app)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
