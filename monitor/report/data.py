"""A run report's data, assembled from the store: plain JSON-able dicts, no HTML.

Everything here reads what the service already keeps (runs, rounds, client
reports, per-round scores, findings) through the store's queries; nothing is
recomputed but per-round summaries of stored values (participation counts,
the fairness band). ``monitor/report/render.py`` turns the result into HTML.
Non-finite numbers become ``None`` (JSON has no NaN; the charts show a gap).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlmodel import Session

from monitor import __version__
from monitor.detectors import Thresholds
from monitor.schemas import ClientRoundOut, FindingOut, RunCreate
from monitor.signals import fairness
from monitor.store import queries
from monitor.store.scores import RoundScores, iter_round_scores
from monitor.store.tables import ClientReportRow

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
_ALL = 1_000_000_000  # "every row" for the paged store queries


@dataclass(frozen=True)
class ReportLimits:
    """Caps that keep a 1,000-client x 200-round report a few MB (README: measured size)."""

    map_clients: int = 100
    client_sections: int = 20


def num(value: float | None, digits: int = 4) -> float | None:
    """A finite float rounded for the page, or None."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def build_report_data(
    session: Session, run_id: str, limits: ReportLimits | None = None
) -> dict[str, Any]:
    """All sections of the report of ``run_id`` (raises ``NotFound`` for an unknown run)."""
    limits = limits or ReportLimits()
    detail = queries.run_detail(session, run_id)
    config = detail.config
    rounds, _ = queries.list_rounds(session, run_id, 0, _ALL)
    findings, _ = queries.list_findings(session, run_id, limit=_ALL)
    flagged = _flagged_clients(findings)
    scan = _scan_scores(session, run_id, set(flagged))
    sections = _client_order(flagged, findings, scan.anomaly_max)[: limits.client_sections]
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "version": __version__,
        "run": {
            "run_id": detail.run_id,
            "name": config.name,
            "created_at": detail.created_at.isoformat(timespec="seconds"),
            "expected_clients": config.expected_clients,
            "planned_rounds": config.planned_rounds,
            "num_classes": config.task.num_classes,
            "features": len(config.task.feature_names),
            "dp": None if config.dp is None else config.dp.model_dump(),
            "centralized_accuracy": config.centralized_accuracy,
        },
        "health": detail.health.model_dump(mode="json"),
        "findings": [_finding(f) for f in _most_severe_first(findings)],
        "global": _global(rounds, config),
        "participation": _participation(session, run_id, rounds, config, scan),
        "fairness": _fairness_band(session, run_id, rounds, scan),
        "drift_map": _drift_map(scan, limits.map_clients),
        "divergence": _divergence(scan.latest, findings),
        "privacy": _privacy(rounds, scan, config),
        "clients": [_client_section(session, run_id, c, findings, scan, config) for c in sections],
        "clients_flagged": len(flagged),
    }


def _most_severe_first(findings: list[FindingOut]) -> list[FindingOut]:
    """Open before resolved, then critical > warning > info, then the earliest."""
    return sorted(
        findings,
        key=lambda f: (f.status != "open", SEVERITY_RANK.get(f.severity, 9), f.first_round, f.id),
    )


def _finding(f: FindingOut) -> dict[str, Any]:
    return {
        "id": f.id,
        "kind": f.kind,
        "severity": f.severity,
        "status": f.status,
        "client_id": f.client_id,
        "first_round": f.first_round,
        "last_round": f.last_round,
        "score": num(f.score),
        "threshold": num(f.threshold),
        "message": f.message,
    }


def _flagged_clients(findings: list[FindingOut]) -> list[str]:
    return sorted({f.client_id for f in findings if f.client_id is not None})


def _client_order(
    flagged: list[str], findings: list[FindingOut], anomaly: dict[str, float]
) -> list[str]:
    """Clients with an open critical finding first, then by their highest anomaly score."""
    worst: dict[str, int] = {}
    for f in findings:
        if f.client_id is not None:
            rank = SEVERITY_RANK.get(f.severity, 9) + (0 if f.status == "open" else 3)
            worst[f.client_id] = min(worst.get(f.client_id, 99), rank)
    return sorted(flagged, key=lambda c: (worst.get(c, 99), -anomaly.get(c, 0.0), c))


