"""HTML pages (read scope): a run's report and the index of runs at ``/``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from monitor.api.deps import ReadAccess, RunId, read_session
from monitor.api.errors import error_responses
from monitor.report import run_report_html
from monitor.report.render import render_index
from monitor.store import queries

router = APIRouter(tags=["report"], dependencies=[ReadAccess])
index_router = APIRouter(dependencies=[ReadAccess])
Session_ = Annotated[Session, Depends(read_session)]
REPORT_PATH = "/api/v1/runs/{run_id}/report"
INDEX_LIMIT = 1000


@router.get("/runs/{run_id}/report", response_class=HTMLResponse, responses=error_responses(404))
def run_report(run_id: RunId, session: Session_) -> HTMLResponse:
    """The run's report: one self-contained HTML page (the same file as ``fedsentinel report RUN``)."""
    return HTMLResponse(run_report_html(session, run_id))


@index_router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(session: Session_) -> HTMLResponse:
    """Every run (the newest 1,000) with a link to its report."""
    total = queries.list_runs(session, 0, 1)[1]
    runs, _ = queries.list_runs(session, max(0, total - INDEX_LIMIT), INDEX_LIMIT)
    rows = [r.model_dump(mode="json") for r in reversed(runs)]
    return HTMLResponse(render_index(rows, REPORT_PATH))
