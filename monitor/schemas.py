"""The wire format of API v1: request and response models.

What a client shares is fixed by DESIGN.md ("What a client shares"): summary
statistics, never raw data. Checks that need the run's configuration (histogram
and sketch lengths) live in :func:`validate_report_against_run`, because a
report on its own does not know its run's bins.

Non-finite numbers are refused everywhere except where they are evidence of a
fault: a client's losses, update norm and update sketch (an exploding or broken
update), and the round's global loss and aggregate update. Those are stored as
sent and returned as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
(JSON has no such numbers).
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

T = TypeVar("T")

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
"""Run and client ids: 1-128 characters, letters, digits and ``._:@-``."""

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
NO_NUL_PATTERN = r"^[^\x00]*$"
Text = Annotated[str, StringConstraints(pattern=NO_NUL_PATTERN)]
"""Free text: anything but NUL, which PostgreSQL text columns cannot hold (it would be a 5xx)."""
INT32_MAX = 2**31 - 1
"""Counts are stored in 32-bit columns (PostgreSQL INTEGER): larger values get 422, not a store error."""
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
MAX_CLASSES = 10_000
MAX_FEATURES = 2_000
MAX_BINS = 1_000
MAX_SKETCH_DIM = 4_096


MAX_BIN_COUNT = 1e15
"""Histogram bins are counts (noised counts may be negative). A bin beyond 10^15 examples is not a
count, and bins near the float maximum (8e306) sum to infinity and turn every drift score into NaN,
hiding the drift: such bins get 422 naming the bin. Pooled over 10,000 classes and 10 million
clients the sums stay far below the float maximum."""
MAX_EDGE_ABS = 1e100
"""Bin edges lie within +-10^100, so bin widths, means and variances over them stay finite."""
MAX_WALL_TIME_SECONDS = 1e9
"""About 31 years: a wall time beyond this is not a measurement, and sums over rounds would overflow."""
MAX_NOISE_SCALE = 1e100
"""The declared noise scale is squared into variances; bounded so they stay finite."""

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
"""A float that rejects NaN and infinities (checked in pydantic-core, no Python call per value)."""
NonNegFloat = Annotated[float, Field(allow_inf_nan=False, ge=0)]
Ratio = Annotated[float, Field(allow_inf_nan=False, ge=0, le=1)]
BinCount = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_BIN_COUNT, le=MAX_BIN_COUNT)]
BinEdge = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_EDGE_ABS, le=MAX_EDGE_ABS)]
NON_FINITE_SCHEMA = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}
AnyFloat = Annotated[float, WithJsonSchema({"anyOf": [{"type": "number"}, NON_FINITE_SCHEMA]})]
"""A float that may be NaN or infinite: only for values where that is evidence of a fault.
JSON has no such numbers: they travel as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
(the JSON tokens ``NaN``/``Infinity`` are also read), and the OpenAPI schema says so."""


class WireModel(BaseModel):
    """Base for every request/response: unknown fields are an error, NaN goes out as a string."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


class ClientStatus(StrEnum):
    ok = "ok"
    failed = "failed"
    dropped = "dropped"
    timeout = "timeout"


class NoiseMechanism(StrEnum):
    laplace = "laplace"
    gaussian = "gaussian"


class HistogramNoise(WireModel):
    """Local-DP noise the client added to its histograms (per bin, independent).

    ``mechanism`` and ``scale`` are what the service's drift thresholds and its
    telemetry accounting need (monitor/signals/telemetry_privacy.py); the rest
    says how the client calibrated the noise (docs/privacy.md). The service
    derives the sensitivity from the report itself (``sqrt(2H)`` for ``H``
    histograms), so a declared ``l2_sensitivity`` is informative only.
    """

    mechanism: NoiseMechanism
    scale: Annotated[float, Field(allow_inf_nan=False, ge=0, le=MAX_NOISE_SCALE)] = Field(
        description="Laplace b or Gaussian sigma, in counts"
    )
    l2_sensitivity: NonNegFloat | None = Field(
        default=None, description="The L2 sensitivity the client calibrated with (sqrt(2H))."
    )
    epsilon: Annotated[float, Field(allow_inf_nan=False, gt=0)] | None = Field(
        default=None, description="The client's total telemetry budget for the run."
    )
    delta: Annotated[float, Field(allow_inf_nan=False, gt=0, lt=1)] | None = None
    releases_planned: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Histogram releases the budget is spread over (ceil(planned rounds / k)).",
    )
    release: int | None = Field(
        default=None, ge=1, le=1_000_000_000, description="This report's release, 1-based."
    )


