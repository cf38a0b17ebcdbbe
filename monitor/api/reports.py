"""Ingest: client reports for a round, and closing a round (write scope)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request

from monitor.api.deps import RoundNumber, RunId, WriteAccess, get_store
from monitor.api.errors import error_responses
from monitor.api.report_batch import DecodedBatch, report_batch, report_body_schema
from monitor.errors import InvalidInput
from monitor.schemas import (
    IngestResult,
    RoundClose,
    RoundClosed,
    RunCreate,
    validate_round_close_against_run,
)
from monitor.store import Store, writes

router = APIRouter(prefix="/runs/{run_id}/rounds/{round}", tags=["ingest"], dependencies=[WriteAccess])


def _run_config(request: Request, store: Store, run_id: str) -> RunCreate:
    """Run configurations never change once registered, so each worker caches them."""
    cache: RunConfigCache = request.app.state.run_configs
    config = cache.get(run_id)
    if config is None:
        with store.read_session() as session:
            config = writes.load_run_config(session, run_id)
        cache.put(run_id, config)
    return config


class RunConfigCache:
    """A small LRU of parsed run configurations (a config with many bin edges is large)."""

    def __init__(self, max_runs: int = 64) -> None:
        self._items: OrderedDict[str, RunCreate] = OrderedDict()
        self.max_runs = max_runs

    def get(self, run_id: str) -> RunCreate | None:
        config = self._items.get(run_id)
        if config is not None:
            self._items.move_to_end(run_id)
        return config

    def put(self, run_id: str, config: RunCreate) -> None:
        self._items[run_id] = config
        self._items.move_to_end(run_id)
        while len(self._items) > self.max_runs:
            self._items.popitem(last=False)


@router.post(
    "/reports",
    response_model=IngestResult,
    openapi_extra=report_body_schema(),
    responses=error_responses(404, 408, 409, 413),
)
def ingest_reports(
    run_id: RunId,
    round: RoundNumber,
    batch: Annotated[DecodedBatch, Depends(report_batch)],
    request: Request,
    store: Annotated[Store, Depends(get_store)],
) -> IngestResult:
    """Store one or many client reports for a round. Identical resends are counted, not stored again.

    The body is JSON (``application/json``) or, with arrays as base64 little-endian
    floats, ``application/vnd.fedsentinel.packed+json``; both are documented below.
    """
    limit = request.app.state.settings.max_reports_per_request
    if batch.count > limit:
        raise HTTPException(
            413,
            f"{batch.count} reports in one request; the limit is {limit}, send smaller batches",
        )
    config = _run_config(request, store, run_id)
    try:
        rows = batch.prepare(config)
    except ValueError as exc:
        raise InvalidInput(str(exc), loc=("body", "reports")) from exc
    with store.write_session() as session:
        accepted, duplicates = writes.ingest_reports(session, run_id, round, rows)
    return IngestResult(run_id=run_id, round=round, accepted=accepted, duplicates=duplicates)


@router.post(
    "/close",
    response_model=RoundClosed,
    responses=error_responses(404, 408, 409, 413),
)
def close_round(
    run_id: RunId,
    round: RoundNumber,
    body: RoundClose,
    request: Request,
    store: Annotated[Store, Depends(get_store)],
) -> RoundClosed:
    """Close a round with its global statistics; later reports for it are refused."""
    config = _run_config(request, store, run_id)
    try:
        validate_round_close_against_run(body, config)
    except ValueError as exc:
        raise InvalidInput(str(exc), loc=("body", "aggregate_sketch")) from exc
    with store.write_session() as session:
        already_closed, reports = writes.close_round(session, run_id, round, body)
    request.app.state.on_round_closed(run_id, round)
    return RoundClosed(
        run_id=run_id, round=round, closed=True, already_closed=already_closed, reports=reports
    )
