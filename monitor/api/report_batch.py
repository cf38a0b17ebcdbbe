"""A batch of client reports decoded fast, from JSON or from the packed encoding.

Ingest is dominated by the arrays (a sketch and histograms: hundreds of floats
per report). Two wire forms, chosen by ``Content-Type``:

- ``application/json`` (the default): the :class:`~monitor.schemas.ReportBatch`
  schema. It is decoded by msgspec into plain structs whose constraints mirror
  the schema, and the arrays of the whole batch are stacked into numpy blocks
  and checked at once (lengths against the run, signs), so nothing is validated
  one float at a time in Python. Anything the fast path does not take (NaN
  tokens, lax types such as ``"1.5"``, any error) goes through the pydantic
  schema as before: same acceptance, same error messages.
- ``application/vnd.fedsentinel.packed+json`` (:data:`PACKED_MEDIA_TYPE`): the
  same object, but each array is ``{"dtype": "<f4" | "<f8", "data": base64}``
  of little-endian floats (``feature_histograms``: every feature's bins one
  after another), and a loss or update norm may be the string ``"NaN"``,
  ``"Infinity"`` or ``"-Infinity"``. The arrays never become Python floats:
  the bytes go straight into numpy.

Both give :class:`~monitor.store.report_rows.PreparedReport` rows, whose digest
depends on the values only, so a report resent in the other encoding is still
recognised as identical.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

import msgspec
import numpy as np
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from msgspec import Meta, Struct

from monitor.api.body import COMPONENTS_KEY, body_schema, validate_json
from monitor.schemas import (
    ID_PATTERN,
    INT32_MAX,
    MAX_BIN_COUNT,
    MAX_NOISE_SCALE,
    MAX_WALL_TIME_SECONDS,
    ClientReport,
    ReportBatch,
    RunCreate,
    validate_report_against_run,
)
from monitor.store.report_rows import (
    SCALARS,
    PreparedReport,
    canonical,
    noise_columns,
    prepare,
    prepare_model,
    scalar_float,
)

PACKED_MEDIA_TYPE = "application/vnd.fedsentinel.packed+json"
Id = Annotated[
    str, Meta(pattern=ID_PATTERN.removesuffix("$") + r"\Z")
]  # re.search: "$" would take "a\n"
Count = Annotated[int, Meta(ge=0, le=INT32_MAX)]
Ratio = Annotated[float, Meta(ge=0, le=1)]
NonNeg = Annotated[float, Meta(ge=0)]
NonFinite = Literal["NaN", "Infinity", "-Infinity"]
Status = Literal["ok", "failed", "dropped", "timeout"]


Positive = Annotated[float, Meta(gt=0)]
Releases = Annotated[int, Meta(ge=1, le=1_000_000_000)]
COSINE_SLACK = 1e-9


class Noise(Struct, forbid_unknown_fields=True):
    """Local-DP noise the client added to its histograms (``HistogramNoise`` in application/json)."""

    mechanism: Literal["laplace", "gaussian"]
    scale: Annotated[float, Meta(ge=0, le=MAX_NOISE_SCALE)]
    l2_sensitivity: NonNeg | None = None
    epsilon: Positive | None = None
    delta: Annotated[float, Meta(gt=0, lt=1)] | None = None
    releases_planned: Releases | None = None
    release: Releases | None = None


class _Scalars(Struct, forbid_unknown_fields=True):
    client_id: Id
    status: Status = "ok"
    num_examples: Count | None = None
    train_accuracy: Ratio | None = None
    eval_accuracy: Ratio | None = None
    local_accuracy: Ratio | None = None
    wall_time_seconds: Annotated[float, Meta(ge=0, le=MAX_WALL_TIME_SECONDS)] | None = None
    histogram_noise: Noise | None = None
    clipped: bool | None = None
    update_repeated: bool | None = None
    eval_examples: Count | None = None


class JsonReport(_Scalars, forbid_unknown_fields=True):
    train_loss: float | None = None
    eval_loss: float | None = None
    update_norm: NonNeg | None = None
    update_cosine_previous_global: float | None = None
    update_sketch: list[float] | None = None
    label_histogram: list[float] | None = None
    feature_histograms: list[list[float]] | None = None


class JsonBatch(Struct, forbid_unknown_fields=True):
    reports: Annotated[list[JsonReport], Meta(min_length=1)]


class PackedArray(Struct, forbid_unknown_fields=True):
    """Little-endian floats, base64 (RFC 4648, with padding)."""

    dtype: Annotated[Literal["<f4", "<f8"], Meta(description="float32 or float64, little-endian")]
    data: bytes


class PackedReport(_Scalars, forbid_unknown_fields=True):
    """A client report whose arrays are packed; see ``ClientReport`` in application/json for the fields."""

    train_loss: float | NonFinite | None = None
    eval_loss: float | NonFinite | None = None
    update_norm: NonNeg | Literal["NaN", "Infinity"] | None = None
    update_cosine_previous_global: float | NonFinite | None = None
    update_sketch: PackedArray | None = None
    label_histogram: PackedArray | None = None
    feature_histograms: Annotated[
        PackedArray | None,
        Meta(description="Every feature's bins one after another, in feature order."),
    ] = None


class PackedBatch(Struct, forbid_unknown_fields=True):
    reports: Annotated[list[PackedReport], Meta(min_length=1)]


_JSON = msgspec.json.Decoder(JsonBatch)
_PACKED = msgspec.json.Decoder(PackedBatch)
_ERROR_AT = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


class DecodedBatch(Protocol):
    count: int

    def prepare(self, run: RunCreate) -> list[PreparedReport]:
        """Check against the run; raise ValueError (422) or RequestValidationError."""
        ...


class _Mismatch(Exception):
    """The fast path cannot take this batch; the schema path decides (and names the problem)."""


class LegacyBatch:
    """Reports validated by the pydantic schema: NaN tokens, lax JSON, every error message."""

    def __init__(self, raw: bytes) -> None:
        self.reports: list[ClientReport] = validate_json(ReportBatch, raw).reports
        self.count = len(self.reports)

    def prepare(self, run: RunCreate) -> list[PreparedReport]:
        for report in self.reports:
            validate_report_against_run(report, run)
        return [prepare_model(report) for report in self.reports]


@dataclass(frozen=True, slots=True)
class Column:
    """One array field of a batch: the reports that carry it, stacked as one float64 block."""

    block: np.ndarray
    present: list[int]
    rows: list[np.ndarray | None]
    """Per report: its row of ``block`` (a view), or None."""

    @classmethod
    def of(cls, block: np.ndarray, present: list[int], n: int) -> Column:
        block = canonical(block)
        rows: list[np.ndarray | None] = [None] * n
        for k, i in enumerate(present):
            rows[i] = block[k]
        return cls(block, present, rows)

    def first(self, bad: np.ndarray) -> int | None:
        """The first report whose row is flagged in the ``(rows, values)`` mask ``bad``."""
        hit = np.flatnonzero(bad.any(axis=1)) if bad.size else ()
        return self.present[hit[0]] if len(hit) else None

    def negative(self, noised: np.ndarray) -> int | None:
        """The first report with a negative count that declares no histogram noise."""
        if not self.present:
            return None
        return self.first((self.block < 0) & ~noised[self.present][:, None])

    def nonfinite(self) -> int | None:
        return self.first(~np.isfinite(self.block)) if self.present else None

    def beyond(self, bound: float) -> int | None:
        """The first report with a value beyond +-``bound`` (bins that would overflow sums)."""
        return self.first(np.abs(self.block) > bound) if self.present else None


def _stack(values: Sequence[Any], bins: Sequence[int], nested: bool) -> Column:
    """Stack the arrays that are present (``nested``: lists of rows of lengths ``bins``, as
    feature histograms; else one row of ``bins[0]`` values). Another length raises
    :class:`_Mismatch`."""
    present = [i for i, v in enumerate(values) if v is not None]
    lengths = list(bins)
    width = sum(lengths)
    if not present:
        return Column.of(np.empty((0, width)), present, len(values))
    if not nested or len(set(lengths)) == 1:
        # Rectangular: numpy walks the lists in C and refuses ragged ones.
        shape = (len(present), len(lengths), lengths[0]) if nested else (len(present), width)
        try:
            block = np.array([values[i] for i in present], dtype=np.float64)
        except ValueError:
            raise _Mismatch from None
        if block.shape != shape:
            raise _Mismatch
        return Column.of(block.reshape(len(present), width), present, len(values))
    flat: list[float] = []
    for i in present:
        if list(map(len, values[i])) != lengths:
            raise _Mismatch
        for row in values[i]:
            flat += row
    block = np.fromiter(flat, np.float64, len(flat)).reshape(len(present), width)
    return Column.of(block, present, len(values))


_ANY_FLOAT = ("train_loss", "eval_loss", "update_norm", "update_cosine_previous_global")


def _scalar_picker(struct: type[_Scalars]) -> Callable[[_Scalars], tuple]:
    """A function giving a report's values in :data:`~monitor.store.report_rows.SCALARS` order.

    ``astuple`` and ``itemgetter`` run in C; only the noise declaration and the
    floats that may arrive as ``"NaN"`` strings take Python steps.
    """
    fields = struct.__struct_fields__
    before = operator.itemgetter(*(fields.index(k) for k in SCALARS[:12]))
    clipped = fields.index("clipped")
    examples = fields.index("eval_examples")
    noise_at = fields.index("histogram_noise")
    floats = [SCALARS.index(k) for k in _ANY_FLOAT]

    def pick(r: _Scalars) -> tuple:
        values = msgspec.structs.astuple(r)
        head = list(before(values))
        for i in floats:
            if type(head[i]) is str:
                head[i] = scalar_float(head[i])
        noise = values[noise_at]
        noise_values = None if noise is None else msgspec.structs.astuple(noise)
        return (*head, *noise_columns(noise_values), values[clipped], values[examples])

    return pick


def _cosine_out_of_range(reports: Sequence[Any]) -> int | None:
    """The first report whose finite cosine lies outside [-1, 1] (the schema's rule)."""
    for i, r in enumerate(reports):
        cos = scalar_float(r.update_cosine_previous_global)
        if (
            cos is not None
            and math.isfinite(cos)
            and not -1.0 - COSINE_SLACK <= cos <= 1.0 + COSINE_SLACK
        ):
            return i
    return None


def _model(source: tuple[_Scalars, tuple[np.ndarray | None, ...], Sequence[int]]) -> ClientReport:
    """A fast-path report as the pydantic schema (only for comparing with a pre-upgrade digest)."""
    r, (sketch, labels, features), bins = source
    body = msgspec.to_builtins(r)
    body["update_sketch"] = None if sketch is None else sketch.tolist()
    body["label_histogram"] = None if labels is None else labels.tolist()
    if features is not None:
        body["feature_histograms"] = [f.tolist() for f in np.split(features, np.cumsum(bins)[:-1])]
    return ClientReport.model_validate({k: v for k, v in body.items() if v is not None})


class JsonFastBatch:
    """Decoded by msgspec; :meth:`prepare` hands over to :class:`LegacyBatch` on any doubt."""

    def __init__(self, raw: bytes, batch: JsonBatch) -> None:
        self.raw = raw
        self.reports = batch.reports
        self.count = len(batch.reports)

    def prepare(self, run: RunCreate) -> list[PreparedReport]:
        try:
            return self._prepare(run)
        except _Mismatch:
            return LegacyBatch(self.raw).prepare(run)

    def _prepare(self, run: RunCreate) -> list[PreparedReport]:
        rs = self.reports
        bins = run.bins_per_feature
        sketch = _stack([r.update_sketch for r in rs], [run.sketch_dim], nested=False)
        labels = _stack([r.label_histogram for r in rs], [run.task.num_classes], nested=False)
        features = _stack([r.feature_histograms for r in rs], bins, nested=True)
        noised = np.array([r.histogram_noise is not None for r in rs])
        if labels.negative(noised) is not None or features.negative(noised) is not None:
            raise _Mismatch
        if labels.beyond(MAX_BIN_COUNT) is not None or features.beyond(MAX_BIN_COUNT) is not None:
            raise _Mismatch  # the schema path names the bin
        if _cosine_out_of_range(rs) is not None:
            raise _Mismatch
        return _prepared(rs, (sketch, labels, features), bins)


def _invalid(loc: tuple, msg: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", *loc), "msg": msg, "type": kind}])


def _from_msgspec(exc: msgspec.MsgspecError) -> RequestValidationError:
    """msgspec's "Expected `int` >= 0 - at `$.reports[0].num_examples`" as a located 422 error."""
    match = _ERROR_AT.match(str(exc))
    msg, path = (match.group(1), match.group(2) or "") if match else (str(exc), "")
    loc = tuple(int(index) if index else name for name, index in _PATH_PART.findall(path))
    if not isinstance(exc, msgspec.ValidationError):
        return _invalid(loc, f"Invalid JSON: {msg}", "json_invalid")
    return _invalid(loc, msg)


class PackedFastBatch:
    """The packed encoding: arrays are bytes; every check is vectorised or per report, never per float."""

    def __init__(self, batch: PackedBatch) -> None:
        self.reports = batch.reports
        self.count = len(batch.reports)

    def _column(self, field: str, width: int, describe: Callable[[str, int], str]) -> Column:
        arrays: list[PackedArray | None] = [getattr(r, field) for r in self.reports]
        present = [i for i, a in enumerate(arrays) if a is not None]
        sizes = [len(arrays[i].data) * (2 if arrays[i].dtype == "<f4" else 1) for i in present]
        if sizes.count(8 * width) != len(sizes):  # some array is not `width` floats: say which
            for i in present:
                packed = arrays[i]
                itemsize = 4 if packed.dtype == "<f4" else 8
                if len(packed.data) % itemsize:
                    raise _invalid(
                        ("reports", i, field, "data"),
                        f"{len(packed.data)} bytes are not a whole number of {itemsize}-byte "
                        f"{packed.dtype} values",
                    )
                if len(packed.data) // itemsize != width:
                    raise ValueError(
                        describe(self.reports[i].client_id, len(packed.data) // itemsize)
                    )
        dtypes = {arrays[i].dtype for i in present}
        if not present:
            block = np.empty((0, width))
        elif len(dtypes) == 1:
            joined = b"".join(arrays[i].data for i in present)
            block = np.frombuffer(joined, dtype=dtypes.pop()).reshape(len(present), width)
        else:
            block = np.stack(
                [np.frombuffer(arrays[i].data, dtype=arrays[i].dtype) for i in present]
            )
        return Column.of(block.reshape(len(present), width), present, len(arrays))

    @staticmethod
    def _check_counts(field: str, column: Column, noised: np.ndarray) -> None:
        bad = column.nonfinite()
        if bad is not None:
            raise _invalid(
                ("reports", bad, field), "Input should be finite numbers only", "finite_number"
            )
        bad = column.negative(noised)
        if bad is not None:
            raise _invalid(
                ("reports", bad),
                f"Value error, {field} has negative counts and no histogram_noise is declared",
            )
        bad = column.beyond(MAX_BIN_COUNT)
        if bad is not None:  # finite bins whose sum overflows would make every drift score NaN
            raise _invalid(
                ("reports", bad, field),
                f"Input should be between {-MAX_BIN_COUNT:g} and {MAX_BIN_COUNT:g} "
                "(histogram bins are counts)",
                "less_than_equal",
            )

    def prepare(self, run: RunCreate) -> list[PreparedReport]:
        rid, bins = run.run_id, run.bins_per_feature
        sketch = self._column(
            "update_sketch",
            run.sketch_dim,
            lambda c, n: (
                f"client {c}: update_sketch has {n} values, run {rid} has sketch_dim {run.sketch_dim}"
            ),
        )
        labels = self._column(
            "label_histogram",
            run.task.num_classes,
            lambda c, n: (
                f"client {c}: label_histogram has {n} bins, run {rid} has {run.task.num_classes} classes"
            ),
        )
        features = self._column(
            "feature_histograms",
            sum(bins),
            lambda c, n: (
                f"client {c}: feature_histograms has {n} values, run {rid} has {sum(bins)} "
                f"({len(bins)} features of {', '.join(map(str, bins)) or 'no'} bins)"
            ),
        )
        noised = np.array([r.histogram_noise is not None for r in self.reports])
        self._check_counts("label_histogram", labels, noised)
        self._check_counts("feature_histograms", features, noised)
        bad = _cosine_out_of_range(self.reports)
        if bad is not None:
            raise _invalid(
                ("reports", bad),
                "Value error, update_cosine_previous_global must be in [-1, 1] (NaN allowed)",
            )
        return _prepared(self.reports, (sketch, labels, features), bins)


_PICKERS: dict[type, Callable[[_Scalars], tuple]] = {}


def _prepared(
    reports: Sequence[_Scalars], columns: tuple[Column, ...], bins: Sequence[int]
) -> list[PreparedReport]:
    sketch, labels, features = (c.rows for c in columns)
    if not reports:
        return []
    kind = type(reports[0])
    pick = _PICKERS.get(kind) or _PICKERS.setdefault(kind, _scalar_picker(kind))
    rows = []
    for r, arrays in zip(reports, zip(sketch, labels, features, strict=True), strict=True):
        rows.append(prepare(pick(r), arrays, (r, arrays, bins), _model))
    return rows


def decode_json(raw: bytes) -> DecodedBatch:
    try:
        return JsonFastBatch(raw, _JSON.decode(raw))
    except msgspec.MsgspecError:
        return LegacyBatch(raw)


def decode_packed(raw: bytes) -> DecodedBatch:
    try:
        return PackedFastBatch(_PACKED.decode(raw))
    except msgspec.MsgspecError as exc:
        raise _from_msgspec(exc) from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def report_batch(request: Request) -> DecodedBatch:
    """The request's reports, decoded by its Content-Type (JSON unless the packed type is named)."""
    raw = await request.body()
    decode = decode_packed if media_type(request) == PACKED_MEDIA_TYPE else decode_json
    return await run_in_threadpool(decode, raw)  # megabytes: not on the event loop


def report_body_schema() -> dict[str, Any]:
    """``openapi_extra`` documenting both encodings of the reports body.

    Both refer to ``#/components/schemas/...``; the definitions travel under
    :data:`~monitor.api.body.COMPONENTS_KEY` to the document builder
    (:mod:`monitor.api.openapi`), so every ``$ref`` resolves from the root.
    """
    extra = body_schema(ReportBatch)
    (packed,), components = msgspec.json.schema_components(
        [PackedBatch], ref_template="#/components/schemas/{name}"
    )
    extra["requestBody"]["content"][PACKED_MEDIA_TYPE] = {"schema": packed}
    extra[COMPONENTS_KEY].update(components)
    return extra