class TelemetryBudget(WireModel):
    """A total privacy budget for a client's histograms over a run (docs/privacy.md).

    Clients (the SDK's and the Flower mod's ``telemetry_budget``) turn it into
    Gaussian noise; a run that declares it lets the service alert when a
    client's telemetry spends more. ``planned_rounds`` is needed by clients
    (the budget is spread over ``ceil(planned_rounds / every_k_rounds)``
    releases); on a run it may be left out.
    """

    epsilon: Annotated[float, Field(allow_inf_nan=False, gt=0)]
    delta: Annotated[float, Field(allow_inf_nan=False, gt=0, lt=1)] = 1e-5
    planned_rounds: int | None = Field(default=None, ge=1, le=1_000_000_000)
    every_k_rounds: int = Field(default=1, ge=1, le=1_000_000)


class TaskSpec(WireModel):
    num_classes: int = Field(ge=1, le=MAX_CLASSES)
    class_names: list[Text] | None = None
    feature_names: list[Text] = Field(default_factory=list, max_length=MAX_FEATURES)

    @model_validator(mode="after")
    def _names_match(self) -> TaskSpec:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but num_classes is {self.num_classes}"
            )
        return self


class DPConfig(WireModel):
    """DP-FedAvg settings: clip norm C, noise multiplier sigma, client sampling rate q."""

    noise_multiplier: NonNegFloat
    clip_norm: Annotated[float, Field(allow_inf_nan=False, gt=0)]
    sample_rate: Annotated[float, Field(allow_inf_nan=False, gt=0, le=1)]
    delta: Annotated[float, Field(allow_inf_nan=False, gt=0, lt=1)] = 1e-5
    target_epsilon: Annotated[float, Field(allow_inf_nan=False, gt=0)] | None = None


class RunCreate(WireModel):
    """Registration of a run. Registering the same run again with the same body is a no-op."""

    run_id: Identifier
    name: Text | None = Field(default=None, max_length=256)
    task: TaskSpec
    feature_bin_edges: list[list[BinEdge]] = Field(
        default_factory=list,
        description="Per feature, strictly increasing bin edges shared by every client.",
    )
    sketch_dim: int = Field(default=0, ge=0, le=MAX_SKETCH_DIM)
    sketch_seed: int = Field(default=0, ge=-(2**63), le=2**63 - 1)
    expected_clients: int = Field(ge=1, le=10_000_000)
    planned_rounds: int | None = Field(
        default=None, ge=1, le=1_000_000_000,
        description="Rounds the run is meant to last; lets alerts tell a stalled run from a finished one.",
    )
    dp: DPConfig | None = None
    telemetry_budget: TelemetryBudget | None = Field(
        default=None,
        description="The budget every client's histograms must stay within (alerts when one spends more).",
    )
    secure_aggregation: bool = Field(
        default=False,
        description=(
            "The server sees updates only in aggregate: clients report update_norm, "
            "update_cosine_previous_global and update_repeated instead of an update_sketch."
        ),
    )
    centralized_accuracy: Ratio | None = None
    thresholds: dict[Text, FiniteFloat] = Field(
        default_factory=dict, description="Per-run overrides of signal thresholds."
    )
    metadata: dict[Text, Text | int | FiniteFloat | bool | None] = Field(default_factory=dict)

    @field_validator("thresholds", "metadata")
    @classmethod
    def _sorted_keys(cls, value: dict) -> dict:
        """Key order carries no meaning; sorting makes identical registrations hash alike."""
        return dict(sorted(value.items()))

    @model_validator(mode="after")
    def _edges_match_features(self) -> RunCreate:
        n_features = len(self.task.feature_names)
        if self.feature_bin_edges and len(self.feature_bin_edges) != n_features:
            raise ValueError(
                f"feature_bin_edges has {len(self.feature_bin_edges)} features "
                f"but task.feature_names has {n_features}"
            )
        for i, edges in enumerate(self.feature_bin_edges):
            if not 2 <= len(edges) <= MAX_BINS + 1:
                raise ValueError(f"feature {i}: needs between 2 and {MAX_BINS + 1} bin edges")
            if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
                raise ValueError(f"feature {i}: bin edges must be strictly increasing")
        return self

    @property
    def bins_per_feature(self) -> list[int]:
        return [len(edges) - 1 for edges in self.feature_bin_edges]


