"""The Prometheus collector: domain metrics (``fl_*``) read from the store at scrape time.

Nothing is kept in a worker's memory except a cache of decoded score matrices
(keyed by run, round and creation time), so every uvicorn worker, and every
worker over one PostgreSQL, answers a scrape with the same numbers: no
multiprocess-mode files are needed.

Per-client series are capped (``Settings.exporter_top_k_clients``): a run
exports the clients with an open finding (at most ``exporter_max_clients``,
critical first) plus the ``k`` clients with the highest anomaly score of the
latest analysed round. For stability between rounds a client that was in the
previous round's top ``k`` keeps its place while it stays within the current
top ``2k``. ``fl_run_clients_exported`` and ``fl_run_clients_cut`` say how
many clients were exported and left out. Federation quantiles of the key
client scores are always exported, whatever the cap.

Streak gauges (``fl_client_*_streak_rounds``, ``fl_run_signal_streak_rounds``)
count consecutive *rounds* over threshold, so alert rules need no ``for:``
guess of how long a round lasts.

:func:`metrics_registry` builds the registry ``/metrics`` serves: the
service's own per-process telemetry plus this collector.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from monitor.detectors.output import SEVERITIES
from monitor.detectors.registry import DEFAULT as REGISTRY
from monitor.settings import Settings
from monitor.store import Store
from monitor.store.analysis import analysis_lag
from monitor.store.scores import RoundScores, round_scores
from monitor.store.tables import ClientReportRow, FindingRow, RoundRow, RoundScoresRow, RunRow

__all__ = ["DomainCollector", "metrics_registry", "CLIENT_SCORE_METRICS", "STREAK_METRICS"]

log = logging.getLogger("fedsentinel.exporter")

# Every list below is read from the detector registry (monitor/detectors/registry.py), the one
# place that declares finding kinds, scores and the metrics they are exported as.
FINDING_KINDS: tuple[str, ...] = REGISTRY.kinds
"""Finding kinds exported with a zero when none is open."""
RUN_SIGNAL_KINDS: tuple[str, ...] = REGISTRY.kinds_of_scope("federation")
"""Federation-level finding kinds with a streak gauge (``fl_run_signal_streak_rounds``)."""
CLIENT_SCORE_METRICS: tuple[tuple[str, str, str], ...] = REGISTRY.client_metrics()
"""(metric name, score name in RoundScores.client_scores, HELP)."""
STREAK_METRICS: tuple[tuple[str, str, str], ...] = REGISTRY.streak_metrics()
QUANTILE_SCORES: tuple[tuple[str, str, str], ...] = REGISTRY.quantile_metrics()
"""(metric name, client score, what the quantile is of)."""
QUANTILES = (0.5, 0.9, 0.99, 1.0)
FLAGGED_COUNTS: tuple[str, ...] = REGISTRY.flagged_counts()
RUN_SCORE_METRICS: tuple[tuple[str, str, str], ...] = REGISTRY.round_metrics()
"""(metric name, score name in RoundScores.round_scores, HELP)."""


def _ts(value: datetime | str | None) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str):  # SQLite aggregates may come back as text
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, highest first; NaN ranks last; ties by index."""
    if k <= 0 or scores.size == 0:
        return np.empty(0, dtype=np.int64)
    key = np.where(np.isnan(scores), -np.inf, scores)
    part = np.argpartition(-key, k - 1)[:k] if k < key.size else np.arange(key.size)
    order = np.lexsort((part, -key[part]))
    return part[order]


@dataclass(frozen=True)
class _RunState:
    run_id: str
    expected_clients: int
    planned_rounds: int | None
    last_closed_round: int | None
    open_rounds: int
    rounds_closed: int
    reports: int
    last_opened: float
    last_closed: float
    first_opened: float


def _activity(run: _RunState) -> float:
    """Latest opening or closing of a round (a run with no rounds sorts last)."""
    times = [t for t in (run.last_opened, run.last_closed) if not math.isnan(t)]
    return max(times) if times else -math.inf


