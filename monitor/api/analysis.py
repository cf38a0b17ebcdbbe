"""Analysis status of a run (read scope): the close returns before its analysis, so
clients that need a round's findings ask here, or let ``MonitorClient.wait_for_analysis`` do it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from sqlmodel import Session

from monitor.api.deps import ReadAccess, RunId, read_session
from monitor.api.errors import error_responses
from monitor.schemas import AnalysisStatus
from monitor.store.analysis import analysis_status

router = APIRouter(
    prefix="/runs/{run_id}",
    tags=["queries"],
    dependencies=[ReadAccess],
    responses=error_responses(404),
)


@router.get("/analysis", response_model=AnalysisStatus)
def get_analysis(
    run_id: RunId, session: Annotated[Session, Depends(read_session)]
) -> AnalysisStatus:
    """Closed, analysed and pending rounds of a run. Findings of round r are final once
    ``last_analyzed_round >= r`` and r is not in ``pending_rounds``."""
    return analysis_status(session, run_id)
