"""Load one stored round as the arrays the detectors take (:class:`monitor.detectors.RoundInput`)."""

from __future__ import annotations

import json

import numpy as np
from sqlalchemy import select
from sqlmodel import Session

from monitor.detectors import RoundInput
from monitor.schemas import RunCreate
from monitor.store.codec import unpack
from monitor.store.tables import ClientReportRow, RoundRow

_SCALARS = (
    "num_examples", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy",
    "local_accuracy", "wall_time_seconds", "update_norm", "update_cosine_previous_global",
    "eval_examples",
)


def _fill_rows(target: np.ndarray, blobs: list[bytes | None]) -> None:
    """Decode row blobs into ``target`` (n, width); all blobs present -> one frombuffer."""
    if blobs and all(b is not None for b in blobs):
        target[:] = np.frombuffer(b"".join(blobs), dtype="<f8").reshape(target.shape)  # type: ignore[arg-type]
        return
    for i, blob in enumerate(blobs):
        if blob is not None:
            target[i] = np.frombuffer(blob, dtype="<f8")


def load_round_input(session: Session, config: RunCreate, round_row: RoundRow) -> RoundInput:
    table = ClientReportRow.__table__
    rows = session.execute(  # plain rows, not ORM objects: 10,000 of them per round
        select(*table.c)
        .where(table.c.run_id == round_row.run_id, table.c.round == round_row.round)
        .order_by(table.c.client_id)
    ).all()
    data = RoundInput.empty(round_row.round, [r.client_id for r in rows], config)
    for i, row in enumerate(rows):
        data.status[i] = row.status
        special = json.loads(row.nonfinite) if row.nonfinite else {}
        for name in _SCALARS:
            value = getattr(row, name)
            if name in special:
                value = float(special[name])  # "NaN", "Infinity", "-Infinity"
            if value is not None:
                getattr(data, name)[i] = value
        data.nonfinite_update[i] = "update_norm" in special
        data.nonfinite_loss[i] = "train_loss" in special or "eval_loss" in special
        data.clipped[i] = np.nan if row.clipped is None else float(row.clipped)
        if row.update_repeated is not None:
            data.update_repeated[i] = float(row.update_repeated)
        if row.noise_mechanism:
            data.noise_mechanism[i] = row.noise_mechanism
            data.noise_scale[i] = row.noise_scale or 0.0
    _fill_rows(data.sketch, [r.update_sketch for r in rows])
    data.nonfinite_update |= ~np.isfinite(data.sketch).all(axis=1) & np.array(
        [r.update_sketch is not None for r in rows], dtype=bool
    )
    _fill_rows(data.label_hist, [r.label_histogram for r in rows])
    widths = [h.shape[1] for h in data.feature_hists]
    if widths:
        flat = np.full((len(rows), sum(widths)), np.nan)
        _fill_rows(flat, [r.feature_histograms for r in rows])
        for f, block in enumerate(np.split(flat, np.cumsum(widths)[:-1], axis=1)):
            data.feature_hists[f][:] = block
    _attach_close(data, round_row)
    return data


def _attach_close(data: RoundInput, row: RoundRow) -> None:
    special = json.loads(row.nonfinite) if row.nonfinite else {}

    def scalar(name: str) -> float | None:
        if name in special:
            return float(special[name])  # "NaN", "Infinity", "-Infinity"
        return getattr(row, name)

    data.global_eval_loss = scalar("global_eval_loss")
    data.global_eval_accuracy = row.global_eval_accuracy
    data.aggregate_update_norm = scalar("aggregate_update_norm")
    sketch = unpack(row.aggregate_sketch)
    data.aggregate_sketch = None if sketch is None else sketch.copy()
    data.num_sampled = row.num_sampled
    data.epsilon = row.epsilon
