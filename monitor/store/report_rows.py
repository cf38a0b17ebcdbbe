"""Rows of the ``client_report`` table, ready for a bulk insert, with their content digests.

Ingest stores up to thousands of reports per request. Building each row as one
plain tuple (no ORM object, no per-float work: the arrays arrive as numpy
blocks) and inserting the tuples with the driver's ``executemany`` is what keeps
ingest close to the cost of parsing the body and writing the bytes.

The content digest is what makes resends idempotent: the same report sent again
(as JSON, or packed) has the same digest; a different report for the same
client and round is a conflict. It hashes the stored values (scalars as JSON,
arrays as their float64 bytes with NaN made canonical), so it does not
depend on how the body was encoded. Digests are ``"2:"`` and 62 hex digits of a SHA-256; rows written
before that scheme hold the SHA-256 of the report's JSON
(:func:`legacy_digest`), which is recomputed only when such a row must be
compared with a resend.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from monitor.schemas import ClientReport

DIGEST_PREFIX = "2:"
SCALARS = (
    "client_id",
    "status",
    "num_examples",
    "train_loss",
    "train_accuracy",
    "eval_loss",
    "eval_accuracy",
    "local_accuracy",
    "wall_time_seconds",
    "update_norm",
    "update_cosine_previous_global",
    "update_repeated",
    "noise_mechanism",
    "noise_scale",
    "noise_json",
    "clipped",
    "eval_examples",
)
"""The scalar values of a report, in the order :func:`prepare` takes them."""
ARRAYS = ("update_sketch", "label_histogram", "feature_histograms")
MAY_BE_NONFINITE = ("train_loss", "eval_loss", "update_norm", "update_cosine_previous_global")
_EVAL_EXAMPLES = SCALARS.index("eval_examples")
assert len(SCALARS) - 1 == _EVAL_EXAMPLES, "eval_examples is the last scalar (see prepare)"
_NONFINITE_AT = tuple((SCALARS.index(name), name) for name in MAY_BE_NONFINITE)
COLUMNS = (*SCALARS, *ARRAYS, "nonfinite", "content_hash")
"""Columns of a prepared row after ``run_id, round, received_at`` (see :mod:`monitor.store.writes`)."""
NOISE_FIELDS = (
    "mechanism",
    "scale",
    "l2_sensitivity",
    "epsilon",
    "delta",
    "releases_planned",
    "release",
)
"""``histogram_noise``'s fields, in the schema's order (its whole declaration is kept as JSON)."""
_NONFINITE_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True, slots=True)
class PreparedReport:
    client_id: str
    digest: str
    values: tuple
    """Column values in :data:`COLUMNS` order."""
    source: Any
    build: Callable[[Any], ClientReport]
    """``build(source)`` is the report as the pydantic schema, only made when a pre-``2:``
    digest must be compared (one function per batch, not one closure per report)."""

    def model(self) -> ClientReport:
        return self.build(self.source)


def scalar_float(value: float | str | None) -> float | None:
    """A float field that may arrive as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""
    return _NONFINITE_NAMES[value] if type(value) is str else value


def noise_columns(values: tuple | None) -> tuple[str | None, float | None, str | None]:
    """``noise_mechanism``, ``noise_scale``, ``noise_json`` from :data:`NOISE_FIELDS` values."""
    if values is None:
        return None, None, None
    declared = {k: v for k, v in zip(NOISE_FIELDS, values, strict=True) if v is not None}
    return values[0], values[1], json.dumps(declared)


def _name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def canonical(block: np.ndarray) -> np.ndarray:
    """Little-endian float64, C-contiguous, every NaN the same bit pattern (one digest per value)."""
    block = np.ascontiguousarray(block, dtype="<f8")
    nan = np.isnan(block)
    if nan.any():
        block = block.copy()
        block[nan] = np.nan
    return block


def prepare(
    scalars: tuple,
    arrays: tuple[np.ndarray | None, ...],
    source: Any,
    build: Callable[[Any], ClientReport],
) -> PreparedReport:
    """One row from a report's scalars (:data:`SCALARS` order) and canonical float64 arrays."""
    blobs = [None if array is None else array.tobytes() for array in arrays]
    values = list(scalars)
    special: dict[str, str] | None = None
    for index, name in _NONFINITE_AT:
        value = values[index]
        if value is not None and not math.isfinite(value):
            special = special or {}
            special[name] = _name(value)
            values[index] = None
    nonfinite = json.dumps(special, sort_keys=True) if special else None
    # The stored scalars and which of them were non-finite, then the arrays' lengths (the
    # same floats split differently between arrays differ) and bytes.
    # ``eval_examples`` (added later) is hashed only when sent: a resend of a report stored
    # before it existed keeps its digest.
    hashed = values if values[_EVAL_EXAMPLES] is not None else values[:_EVAL_EXAMPLES]
    digest = hashlib.sha256(
        orjson.dumps((hashed, nonfinite, [None if b is None else len(b) for b in blobs]))
    )
    for blob in blobs:
        if blob:
            digest.update(blob)
    text = DIGEST_PREFIX + digest.hexdigest()[:62]
    return PreparedReport(scalars[0], text, (*values, *blobs, nonfinite, text), source, build)


def _block(values: list[float] | list[list[float]] | None) -> np.ndarray | None:
    if values is None:
        return None
    if values and isinstance(values[0], list):
        values = [v for row in values for v in row]
    return canonical(np.asarray(values, dtype=np.float64))


def prepare_model(report: ClientReport) -> PreparedReport:
    """The row of a report validated by the pydantic schema (the slow path: NaN tokens, lax JSON)."""
    noise = report.histogram_noise
    noise_values = None
    if noise is not None:
        noise_values = (noise.mechanism.value, *(getattr(noise, k) for k in NOISE_FIELDS[1:]))
    scalars = (
        report.client_id,
        report.status.value,
        report.num_examples,
        report.train_loss,
        report.train_accuracy,
        report.eval_loss,
        report.eval_accuracy,
        report.local_accuracy,
        report.wall_time_seconds,
        report.update_norm,
        report.update_cosine_previous_global,
        report.update_repeated,
        *noise_columns(noise_values),
        report.clipped,
        report.eval_examples,
    )
    arrays = (
        _block(report.update_sketch),
        _block(report.label_histogram),
        _block(report.feature_histograms),
    )
    return prepare(scalars, arrays, report, _itself)


def _itself(report: ClientReport) -> ClientReport:
    return report


def legacy_digest(report: ClientReport) -> str:
    """The digest rows got before the ``2:`` scheme: SHA-256 of the report's JSON, defaults left out."""
    return hashlib.sha256(report.model_dump_json(exclude_defaults=True).encode()).hexdigest()