class ClientReport(WireModel):
    """One client's statistics for one round (DESIGN.md, "Per client per round")."""

    client_id: Identifier
    status: ClientStatus = ClientStatus.ok
    num_examples: Count | None = None
    train_loss: AnyFloat | None = None
    train_accuracy: Ratio | None = None
    eval_loss: AnyFloat | None = None
    eval_accuracy: Ratio | None = None
    eval_examples: Count | None = Field(
        default=None,
        description=(
            "Held-out examples behind eval_loss/eval_accuracy (the size of the client's evaluation "
            "set); lets the fairness signal allow for the sampling noise of small sets."
        ),
    )
    local_accuracy: Ratio | None = Field(
        default=None, description="Accuracy of the client's local-only baseline model, if any."
    )
    wall_time_seconds: Annotated[
        float, Field(allow_inf_nan=False, ge=0, le=MAX_WALL_TIME_SECONDS)
    ] | None = None
    update_norm: AnyFloat | None = None
    update_sketch: list[AnyFloat] | None = None
    update_cosine_previous_global: AnyFloat | None = Field(
        default=None,
        description="Client-side (secure aggregation): cosine of the update to the previous global update.",
    )
    update_repeated: bool | None = Field(
        default=None,
        description="Client-side (secure aggregation): the update repeats the client's previous one.",
    )
    label_histogram: list[BinCount] | None = None
    feature_histograms: list[list[BinCount]] | None = None
    histogram_noise: HistogramNoise | None = None
    clipped: bool | None = None

    @model_validator(mode="after")
    def _signs(self) -> ClientReport:
        if self.update_norm is not None and self.update_norm < 0:
            raise ValueError("update_norm must be >= 0 (NaN/Infinity allowed as fault evidence)")
        cos = self.update_cosine_previous_global
        if cos is not None and math.isfinite(cos) and not -1.0 - 1e-9 <= cos <= 1.0 + 1e-9:
            raise ValueError("update_cosine_previous_global must be in [-1, 1] (NaN allowed)")
        if self.histogram_noise is None:
            if self.label_histogram and min(self.label_histogram) < 0:
                raise ValueError("label_histogram has negative counts and no histogram_noise is declared")
            for i, hist in enumerate(self.feature_histograms or []):
                if hist and min(hist) < 0:
                    raise ValueError(
                        f"feature_histograms[{i}] has negative counts and no histogram_noise is declared"
                    )
        return self


class ReportBatch(WireModel):
    reports: list[ClientReport] = Field(min_length=1)


class RoundClose(WireModel):
    """The global statistics of a round, sent once all its reports are in."""

    global_eval_loss: AnyFloat | None = None
    global_eval_accuracy: Ratio | None = None
    aggregate_update_norm: AnyFloat | None = None
    aggregate_sketch: list[AnyFloat] | None = None
    num_sampled: Count | None = None
    epsilon: NonNegFloat | None = Field(
        default=None, description="DP epsilon spent so far, if the FL code accounts it itself."
    )


# ---------------------------------------------------------------------------
# Responses


class RunRegistered(WireModel):
    run_id: str
    created: bool


class IngestResult(WireModel):
    run_id: str
    round: int
    accepted: int = Field(description="Reports stored by this request.")
    duplicates: int = Field(description="Reports already stored with identical content.")


class RoundClosed(WireModel):
    run_id: str
    round: int
    closed: bool
    already_closed: bool
    reports: int