# -- scores -----------------------------------------------------------------------


@dataclass
class ScoreScan:
    """What one pass over a run's per-round scores keeps (arrays: 1,000 clients x 200 rounds is cheap)."""

    rounds: list[int] = field(default_factory=list)
    clients: dict[str, int] = field(default_factory=dict)
    """Client id -> its index in ``anomaly_peak`` (order of first appearance)."""
    anomaly_peak: np.ndarray = field(default_factory=lambda: np.zeros(0))
    drift: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    """Per round: the clients' indices and their drift ratios."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)
    round_series: dict[str, list[tuple[int, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    latest: RoundScores | None = None

    @property
    def anomaly_max(self) -> dict[str, float]:
        return {c: float(self.anomaly_peak[i]) for c, i in self.clients.items()}


CLIENT_SERIES = ("label_drift_ratio", "feature_drift_ratio", "label_drift_js_reference",
                 "feature_drift_psi_max", "anomaly_score")  # fmt: skip
ROUND_SERIES = ("epsilon_spent", "reports_ok", "reports_failed", "reports_dropped", "reports_timeout",
                "accuracy_mean", "accuracy_worst10_mean", "accuracy_min")  # fmt: skip


def _drift_ratio(scores: RoundScores) -> np.ndarray:
    """The larger of label and feature drift over their thresholds (>= 1 is drift), like Grafana's map."""
    n = len(scores.client_ids)
    label = np.asarray(scores.client_scores.get("label_drift_ratio", np.full(n, np.nan)))
    feature = np.asarray(scores.client_scores.get("feature_drift_ratio", np.full(n, np.nan)))
    return np.fmax(label, feature)


def _scan_scores(session: Session, run_id: str, flagged: set[str]) -> ScoreScan:
    scan = ScoreScan(series={c: defaultdict(list) for c in flagged})
    for scores in iter_round_scores(session, run_id):
        scan.rounds.append(scores.round)
        scan.latest = scores
        idx = np.fromiter(
            (scan.clients.setdefault(c, len(scan.clients)) for c in scores.client_ids),
            dtype=np.int64,
            count=len(scores.client_ids),
        )
        if len(scan.clients) > scan.anomaly_peak.size:
            grown = np.zeros(len(scan.clients))
            grown[: scan.anomaly_peak.size] = scan.anomaly_peak
            scan.anomaly_peak = grown
        anomaly = np.nan_to_num(
            scores.client_scores.get("anomaly_score", np.zeros(idx.size)), nan=0.0
        )
        scan.anomaly_peak[idx] = np.maximum(
            scan.anomaly_peak[idx], anomaly
        )  # ids are unique per round
        scan.drift.append((idx, _drift_ratio(scores).astype(np.float32)))
        for i, client in enumerate(scores.client_ids):
            if client in flagged:
                for name in CLIENT_SERIES:
                    if name in scores.client_scores:
                        value = float(scores.client_scores[name][i])
                        scan.series[client][name].append((scores.round, value))
        for name in ROUND_SERIES:
            if name in scores.round_scores:
                scan.round_series[name].append((scores.round, float(scores.round_scores[name])))
    return scan


def _drift_map(scan: ScoreScan, cap: int) -> dict[str, Any]:
    """Clients x rounds of the drift ratio, the highest anomaly score first, at most ``cap`` rows."""
    names = list(scan.clients)
    order = sorted(range(len(names)), key=lambda i: (-scan.anomaly_peak[i], names[i]))[:cap]
    row_of = np.full(len(names), -1)
    row_of[order] = np.arange(len(order))
    z = np.full((len(order), len(scan.rounds)), np.nan)
    for j, (idx, ratio) in enumerate(scan.drift):
        rows = row_of[idx]
        shown = rows >= 0
        z[rows[shown], j] = ratio[shown]
    return {
        "rounds": scan.rounds,
        "clients": [names[i] for i in order],
        "z": [[num(v, 3) for v in row] for row in z.tolist()],
        "anomaly_max": [
            num(scan.anomaly_peak[i], 3) if math.isfinite(scan.anomaly_peak[i]) else "non-finite"
            for i in order
        ],
        "clients_total": len(names),
        "clients_left_out": max(0, len(names) - len(order)),
    }