class DomainCollector(Collector):
    """Yields the ``fl_*`` families and the store-derived ``fedsentinel_*`` ones at each scrape."""

    def __init__(
        self, store: Callable[[], Store], settings: Settings, cache_size: int = 64
    ) -> None:
        self._store = store
        self.settings = settings
        self._cache: OrderedDict[tuple[str, int, float], RoundScores] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self.errors = 0

    def describe(self) -> Iterable[Metric]:
        return ()  # computed at scrape time; nothing to check at registration

    # -- scrape --------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        families: list[Metric] = []
        up = 1.0
        try:
            store = self._store()
            with store.read_session() as session:
                families = self._collect(session)
        except SQLAlchemyError as exc:
            self.errors += 1
            up = 0.0
            families = []
            log.error("scrape could not read the store: %s", str(exc)[:300])
        except Exception:  # noqa: BLE001  (a bug must not turn /metrics into a 500)
            self.errors += 1
            families = []
            log.exception("building the domain metrics failed")
        series = sum(len(f.samples) for f in families)
        yield from families
        g = GaugeMetricFamily("fedsentinel_store_up", "1 if the last scrape could read the store.")
        g.add_metric([], up)
        yield g
        c = CounterMetricFamily(
            "fedsentinel_exporter_errors", "Scrapes of this worker that failed to read the store."
        )
        c.add_metric([], float(self.errors))
        yield c
        g = GaugeMetricFamily(
            "fedsentinel_exporter_series", "Series produced by the domain collector in this scrape."
        )
        g.add_metric([], float(series + 4))
        yield g
        g = GaugeMetricFamily(
            "fedsentinel_exporter_scrape_duration_seconds",
            "Time to read the store and build the domain metrics for this scrape.",
        )
        g.add_metric([], time.perf_counter() - started)
        yield g

    def _collect(self, session: Session) -> list[Metric]:
        runs = self._runs(session)
        out: dict[str, Metric] = {}

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
            if name not in out:
                out[name] = GaugeMetricFamily(name, doc, labels=list(labels))
            return out[name]  # type: ignore[return-value]

        reports = CounterMetricFamily(
            "fedsentinel_reports_ingested",
            "Client reports stored (duplicates not counted), from the store.",
        )
        # Over every run in the store, not only the exported ones: a run ageing out of the
        # export window must not make the counter go down (Prometheus would see a reset).
        total = session.execute(select(func.coalesce(func.sum(RoundRow.reports), 0))).scalar_one()
        reports.add_metric([], float(total))
        out[reports.name] = reports
        gauge("fedsentinel_runs_exported", "Runs exported by this scrape.").add_metric(
            [], float(len(runs))
        )
        lag = analysis_lag(session)
        gauge(
            "fedsentinel_analysis_lag_rounds",
            "Closed rounds not yet analysed, for the run furthest behind (0: analysis is current).",
        ).add_metric([], float(lag.max_lag_rounds))
        gauge(
            "fedsentinel_analysis_pending_rounds", "Closed rounds not yet analysed, over every run."
        ).add_metric([], float(lag.pending_rounds))
        gauge(
            "fedsentinel_analysis_oldest_pending_age_seconds",
            "How long the oldest closed, unanalysed round has waited for its analysis (0 if none).",
        ).add_metric([], lag.oldest_pending_age_seconds)

        findings = self._open_findings(session, [r.run_id for r in runs])
        # The most recently active runs get the per-client budget first.
        clients_left = self.settings.exporter_max_exported_clients
        for run in sorted(runs, key=lambda r: -_activity(r)):
            clients_left -= self._run_metrics(
                session, run, findings.get(run.run_id, []), gauge, clients_left
            )
        return list(out.values())

    def _runs(self, session: Session) -> list[_RunState]:
        closed = RoundRow.status == "closed"
        rows = session.execute(
            select(
                RunRow.run_id,
                RunRow.expected_clients,
                RunRow.planned_rounds,
                func.max(case((closed, RoundRow.round))),
                func.sum(case((closed, 0), (RoundRow.round.is_(None), 0), else_=1)),
                func.sum(case((closed, 1), else_=0)),
                func.sum(RoundRow.reports),
                func.max(RoundRow.opened_at),
                func.max(RoundRow.closed_at),
                func.min(RoundRow.opened_at),
            )
            .join(RoundRow, RoundRow.run_id == RunRow.run_id, isouter=True)
            .group_by(RunRow.run_id, RunRow.expected_clients, RunRow.planned_rounds)
            .order_by(RunRow.run_id)
        ).all()
        ttl = self.settings.exporter_run_ttl_seconds
        horizon = (datetime.now(UTC) - timedelta(seconds=ttl)).timestamp() if ttl > 0 else -math.inf
        runs = []
        for (
            run_id,
            expected,
            planned,
            last_closed_round,
            open_rounds,
            n_closed,
            reports,
            opened,
            closed_at,
            first,
        ) in rows:
            state = _RunState(
                run_id=run_id,
                expected_clients=int(expected),
                planned_rounds=None if planned is None else int(planned),
                last_closed_round=last_closed_round,
                open_rounds=int(open_rounds or 0),
                rounds_closed=int(n_closed or 0),
                reports=int(reports or 0),
                last_opened=_ts(opened),
                last_closed=_ts(closed_at),
                first_opened=_ts(first),
            )
            last = max(state.last_opened, state.last_closed) if opened is not None else math.nan
            if math.isnan(last) or last >= horizon:
                runs.append(state)
        return runs

    def _open_findings(self, session: Session, run_ids: list[str]) -> dict[str, list[tuple]]:
        if not run_ids:
            return {}
        rows = session.execute(
            select(
                FindingRow.run_id, FindingRow.kind, FindingRow.severity, FindingRow.client_id,
                FindingRow.first_round, FindingRow.last_round, FindingRow.score,
                FindingRow.details_json,
            ).where(FindingRow.status == "open", FindingRow.run_id.in_(run_ids))
        ).all()  # fmt: skip
        out: dict[str, list[tuple]] = {}
        for row in rows:
            out.setdefault(row[0], []).append(tuple(row[1:]))
        return out

    def _scores(
        self, session: Session, run_id: str, before: int | None = None
    ) -> RoundScores | None:
        """The latest analysed round's scores (or the latest before ``before``), cached decoded."""
        q = select(RoundScoresRow.round, RoundScoresRow.created_at).where(
            RoundScoresRow.run_id == run_id
        )
        if before is not None:
            q = q.where(RoundScoresRow.round < before)
        head = session.execute(q.order_by(RoundScoresRow.round.desc()).limit(1)).first()
        if head is None:
            return None
        key = (run_id, int(head[0]), _ts(head[1]))
        with self._cache_lock:  # concurrent scrapes share the cache
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        scores = round_scores(session, run_id, int(head[0]))
        if scores is None:
            return None
        with self._cache_lock:
            self._cache[key] = scores
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return scores

    # -- one run -------------------------------------------------------------

    def _run_metrics(  # type: ignore[no-untyped-def]
        self, session: Session, run: _RunState, findings: list[tuple], gauge, clients_left: int
    ) -> int:
        """Every family of one run; returns how many clients got per-client series."""
        r = [run.run_id]
        scores = self._scores(session, run.run_id)
        rs = scores.round_scores if scores else {}

        gauge(
            "fl_run_round", "Latest analysed round of the run (-1 before the first).", ["run"]
        ).add_metric(r, float(scores.round) if scores else -1.0)
        gauge(
            "fl_run_last_closed_round",
            "Latest closed round of the run (-1 before the first).",
            ["run"],
        ).add_metric(r, float(run.last_closed_round) if run.last_closed_round is not None else -1.0)
        gauge("fl_run_open_rounds", "Rounds with reports but not yet closed.", ["run"]).add_metric(
            r, float(run.open_rounds)
        )
        gauge(
            "fl_run_expected_clients", "Clients the run was registered to expect.", ["run"]
        ).add_metric(r, float(run.expected_clients))
        if run.planned_rounds is not None:
            gauge(
                "fl_run_planned_rounds",
                "Rounds the run was registered to last (absent if not declared).",
                ["run"],
            ).add_metric(r, float(run.planned_rounds))
        gauge(
            "fl_run_last_activity_timestamp_seconds",
            "Unix time of the run's latest round opening (first report) or closing.",
            ["run"],
        ).add_metric(
            r,
            max(run.last_opened, run.last_closed) if not math.isnan(run.last_opened) else math.nan,
        )
        period = (
            (run.last_closed - run.first_opened) / run.rounds_closed
            if run.rounds_closed and not math.isnan(run.last_closed)
            else math.nan
        )
        gauge(
            "fl_run_round_interval_seconds",
            "Mean wall time per closed round (first opening to latest close over rounds closed).",
            ["run"],
        ).add_metric(r, period)
        gauge(
            "fl_run_analysis_duration_seconds",
            "Time the engine took to analyse the latest round.",
            ["run"],
        ).add_metric(r, scores.computed_seconds if scores else math.nan)
        for name, key, doc in RUN_SCORE_METRICS:
            gauge(name, doc, ["run"]).add_metric(r, float(rs.get(key, math.nan)))

        flagged = gauge(
            "fl_run_clients_flagged",
            "Clients over threshold for a signal in the latest round.",
            ["run", "signal"],
        )
        for signal in FLAGGED_COUNTS:
            flagged.add_metric([run.run_id, signal], float(rs.get(f"clients_{signal}", math.nan)))

        self._finding_metrics(run, findings, scores, gauge)
        self._quantile_metrics(run, scores, gauge)

        # per client, capped
        flagged_clients = {f[2]: f[1] for f in findings if f[2] is not None and f[1] == "critical"}
        for f in findings:
            if f[2] is not None:
                flagged_clients.setdefault(f[2], f[1])
        selected, total = self._select_clients(session, run.run_id, scores, flagged_clients)
        selected = selected[: max(clients_left, 0)]  # flagged clients come first
        gauge(
            "fl_run_clients_exported", "Clients with per-client series in this scrape.", ["run"]
        ).add_metric(r, float(len(selected)))
        gauge(
            "fl_run_clients_cut",
            "Clients of the latest round left out of per-client series by the cap.",
            ["run"],
        ).add_metric(r, float(max(total - len(selected), 0)))
        self._client_metrics(session, run.run_id, scores, selected, gauge)
        exported = {scores.client_ids[i] for i in selected} if scores else set()
        open_by_client = gauge(
            "fl_client_findings_open",
            "1 for each open finding of an exported client, by kind and severity (the findings API has its sentence).",
            ["run", "client", "kind", "severity"],
        )
        for kind, severity, client_id, *_rest in findings:
            if client_id in exported:
                open_by_client.add_metric([run.run_id, client_id, kind, severity], 1.0)
        return len(selected)

    def _finding_metrics(  # type: ignore[no-untyped-def]
        self, run: _RunState, findings: list[tuple], scores: RoundScores | None, gauge
    ) -> None:
        """Open findings by kind and severity, and the federation-level streaks."""
        counts = {(k, s): 0 for k in FINDING_KINDS for s in SEVERITIES}
        streak = dict.fromkeys(RUN_SIGNAL_KINDS, 0)
        latest = scores.round if scores else None
        for kind, severity, client_id, _first, last_round, _score, details in findings:
            counts[(kind, severity)] = counts.get((kind, severity), 0) + 1
            if client_id is None and kind in streak and last_round == latest:
                body = json.loads(details or "{}")
                if body.get("caused_by") or body.get("converged"):
                    continue  # explained by client findings, or a converged run: does not page
                # consecutive active rounds (quiet rounds inside an open finding do not count)
                streak[kind] = max(streak[kind], int(body.get("active_streak", 1)))
        fam = gauge(
            "fl_run_findings_open",
            "Open findings by kind and severity.",
            ["run", "kind", "severity"],
        )
        for (kind, severity), n in counts.items():
            fam.add_metric([run.run_id, kind, severity], float(n))
        fam = gauge(
            "fl_run_signal_streak_rounds",
            "Consecutive analysed rounds (up to the latest) in which a federation-level finding was active; 0 = not now.",
            ["run", "kind"],
        )
        for kind, n in streak.items():
            fam.add_metric([run.run_id, kind], float(n))

    def _quantile_metrics(self, run: _RunState, scores: RoundScores | None, gauge) -> None:  # type: ignore[no-untyped-def]
        """Federation quantiles of the key client scores (always present, whatever the cap)."""
        for name, key, what in QUANTILE_SCORES:
            fam = gauge(
                name, f"Quantile q of the {what} over the latest round's clients.", ["run", "q"]
            )
            values = scores.client_scores.get(key) if scores else None
            finite = values[~np.isnan(values)] if values is not None else np.empty(0)
            # "higher": an order statistic, no interpolation, so +Inf scores (clients that sent
            # non-finite updates) stay +Inf instead of turning the quantile into inf - inf = NaN.
            qs = (
                np.quantile(finite, QUANTILES, method="higher")
                if finite.size
                else [math.nan] * len(QUANTILES)
            )
            for q, v in zip(QUANTILES, qs, strict=True):
                fam.add_metric([run.run_id, f"{q:g}"], float(v))

    def _select_clients(
        self, session: Session, run_id: str, scores: RoundScores | None, flagged: dict[str, str]
    ) -> tuple[list[int], int]:
        """Indices into ``scores.client_ids`` to export, and how many clients the round had."""
        if scores is None or not scores.client_ids:
            return [], 0
        ids = scores.client_ids
        n = len(ids)
        k = self.settings.exporter_top_k_clients
        anomaly = np.asarray(scores.client_scores.get("anomaly_score", np.full(n, np.nan)))
        position = {c: i for i, c in enumerate(ids)}
        flagged_idx = [position[c] for c in flagged if c in position]
        rank = {"critical": 0, "warning": 1, "info": 2}
        flagged_idx.sort(
            key=lambda i: (
                rank.get(flagged[ids[i]], 3),
                -np.nan_to_num(anomaly[i], nan=-np.inf),
                ids[i],
            )
        )
        chosen = list(dict.fromkeys(flagged_idx[: self.settings.exporter_max_clients]))
        taken = set(chosen)
        budget = min(k, max(self.settings.exporter_max_clients - len(chosen), 0))
        if budget:
            current = _top(anomaly, min(2 * budget, n))
            previous = self._scores(session, run_id, before=scores.round)
            if previous is not None and previous.client_ids:
                prev_anomaly = np.asarray(previous.client_scores.get("anomaly_score", []))
                prev_top = (
                    {previous.client_ids[i] for i in _top(prev_anomaly, budget)}
                    if prev_anomaly.size
                    else set()
                )
            else:
                prev_top = set()
            # keep last round's top-k while they stay within the current top-2k, then fill by rank
            keep = [i for i in current if ids[i] in prev_top and i not in taken][:budget]
            fill = [i for i in current if i not in taken and i not in set(keep)]
            extra = keep + fill[: budget - len(keep)]
            chosen.extend(int(i) for i in extra)
        return chosen, n

    def _client_metrics(
        self, session: Session, run_id: str, scores: RoundScores | None, selected: list[int], gauge
    ) -> None:  # type: ignore[no-untyped-def]
        labels = ["run", "client"]
        families = [
            (name, key, gauge(name, doc, labels))
            for name, key, doc in CLIENT_SCORE_METRICS + STREAK_METRICS
        ]
        acc = gauge(
            "fl_client_eval_accuracy_ratio",
            "Client's evaluation accuracy of the global model on its local held-out data.",
            labels,
        )
        loss = gauge(
            "fl_client_eval_loss",
            "Client's evaluation loss of the global model on its local held-out data.",
            labels,
        )
        if scores is None or not selected:
            return
        ids = [scores.client_ids[i] for i in selected]
        idx = np.asarray(selected, dtype=np.int64)
        for _name, key, fam in families:
            column = scores.client_scores.get(key)
            if column is None:
                continue
            values = column[idx]
            for client, v in zip(ids, values.tolist(), strict=True):
                fam.add_metric([run_id, client], v)
        reports: dict[str, tuple[float | None, float | None]] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            for client, a, lo in session.execute(
                select(
                    ClientReportRow.client_id,
                    ClientReportRow.eval_accuracy,
                    ClientReportRow.eval_loss,
                ).where(
                    ClientReportRow.run_id == run_id,
                    ClientReportRow.round == scores.round,
                    ClientReportRow.client_id.in_(part),
                )
            ):
                reports[client] = (a, lo)
        for client in ids:
            a, lo = reports.get(client, (None, None))
            acc.add_metric([run_id, client], math.nan if a is None else float(a))
            loss.add_metric([run_id, client], math.nan if lo is None else float(lo))


class _TelemetryView(Collector):
    """The app's per-process telemetry, served beside the domain collector with a ``worker`` label.

    Request latency, signal time and store errors are counted in each uvicorn
    worker's memory; successive scrapes of one target reach different workers,
    so each worker's series carry its pid and ``sum``/``rate`` stay correct.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.worker = str(os.getpid())

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labelled.add_sample(
                    sample.name, {**sample.labels, "worker": self.worker}, sample.value,
                    sample.timestamp, sample.exemplar,
                )  # fmt: skip
            yield labelled


def metrics_registry(
    telemetry_registry: CollectorRegistry, store: Callable[[], Store], settings: Settings
) -> CollectorRegistry:
    """The registry ``/metrics`` serves: telemetry (per worker) + the domain collector (from the store)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_TelemetryView(telemetry_registry))
    registry.register(DomainCollector(store, settings))
    return registry
