"""SQLModel tables.

Arrays (histograms, sketches) are stored as little-endian float64 blobs: exact
round trip, NaN/Infinity kept, a tenth of the size of JSON text. Scalars that
may be non-finite (losses, update norms) are stored as NULL plus an entry in
the row's ``nonfinite`` JSON map, because SQLite turns a stored NaN into NULL.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunRow(SQLModel, table=True):
    __tablename__ = "run"

    run_id: str = Field(primary_key=True, max_length=128)
    name: str | None = Field(default=None, max_length=256)
    created_at: datetime = Field(default_factory=utcnow)
    config_json: str
    config_hash: str = Field(max_length=64)
    expected_clients: int
    planned_rounds: int | None = None


class RoundRow(SQLModel, table=True):
    __tablename__ = "round"

    run_id: str = Field(primary_key=True, foreign_key="run.run_id", max_length=128)
    round: int = Field(primary_key=True)
    status: str = Field(default="open", max_length=16)
    opened_at: datetime = Field(default_factory=utcnow)
    closed_at: datetime | None = None
    reports: int = 0
    close_hash: str | None = Field(default=None, max_length=64)
    global_eval_loss: float | None = None
    global_eval_accuracy: float | None = None
    aggregate_update_norm: float | None = None
    aggregate_sketch: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    num_sampled: int | None = None
    epsilon: float | None = None
    nonfinite: str | None = None
    analyzed: bool = False
    analyzed_at: datetime | None = None
    arrays_compacted: bool = Field(
        default=False,
        description="The round's client arrays (sketches, histograms) were dropped by pruning "
        "(monitor/store/prune.py); scalars, scores and findings remain.",
    )


class ClientReportRow(SQLModel, table=True):
    __tablename__ = "client_report"
    __table_args__ = (
        UniqueConstraint("run_id", "round", "client_id", name="uq_report_run_round_client"),
        Index("ix_report_run_client_round", "run_id", "client_id", "round"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=128)
    round: int
    client_id: str = Field(max_length=128)
    received_at: datetime = Field(default_factory=utcnow)
    content_hash: str = Field(max_length=64)
    status: str = Field(max_length=16)
    num_examples: int | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    local_accuracy: float | None = None
    wall_time_seconds: float | None = None
    update_norm: float | None = None
    update_sketch: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    update_cosine_previous_global: float | None = None
    update_repeated: bool | None = None
    label_histogram: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    feature_histograms: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    noise_mechanism: str | None = Field(default=None, max_length=16)
    noise_scale: float | None = None
    noise_json: str | None = None
    """The whole ``histogram_noise`` declaration (calibration parameters included), as sent."""
    clipped: bool | None = None
    eval_examples: int | None = None
    nonfinite: str | None = None


class FindingRow(SQLModel, table=True):
    __tablename__ = "finding"
    __table_args__ = (Index("ix_finding_run_status", "run_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.run_id", max_length=128, index=True)
    kind: str = Field(max_length=64)
    severity: str = Field(max_length=16)
    status: str = Field(default="open", max_length=16)
    client_id: str | None = Field(default=None, max_length=128)
    first_round: int
    last_round: int
    resolved_round: int | None = None
    score: float | None = None
    threshold: float | None = None
    message: str
    details_json: str = "{}"
    opened_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class DetectorStateRow(SQLModel, table=True):
    """The signal engine's memory of a run between rounds (see monitor/detectors/state.py).

    Kept in the store, not in a worker's memory, and locked while a round is
    analysed, so that any number of workers produce the findings one would.
    """

    __tablename__ = "detector_state"

    run_id: str = Field(primary_key=True, foreign_key="run.run_id", max_length=128)
    last_round: int = -1
    state: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    updated_at: datetime = Field(default_factory=utcnow)


class RoundScoresRow(SQLModel, table=True):
    """Per-client and federation scores of one analysed round.

    Client scores are a float64 matrix (clients x score names), row-major, so a
    10,000-client round is one row, not 150,000.
    """

    __tablename__ = "round_scores"

    run_id: str = Field(primary_key=True, foreign_key="run.run_id", max_length=128)
    round: int = Field(primary_key=True)
    client_ids_json: str
    score_names_json: str
    client_scores: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    round_scores_json: str
    computed_seconds: float
    created_at: datetime = Field(default_factory=utcnow)


class AlertNotificationRow(SQLModel, table=True):
    """One alert of one Alertmanager webhook notification (monitor/api/alerts.py).

    A notification repeats an alert while it fires and once more when it
    resolves; each is kept, so the table is the alert's delivery history.
    ``run_id``/``client_id``/``alertname`` are copied out of the labels for
    filtering; the labels and annotations are kept whole as JSON.
    """

    __tablename__ = "alert_notification"
    __table_args__ = (
        Index("ix_alert_run_name", "run_id", "alertname"),
        Index("ix_alert_fingerprint", "fingerprint"),
    )

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow)
    receiver: str = Field(max_length=256)
    group_key: str | None = Field(default=None, max_length=1024)
    status: str = Field(max_length=16)
    alertname: str | None = Field(default=None, max_length=256)
    severity: str | None = Field(default=None, max_length=32)
    run_id: str | None = Field(default=None, max_length=128)
    client_id: str | None = Field(default=None, max_length=128)
    fingerprint: str | None = Field(default=None, max_length=64)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    generator_url: str | None = Field(default=None, max_length=2048)
    labels_json: str = "{}"
    annotations_json: str = "{}"
