"""Runs: register (write scope), list and inspect (read scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from sqlmodel import Session

from monitor.api.deps import Paging, ReadAccess, RunId, WriteAccess, get_store, read_session
from monitor.api.errors import error_responses
from monitor.detectors import Thresholds
from monitor.errors import InvalidInput
from monitor.schemas import Page, RunCreate, RunDetail, RunRegistered, RunSummary
from monitor.store import Store, queries, writes

router = APIRouter(prefix="/runs", tags=["runs"])


@router.post(
    "",
    response_model=RunRegistered,
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteAccess],
    responses={
        200: {"model": RunRegistered, "description": "Already registered, identical"},
        **error_responses(408, 409, 413),
    },
)
def register_run(
    spec: RunCreate, response: Response, store: Annotated[Store, Depends(get_store)]
) -> RunRegistered:
    """Register a run. Sending the identical registration again is a no-op (200)."""
    try:
        Thresholds().with_overrides(spec.thresholds)
    except ValueError as exc:
        raise InvalidInput(f"thresholds: {exc}", loc=("body", "thresholds")) from exc
    with store.write_session() as session:
        created = writes.register_run(session, spec)
    if not created:
        response.status_code = status.HTTP_200_OK
    return RunRegistered(run_id=spec.run_id, created=created)


@router.get("", response_model=Page[RunSummary], dependencies=[ReadAccess])
def list_runs(
    paging: Annotated[Paging, Depends()], session: Annotated[Session, Depends(read_session)]
) -> Page[RunSummary]:
    items, total = queries.list_runs(session, paging.offset, paging.limit)
    return Page[RunSummary](items=items, total=total, offset=paging.offset, limit=paging.limit)


@router.get(
    "/{run_id}", response_model=RunDetail, dependencies=[ReadAccess], responses=error_responses(404)
)
def get_run(run_id: RunId, session: Annotated[Session, Depends(read_session)]) -> RunDetail:
    """A run's configuration and a health summary (rounds, participation, findings)."""
    return queries.run_detail(session, run_id)