def _divergence(latest: RoundScores | None, findings: list[FindingOut]) -> dict[str, Any] | None:
    """Cosine to the aggregate against the norm ratio to the round median, in the latest analysed round."""
    if latest is None:
        return None
    n = len(latest.client_ids)
    cosine = latest.client_scores.get("update_cosine", np.full(n, np.nan))
    ratio = latest.client_scores.get("update_norm_ratio", np.full(n, np.nan))
    open_at: dict[str, list[str]] = defaultdict(list)
    for f in findings:
        if f.client_id is not None and f.first_round <= latest.round <= f.last_round:
            open_at[f.client_id].append(f.kind)
    points = []
    missing = []
    for i, client in enumerate(latest.client_ids):
        c, r = num(cosine[i]), num(ratio[i])
        if c is None or r is None:
            missing.append(client)
            continue
        points.append(
            {"client": client, "cosine": c, "norm_ratio": r, "findings": open_at.get(client, [])}
        )
    return {"round": latest.round, "points": points, "no_finite_update": missing}


# -- rounds -----------------------------------------------------------------------


def _global(rounds: list, config: RunCreate) -> dict[str, Any]:
    closed = [r for r in rounds if r.status == "closed"]
    return {
        "rounds": [r.round for r in closed],
        "accuracy": [num(r.global_eval_accuracy) for r in closed],
        "loss": [num(r.global_eval_loss) for r in closed],
        "centralized_accuracy": config.centralized_accuracy,
    }


PARTICIPATION_SCORES = {"ok": "reports_ok", "failed": "reports_failed", "dropped": "reports_dropped",
                        "timeout": "reports_timeout"}  # fmt: skip
FAIRNESS_SCORES = {
    "mean": "accuracy_mean",
    "worst10": "accuracy_worst10_mean",
    "worst": "accuracy_min",
}


def _stored(scan: ScoreScan, names: dict[str, str]) -> dict[int, dict[str, float]]:
    """Per analysed round, the engine's round scores named in ``names`` (key -> score name)."""
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for key, name in names.items():
        for rnd, value in scan.round_series.get(name, []):
            out[rnd][key] = value
    return out


def _participation(
    session: Session, run_id: str, rounds: list, config: RunCreate, scan: ScoreScan
) -> dict[str, Any]:
    """Reports by status per round, and how many were expected (sampled, else the run's expected).

    Analysed rounds use the counts the engine stored with their scores; the
    others are counted from the reports (a scan of 200,000 report rows costs
    seconds, the scores a few milliseconds).
    """
    counts: dict[int, dict[str, float]] = _stored(scan, PARTICIPATION_SCORES)
    numbers = [r.round for r in rounds]
    missing = [r for r in numbers if len(counts.get(r, {})) < len(PARTICIPATION_SCORES)]
    if missing:
        rows = session.execute(
            select(ClientReportRow.round, ClientReportRow.status, func.count())
            .where(ClientReportRow.run_id == run_id, ClientReportRow.round.in_(missing))
            .group_by(ClientReportRow.round, ClientReportRow.status)
        ).all()
        for rnd in missing:
            counts[rnd] = dict.fromkeys(PARTICIPATION_SCORES, 0)
        for rnd, status, n in rows:
            counts[rnd][status] = n
    expected = [r.num_sampled or config.expected_clients for r in rounds]
    out: dict[str, Any] = {"rounds": numbers, "expected": expected}
    for status in PARTICIPATION_SCORES:
        out[status] = [int(counts[r].get(status, 0)) for r in numbers]
    out["missing"] = [
        max(0, e - int(sum(counts[r].values()))) for r, e in zip(numbers, expected, strict=True)
    ]
    return out