class Page(WireModel, Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int


class RunSummary(WireModel):
    run_id: str
    name: str | None
    created_at: datetime
    expected_clients: int
    rounds: int
    last_round: int | None


class RunHealth(WireModel):
    rounds_closed: int
    rounds_open: int
    last_closed_round: int | None
    clients_seen: int
    reports: int
    last_round_reported: int | None
    last_round_participation_ratio: float | None
    global_eval_accuracy: float | None
    global_eval_loss: AnyFloat | None
    centralized_gap: float | None
    epsilon: float | None
    open_findings: dict[str, int] = Field(description="Open findings by severity.")


class RunDetail(WireModel):
    run_id: str
    created_at: datetime
    config: RunCreate
    health: RunHealth


class RoundOut(WireModel):
    round: int
    status: str
    reports: int
    opened_at: datetime
    closed_at: datetime | None
    global_eval_loss: AnyFloat | None = None
    global_eval_accuracy: float | None = None
    aggregate_update_norm: AnyFloat | None = None
    aggregate_sketch: list[AnyFloat] | None = None
    num_sampled: int | None = None
    epsilon: float | None = None
    analyzed: bool = Field(default=False, description="The signal engine has analysed this closed round.")
    analyzed_at: datetime | None = None
    arrays_compacted: bool = Field(
        default=False,
        description="Client arrays (sketches, histograms) of this round were removed by retention "
        "pruning; scalars, scores and findings remain.",
    )


class AnalysisStatus(WireModel):
    """Where the signal engine stands on a run: analysis runs after the close returns."""

    run_id: str
    rounds_closed: int
    rounds_analyzed: int
    last_analyzed_round: int | None
    lag_rounds: int = Field(description="Closed rounds not yet analysed.")
    pending_rounds: list[int] = Field(description="The first (up to 100) closed, unanalysed rounds.")
    oldest_pending_closed_at: datetime | None


class ClientLatest(WireModel):
    client_id: str
    first_round: int
    last_round: int
    rounds_reported: int
    status: ClientStatus
    eval_accuracy: float | None
    eval_loss: AnyFloat | None
    update_norm: AnyFloat | None
    num_examples: int | None


class ClientRoundOut(ClientReport):
    """A stored client report, with its round."""

    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="strings")
    round: int
    received_at: datetime
    arrays_compacted: bool = Field(
        default=False,
        description="This round's arrays were removed by retention pruning (FEDSENTINEL_RETENTION_ROUNDS): "
        "update_sketch, label_histogram and feature_histograms are null because they were compacted, "
        "not because the client did not send them.",
    )


class FindingOut(WireModel):
    id: int
    run_id: str
    kind: str
    severity: str
    status: str
    client_id: str | None
    first_round: int
    last_round: int
    score: AnyFloat | None
    threshold: float | None
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class FieldError(WireModel):
    """One offending field of a refused request."""

    loc: list[str | int] = Field(description="Where: ['body', 'reports', 0, 'label_histogram', 3].")
    msg: str
    type: str
    input: Any = Field(default=None, description="The refused value, when it is short.")


class ErrorOut(WireModel):
    """The body of every 4xx and 5xx answer (monitor/api/errors.py)."""

    detail: str = Field(description="What is wrong, in one sentence.")
    errors: list[FieldError] = Field(
        default_factory=list, description="The offending fields (422), first 50; empty otherwise."
    )


def validate_report_against_run(report: ClientReport, run: RunCreate) -> None:
    """Raise ValueError when a report's arrays do not fit its run's configuration."""
    cid = report.client_id
    if report.label_histogram is not None and len(report.label_histogram) != run.task.num_classes:
        raise ValueError(
            f"client {cid}: label_histogram has {len(report.label_histogram)} bins, "
            f"run {run.run_id} has {run.task.num_classes} classes"
        )
    if report.feature_histograms is not None:
        bins = run.bins_per_feature
        if len(report.feature_histograms) != len(bins):
            raise ValueError(
                f"client {cid}: feature_histograms has {len(report.feature_histograms)} features, "
                f"run {run.run_id} has {len(bins)}"
            )
        for i, (hist, n_bins) in enumerate(zip(report.feature_histograms, bins, strict=True)):
            if len(hist) != n_bins:
                raise ValueError(
                    f"client {cid}: feature_histograms[{i}] has {len(hist)} bins, "
                    f"run {run.run_id} has {n_bins} for feature {run.task.feature_names[i]!r}"
                )
    if report.update_sketch is not None and len(report.update_sketch) != run.sketch_dim:
        raise ValueError(
            f"client {cid}: update_sketch has {len(report.update_sketch)} values, "
            f"run {run.run_id} has sketch_dim {run.sketch_dim}"
        )


def validate_round_close_against_run(body: RoundClose, run: RunCreate) -> None:
    if body.aggregate_sketch is not None and len(body.aggregate_sketch) != run.sketch_dim:
        raise ValueError(
            f"aggregate_sketch has {len(body.aggregate_sketch)} values, "
            f"run {run.run_id} has sketch_dim {run.sketch_dim}"
        )
