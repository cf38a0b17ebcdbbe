"""Dependencies shared by the routers: the store, the settings, API-key scopes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from sqlmodel import Session

from monitor.errors import InvalidInput
from monitor.schemas import ID_PATTERN, INT32_MAX
from monitor.settings import Scope, Settings
from monitor.store import Store

RunId = Annotated[str, Path(pattern=ID_PATTERN, description="The run's id.")]
ClientId = Annotated[str, Path(pattern=ID_PATTERN, description="A client's pseudonymous id.")]
MAX_ROUND = 1_000_000_000
RoundNumber = Annotated[int, Path(ge=0, le=MAX_ROUND, description="Round number.")]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> Store:
    return request.app.state.store


def read_session(store: Annotated[Store, Depends(get_store)]) -> Iterator[Session]:
    with store.read_session() as session:
        yield session


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def scopes_for(key: str, settings: Settings) -> set[Scope] | None:
    """Scopes of a key, or None for an unknown key.

    Every configured key is compared, digests rather than raw keys, so neither
    the time taken nor an early exit tells which key or how long a key is.
    """
    presented = hashlib.sha256(key.encode()).digest()
    granted: set[Scope] | None = None
    for known, scopes in settings.api_keys.items():
        if hmac.compare_digest(presented, hashlib.sha256(known.encode()).digest()):
            granted = (granted or set()) | set(scopes)
    return granted


def require(scope: Scope) -> Callable[[Request], None]:
    def check(request: Request) -> None:
        settings: Settings = request.app.state.settings
        if not settings.auth_enabled:
            return
        key = _presented_key(request)
        if not key:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        granted = scopes_for(key, settings)
        if granted is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "unknown API key", headers={"WWW-Authenticate": "Bearer"}
            )
        if scope not in granted and Scope.admin not in granted:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this API key lacks the '{scope}' scope")

    return check


ReadAccess = Depends(require(Scope.read))
_read_check = require(Scope.read)


def _metrics_check(request: Request) -> None:
    """Per-client scores are run data: /metrics needs read access unless declared public."""
    if not request.app.state.settings.metrics_public:
        _read_check(request)


MetricsAccess = Depends(_metrics_check)
WriteAccess = Depends(require(Scope.write))
AdminAccess = Depends(require(Scope.admin))


class Paging:
    def __init__(
        self,
        request: Request,
        offset: Annotated[int, Query(ge=0, le=INT32_MAX, description="Items to skip.")] = 0,
        limit: Annotated[int, Query(ge=1, description="Items per page (at most page_size_max).")] = 100,
    ) -> None:
        max_limit = request.app.state.settings.page_size_max
        if limit > max_limit:  # a setting, so checked here; the OpenAPI document states it too
            raise InvalidInput(f"limit must be at most {max_limit}", loc=("query", "limit"))
        self.offset = offset
        self.limit = limit
