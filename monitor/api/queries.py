"""Read-only queries: rounds, clients, a client's history, findings (read scope)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import StringConstraints
from sqlmodel import Session

from monitor.api.deps import (
    MAX_ROUND,
    ClientId,
    Paging,
    ReadAccess,
    RoundNumber,
    RunId,
    read_session,
)
from monitor.api.errors import error_responses
from monitor.detectors.registry import KINDS
from monitor.errors import InvalidInput
from monitor.schemas import ID_PATTERN, ClientLatest, ClientRoundOut, FindingOut, Page, RoundOut
from monitor.store import queries

router = APIRouter(
    prefix="/runs/{run_id}", tags=["queries"], dependencies=[ReadAccess], responses=error_responses(404)
)
Session_ = Annotated[Session, Depends(read_session)]
Paging_ = Annotated[Paging, Depends()]
RoundBound = Annotated[int | None, Query(ge=0, le=MAX_ROUND)]
FindingKind = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


def _check_range(from_round: int | None, to_round: int | None) -> None:
    if from_round is not None and to_round is not None and from_round > to_round:
        raise InvalidInput(
            f"from_round ({from_round}) is after to_round ({to_round})", loc=("query", "from_round")
        )


def _check_kinds(kinds: list[str]) -> None:
    """Kinds the detector registry knows (a typo would otherwise answer an empty page)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise InvalidInput(
            f"unknown finding kind(s) {', '.join(unknown)}; valid kinds: {', '.join(KINDS)}",
            loc=("query", "kind"),
        )


@router.get("/rounds", response_model=Page[RoundOut])
def list_rounds(
    run_id: RunId,
    paging: Paging_,
    session: Session_,
    status_: Annotated[Literal["open", "closed"] | None, Query(alias="status")] = None,
) -> Page[RoundOut]:
    items, total = queries.list_rounds(session, run_id, paging.offset, paging.limit, status_)
    return Page[RoundOut](items=items, total=total, offset=paging.offset, limit=paging.limit)


@router.get("/rounds/{round}", response_model=RoundOut)
def get_round(run_id: RunId, round: RoundNumber, session: Session_) -> RoundOut:
    return queries.get_round(session, run_id, round)


@router.get("/clients", response_model=Page[ClientLatest])
def list_clients(run_id: RunId, paging: Paging_, session: Session_) -> Page[ClientLatest]:
    """Every client of the run with the values of its latest report."""
    items, total = queries.list_clients(session, run_id, paging.offset, paging.limit)
    return Page[ClientLatest](items=items, total=total, offset=paging.offset, limit=paging.limit)


@router.get("/clients/{client_id}/history", response_model=Page[ClientRoundOut])
def client_history(
    run_id: RunId,
    client_id: ClientId,
    paging: Paging_,
    session: Session_,
    from_round: RoundBound = None,
    to_round: RoundBound = None,
) -> Page[ClientRoundOut]:
    """One client's reports over a round range, oldest first."""
    _check_range(from_round, to_round)
    items, total = queries.client_history(
        session, run_id, client_id, from_round, to_round, paging.offset, paging.limit
    )
    return Page[ClientRoundOut](items=items, total=total, offset=paging.offset, limit=paging.limit)


@router.get("/findings", response_model=Page[FindingOut])
def list_findings(
    run_id: RunId,
    paging: Paging_,
    session: Session_,
    kind: Annotated[list[FindingKind], Query(description="Repeat to select several kinds.")] = [],  # noqa: B006
    client: Annotated[str | None, Query(pattern=ID_PATTERN, description="Client id.")] = None,
    severity: Annotated[list[Literal["info", "warning", "critical"]], Query()] = [],  # noqa: B006
    status_: Annotated[Literal["open", "resolved"] | None, Query(alias="status")] = None,
    from_round: RoundBound = None,
    to_round: RoundBound = None,
) -> Page[FindingOut]:
    """Findings whose round span overlaps [from_round, to_round], filtered by kind, client, severity."""
    _check_range(from_round, to_round)
    _check_kinds(kind)
    items, total = queries.list_findings(
        session,
        run_id,
        kinds=kind,
        client_id=client,
        severities=severity,
        status=status_,
        from_round=from_round,
        to_round=to_round,
        offset=paging.offset,
        limit=paging.limit,
    )
    return Page[FindingOut](items=items, total=total, offset=paging.offset, limit=paging.limit)