def _fairness_band(session: Session, run_id: str, rounds: list, scan: ScoreScan) -> dict[str, Any]:
    """Mean, mean of the worst decile and the worst client's evaluation accuracy, per round.

    The engine's stored fairness scores for analysed rounds (what its fairness
    detector judged), computed from the reports for rounds not analysed.
    """
    band = _stored(scan, FAIRNESS_SCORES)
    analysed = {r for r, v in band.items() if len(v) == len(FAIRNESS_SCORES)}
    closed = {r.round for r in rounds if r.status == "closed"}
    todo = sorted(closed - analysed)
    if todo:
        accuracy: dict[int, list[float]] = defaultdict(list)
        rows = session.execute(
            select(ClientReportRow.round, ClientReportRow.eval_accuracy).where(
                ClientReportRow.run_id == run_id,
                ClientReportRow.status == "ok",
                ClientReportRow.eval_accuracy.is_not(None),
                ClientReportRow.round.in_(todo),
            )
        ).all()
        for rnd, value in rows:
            accuracy[rnd].append(value)
        for rnd, values in accuracy.items():
            acc = np.asarray(values, dtype=np.float64)
            band[rnd] = {"mean": acc.mean(), "worst10": fairness.worst_fraction_mean(acc, 0.1),
                         "worst": acc.min()}  # fmt: skip
    numbers = sorted(r for r, v in band.items() if len(v) == len(FAIRNESS_SCORES))
    out: dict[str, Any] = {"rounds": numbers}
    for key in FAIRNESS_SCORES:
        out[key] = [num(band[r][key]) for r in numbers]
    return out


def _privacy(rounds: list, scan: ScoreScan, config: RunCreate) -> dict[str, Any] | None:
    """Epsilon spent by round (the engine's accountant, else what the run reported) against the budget."""
    if config.dp is None:
        return None
    spent = {r: num(v) for r, v in scan.round_series.get("epsilon_spent", [])}
    for r in rounds:
        if spent.get(r.round) is None and r.epsilon is not None:
            spent[r.round] = num(r.epsilon)
    numbers = sorted(spent)
    return {
        "rounds": numbers,
        "epsilon": [spent[r] for r in numbers],
        "target_epsilon": config.dp.target_epsilon,
        "delta": config.dp.delta,
    }


# -- one client -------------------------------------------------------------------


def _label_mix(
    history: list[ClientRoundOut], config: RunCreate, reference_rounds: int
) -> dict[str, Any] | None:
    """The client's label shares in its first ``reference_rounds`` rounds against its latest round."""
    with_labels = [h for h in history if h.status == "ok" and h.label_histogram is not None]
    if not with_labels:
        return None
    ref = np.sum([h.label_histogram for h in with_labels[:reference_rounds]], axis=0)
    last = with_labels[-1]
    cur = np.asarray(last.label_histogram, dtype=np.float64)
    names = config.task.class_names or [str(k) for k in range(config.task.num_classes)]

    def shares(counts: np.ndarray) -> list[float | None]:
        total = float(np.sum(counts))
        return [num(c / total) if total > 0 else None for c in counts]

    return {
        "classes": names,
        "reference": shares(ref),
        "reference_rounds": [h.round for h in with_labels[:reference_rounds]],
        "current": shares(cur),
        "current_round": last.round,
    }


def top_features(client_findings: list[FindingOut]) -> list[dict[str, Any]] | None:
    """The features that moved most, from the client's first feature-drift finding in report order.

    Report order puts an open finding before a resolved one (then the most severe,
    then the earliest), so the table describes the drift the section leads with,
    not an older episode that has since resolved.
    """
    return next(
        (
            f.details.get("top_features")
            for f in _most_severe_first(client_findings)
            if f.kind == "feature_drift"
        ),
        None,
    )


def _client_section(
    session: Session,
    run_id: str,
    client: str,
    findings: list[FindingOut],
    scan: ScoreScan,
    config: RunCreate,
) -> dict[str, Any]:
    history, _ = queries.client_history(session, run_id, client, None, None, 0, _ALL)
    thresholds = Thresholds().with_overrides(config.thresholds)
    ordered = _most_severe_first([f for f in findings if f.client_id == client])
    mine = [_finding(f) for f in ordered]
    series = scan.series.get(client, {})
    return {
        "client_id": client,
        "findings": mine,
        "label_mix": _label_mix(history, config, thresholds.reference_rounds),
        "drift": {
            name: {"rounds": [r for r, _ in points], "values": [num(v) for _, v in points]}
            for name, points in series.items()
        },
        "top_features": top_features(ordered),
        "loss": {
            "rounds": [h.round for h in history],
            "eval_loss": [num(h.eval_loss) for h in history],
            "train_loss": [num(h.train_loss) for h in history],
            "eval_accuracy": [num(h.eval_accuracy) for h in history],
            "status": [h.status for h in history],
        },
    }
