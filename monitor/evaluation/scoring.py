"""Detection quality: score a run's findings against the faults that were injected.

Pure: ground truth (what the simulator injected, :meth:`simulator.faults.FaultPlan.ground_truth`)
and findings (as the query API returns them) in, metrics out. No I/O; the
``fedsentinel evaluate`` command (:mod:`monitor.evaluate_cli`, :mod:`monitor.evaluation.runner`) runs the
scenarios through the real service and calls these functions.

Definitions (docs/evaluation.md says why):

* A **faulty pair** is one ``(client, fault)`` of the ground truth. It is
  **detected** when a *client-level* finding on that client, of a kind that
  *fits* the fault (:data:`FITTING_KINDS`), was opened at or after the fault's
  onset round. ``recall = detected pairs / faulty pairs``.
* **Delay** of a detected pair = first round of its earliest fitting finding
  opened at or after onset - onset round (0 = flagged in the onset round).
* **Healthy client-rounds** are the rounds of clients with no injected fault,
  plus the rounds of faulty clients before their first onset. A **false
  alarm** is a client-level finding (any kind) *opened* in a healthy
  client-round; the rate is per 1,000 healthy client-rounds.
* **Federation-level findings** (``client_id`` None) in runs without any fault
  are counted separately, per kind and per run; in faulty runs a
  federation-level finding of a kind in :data:`FEDERATION_FITTING_KINDS`
  opened at or after onset counts as a federation detection.
* **Localisation precision** (faulty runs): of the clients flagged by a
  client-level finding of a kind fitting the run's fault, opened at or after
  onset, the share that are truly faulty.
* A **federation-wide fault** (ground truth ``scope: federation``, every client
  at once) is one pair, client ``*``, detected by a federation-level finding of a
  fitting kind (:data:`FEDERATION_FITTING_KINDS`).
* **Federation-level false alarms**: federation-level findings (``client_id``
  None) of severity above ``info`` opened in a run with no federation-level fault
  (:data:`FEDERATION_LEVEL_FAULTS`), per 1,000 such run-rounds. A finding that the
  service explains by open client findings (``details.caused_by``) is ``info``
  and does not page, so it does not count.
* **Alert noise** (faulty runs): findings opened at or after the first onset on a
  faulty client or at federation level (any severity), per injected fault
  (faulty pair, a federation-wide fault counts once); ``on_cause`` of them are of
  a fitting kind on a faulty client, or a fitting federation-level kind.
* Under partial participation a client-round exists only where the client was
  sampled: pass ``client_rounds`` (the rounds each client was reported in).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FITTING_KINDS",
    "FEDERATION_FITTING_KINDS",
    "FEDERATION_LEVEL_FAULTS",
    "PairResult",
    "RunResult",
    "KindSummary",
    "score_run",
    "summarize",
    "summaries",
]

FITTING_KINDS: dict[str, frozenset[str]] = {
    # the client's label mix moves; the injected rows are other images, so its features move too
    "label_drift": frozenset({"label_drift", "data_drift", "feature_drift"}),
    # features move, labels do not
    "covariate_shift": frozenset({"feature_drift", "data_drift"}),
    # poisoned labels: the update points elsewhere; under label skew the trained-on label mix moves;
    # the client's training loss (against the poisoned labels) rises over its held-out loss
    "label_flip": frozenset(
        {"update_divergence", "performance_drift", "label_drift", "data_drift", "label_noise"}
    ),
    # same, weaker: the trained-on label mix moves toward uniform, the update gets noisier
    "noisy_labels": frozenset(
        {"update_divergence", "performance_drift", "label_drift", "data_drift", "label_noise"}
    ),
    "stale_update": frozenset({"stale_update"}),
    "free_rider": frozenset({"free_rider"}),
    # a huge update is divergent; one that overflows is non-finite
    "exploding_update": frozenset({"update_divergence", "nonfinite_update"}),
    "nonfinite_update": frozenset({"nonfinite_update"}),
    "dropout": frozenset({"dropout"}),
    "straggler": frozenset({"straggler"}),
    # the cohort's population and concept drift away: its loss rises, its data moves
    "fairness_regression": frozenset(
        {"performance_drift", "data_drift", "label_drift", "feature_drift"}
    ),
    # Byzantine updates (simulator.faults): only the update is crafted, so only it can show them
    "sign_flip": frozenset({"update_divergence"}),
    "gaussian_noise": frozenset({"update_divergence"}),
    "alie": frozenset({"update_divergence"}),
    "ipm": frozenset({"update_divergence"}),
    # every client's features move at once: per client it is a feature drift
    "federation_covariate_shift": frozenset({"feature_drift", "data_drift"}),
}
"""Client-level finding kinds that point a user at the injected fault on that client."""

FEDERATION_FITTING_KINDS: dict[str, frozenset[str]] = {
    "dropout": frozenset({"participation_drop"}),
    "fairness_regression": frozenset({"fairness_regression"}),
    "exploding_update": frozenset({"global_divergence"}),
    "nonfinite_update": frozenset({"nonfinite_aggregate"}),
    "federation_covariate_shift": frozenset({"federation_drift"}),
}
"""Federation-level kinds that are a fitting (but unlocalised) sign of the fault."""

FEDERATION_LEVEL_FAULTS = frozenset({"federation_covariate_shift", "fairness_regression"})
"""Faults whose cause is at federation level (a federation finding for them is no false alarm)."""

FEDERATION = "*"
"""The client id of a federation-wide fault's one pair."""


@dataclass(frozen=True)
class PairResult:
    """One faulty (client, fault) pair and whether and when it was found."""

    client_id: str
    fault: str
    onset_round: int
    detected: bool
    detection_round: int | None
    delay_rounds: int | None
    kind: str | None
    """The kind of the earliest fitting finding."""


@dataclass
class RunResult:
    """Metrics of one run (see the module docstring for the definitions)."""

    run_id: str
    faults: list[str]
    """Fault kinds injected (empty for a healthy run)."""
    rounds: int
    num_clients: int
    pairs: list[PairResult] = field(default_factory=list)
    healthy_client_rounds: int = 0
    false_alarms: int = 0
    false_alarms_by_kind: dict[str, int] = field(default_factory=dict)
    federation_findings: dict[str, int] = field(default_factory=dict)
    """Federation-level findings opened, by kind (all of them, whether fitting or not)."""
    federation_detection_round: int | None = None
    """First round of a fitting federation-level finding at or after onset (faulty runs)."""
    flagged_clients: list[str] = field(default_factory=list)
    """Clients with a fitting client-level finding opened at or after onset (faulty runs)."""
    flagged_faulty: int = 0
    alpha: float | None = None
    seed: int | None = None
    condition: str = "full"
    """The grid condition (participation, noise, size) the run was made under."""
    healthy_run_rounds: int = 0
    """Rounds of a run with no federation-level fault (0 otherwise)."""
    federation_false_alarms: int = 0
    federation_false_alarms_by_kind: dict[str, int] = field(default_factory=dict)
    findings_after_onset: int = 0
    """Alert noise: findings opened at or after the first onset on a faulty client or at federation level."""
    findings_on_cause: int = 0
    injected_faults: int = 0

    @property
    def healthy(self) -> bool:
        return not self.faults

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _client_rounds(
    truth: Sequence[Mapping[str, Any]],
    client_ids: Iterable[str],
    rounds: int,
    client_rounds: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, int]:
    """Healthy rounds per client: its rounds (all, or those it was sampled in) before its first onset."""
    first_onset: dict[str, int] = {}
    for t in truth:
        c = str(t["client_id"])
        first_onset[c] = min(first_onset.get(c, rounds + 1), int(t["onset_round"]))
    if client_rounds is None:
        return {c: min(rounds, first_onset.get(c, rounds + 1) - 1) for c in client_ids}
    return {
        c: sum(1 for r in client_rounds.get(c, ()) if r < first_onset.get(c, rounds + 1))
        for c in client_ids
    }


def _pair(hits: list[tuple[int, str]], client: str, fault: str, onset: int) -> PairResult:
    if hits:
        rnd, kind = hits[0]
        return PairResult(client, fault, onset, True, rnd, rnd - onset, kind)
    return PairResult(client, fault, onset, False, None, None, None)


def score_run(
    truth: Sequence[Mapping[str, Any]],
    findings: Sequence[Mapping[str, Any]],
    *,
    run_id: str,
    client_ids: Sequence[str],
    rounds: int,
    alpha: float | None = None,
    seed: int | None = None,
    condition: str = "full",
    client_rounds: Mapping[str, Sequence[int]] | None = None,
) -> RunResult:
    """Score one run.

    ``truth``: ``{client_id, fault, onset_round, scope?, ...}`` per faulty pair (the
    simulator's ground truth; empty for a healthy run). ``findings``: dicts
    with ``kind``, ``client_id`` (None for federation-level), ``first_round`` and
    ``severity`` (the query API's ``FindingOut``). ``client_ids``: every
    client of the run; ``rounds``: rounds run; ``client_rounds``: the rounds each
    client reported in, when not every round (partial participation).
    """
    healthy_rounds = _client_rounds(truth, client_ids, rounds, client_rounds)
    onset_of: dict[str, int] = {}
    for t in truth:
        c = str(t["client_id"])
        onset_of[c] = min(onset_of.get(c, rounds + 1), int(t["onset_round"]))
    faults = sorted({str(t["fault"]) for t in truth})
    federation_fault = bool(FEDERATION_LEVEL_FAULTS & set(faults))
    result = RunResult(
        run_id=run_id,
        faults=faults,
        rounds=rounds,
        num_clients=len(client_ids),
        healthy_client_rounds=sum(healthy_rounds.values()),
        alpha=alpha,
        seed=seed,
        condition=condition,
        healthy_run_rounds=0 if federation_fault else rounds,
    )
    client_findings = [f for f in findings if f.get("client_id") is not None]
    fed_findings = [f for f in findings if f.get("client_id") is None]

    # false alarms: client-level findings opened while the client was healthy
    fa: Counter[str] = Counter()
    for f in client_findings:
        c = str(f["client_id"])
        if int(f["first_round"]) < onset_of.get(c, rounds + 1):
            fa[str(f["kind"])] += 1
    result.false_alarms = sum(fa.values())
    result.false_alarms_by_kind = dict(sorted(fa.items()))
    result.federation_findings = dict(sorted(Counter(str(f["kind"]) for f in fed_findings).items()))

    if not federation_fault:
        paging = Counter(str(f["kind"]) for f in fed_findings if f.get("severity") != "info")
        result.federation_false_alarms = sum(paging.values())
        result.federation_false_alarms_by_kind = dict(sorted(paging.items()))

    # recall and delay per faulty pair (a federation-wide fault: one pair, found at federation level)
    client_truth = [t for t in truth if t.get("scope", "client") != "federation"]
    federation_truth: dict[int, Mapping[str, Any]] = {}
    for t in truth:
        if t.get("scope") == "federation":
            federation_truth.setdefault(int(t.get("fault_index", 0)), t)
    for t in client_truth:
        c, fault, onset = str(t["client_id"]), str(t["fault"]), int(t["onset_round"])
        fits = FITTING_KINDS.get(fault, frozenset())
        hits = sorted(
            (int(f["first_round"]), str(f["kind"]))
            for f in client_findings
            if str(f["client_id"]) == c and f["kind"] in fits and int(f["first_round"]) >= onset
        )
        result.pairs.append(_pair(hits, c, fault, onset))
    for t in federation_truth.values():
        fault, onset = str(t["fault"]), int(t["onset_round"])
        fits = FEDERATION_FITTING_KINDS.get(fault, frozenset())
        hits = sorted(
            (int(f["first_round"]), str(f["kind"]))
            for f in fed_findings
            if f["kind"] in fits and int(f["first_round"]) >= onset
        )
        result.pairs.append(_pair(hits, FEDERATION, fault, onset))

    if truth:
        _alert_noise(result, truth, client_findings, fed_findings, faults, onset_of)
    if client_truth:
        onset = min(int(t["onset_round"]) for t in client_truth)
        fits = frozenset().union(
            *(FITTING_KINDS.get(str(t["fault"]), frozenset()) for t in client_truth)
        )
        flagged = {
            str(f["client_id"])
            for f in client_findings
            if f["kind"] in fits and int(f["first_round"]) >= onset
        }
        result.flagged_clients = sorted(flagged)
        result.flagged_faulty = len(flagged & {str(t["client_id"]) for t in client_truth})
    if truth:
        onset = min(int(t["onset_round"]) for t in truth)
        fed_fits = frozenset().union(
            *(FEDERATION_FITTING_KINDS.get(k, frozenset()) for k in faults)
        )
        fed_rounds = [
            int(f["first_round"])
            for f in fed_findings
            if f["kind"] in fed_fits and int(f["first_round"]) >= onset
        ]
        result.federation_detection_round = min(fed_rounds) if fed_rounds else None
    return result


def _alert_noise(
    result: RunResult,
    truth: Sequence[Mapping[str, Any]],
    client_findings: Sequence[Mapping[str, Any]],
    fed_findings: Sequence[Mapping[str, Any]],
    faults: Sequence[str],
    onset_of: Mapping[str, int],
) -> None:
    """Findings opened per injected fault after its onset, and how many point at the cause."""
    fits_of: dict[str, set[str]] = {str(t["client_id"]): set() for t in truth}
    for t in truth:
        if t.get("scope") == "federation":
            continue  # one federation cause: a per-client finding does not name it
        fits_of.setdefault(str(t["client_id"]), set()).update(
            FITTING_KINDS.get(str(t["fault"]), frozenset())
        )
    first = min(int(t["onset_round"]) for t in truth)
    fed_fits = frozenset().union(*(FEDERATION_FITTING_KINDS.get(k, frozenset()) for k in faults))
    after = [
        f
        for f in client_findings
        if str(f["client_id"]) in onset_of
        and int(f["first_round"]) >= onset_of[str(f["client_id"])]
    ]
    fed_after = [f for f in fed_findings if int(f["first_round"]) >= first]
    on_cause = sum(f["kind"] in fits_of[str(f["client_id"])] for f in after)
    on_cause += sum(f["kind"] in fed_fits for f in fed_after)
    result.findings_after_onset = len(after) + len(fed_after)
    result.findings_on_cause = on_cause
    result.injected_faults = len(result.pairs)


@dataclass
class KindSummary:
    """Metrics pooled over the runs of one fault kind (``"healthy"`` for runs without faults)."""

    fault: str
    runs: int
    pairs: int
    detected: int
    recall: float
    median_delay_rounds: float
    max_delay_rounds: float
    healthy_client_rounds: int
    false_alarms: int
    false_alarms_per_1000: float
    flagged: int
    flagged_faulty: int
    localisation_precision: float
    federation_detection_runs: int
    """Runs with a fitting federation-level finding at or after onset (kinds that have one)."""
    federation_findings: dict[str, int]
    false_alarms_by_kind: dict[str, int]
    detected_by_kind: dict[str, int]
    recall_by_alpha: dict[str, float]
    healthy_run_rounds: int = 0
    federation_false_alarms: int = 0
    federation_false_alarms_per_1000: float = math.nan
    federation_false_alarms_by_kind: dict[str, int] = field(default_factory=dict)
    injected_faults: int = 0
    findings_after_onset: int = 0
    findings_on_cause: int = 0
    findings_per_fault: float = math.nan
    """Alert noise: findings opened after onset per injected fault."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def summarize(results: Sequence[RunResult], label: str) -> KindSummary:
    """Pool runs: recall and precision as ratios of sums, delay as the median over detected pairs."""
    pairs = [p for r in results for p in r.pairs]
    delays = [p.delay_rounds for p in pairs if p.detected and p.delay_rounds is not None]
    hcr = sum(r.healthy_client_rounds for r in results)
    fa = sum(r.false_alarms for r in results)
    flagged = sum(len(r.flagged_clients) for r in results)
    flagged_faulty = sum(r.flagged_faulty for r in results)
    fed: Counter[str] = Counter()
    fa_kind: Counter[str] = Counter()
    fed_fa: Counter[str] = Counter()
    for r in results:
        fed.update(r.federation_findings)
        fa_kind.update(r.false_alarms_by_kind)
        fed_fa.update(r.federation_false_alarms_by_kind)
    hrr = sum(r.healthy_run_rounds for r in results)
    injected = sum(r.injected_faults for r in results)
    after = sum(r.findings_after_onset for r in results)
    by_alpha: dict[str, list[bool]] = {}
    for r in results:
        by_alpha.setdefault(f"{r.alpha:g}" if r.alpha is not None else "-", []).extend(
            p.detected for p in r.pairs
        )
    return KindSummary(
        fault=label,
        runs=len(results),
        pairs=len(pairs),
        detected=sum(p.detected for p in pairs),
        recall=_ratio(sum(p.detected for p in pairs), len(pairs)),
        median_delay_rounds=float(statistics.median(delays)) if delays else math.nan,
        max_delay_rounds=float(max(delays)) if delays else math.nan,
        healthy_client_rounds=hcr,
        false_alarms=fa,
        false_alarms_per_1000=_ratio(1000.0 * fa, hcr),
        flagged=flagged,
        flagged_faulty=flagged_faulty,
        localisation_precision=_ratio(flagged_faulty, flagged),
        federation_detection_runs=sum(r.federation_detection_round is not None for r in results),
        federation_findings=dict(sorted(fed.items())),
        false_alarms_by_kind=dict(sorted(fa_kind.items())),
        detected_by_kind=dict(sorted(Counter(p.kind for p in pairs if p.kind).items())),
        recall_by_alpha={k: _ratio(sum(v), len(v)) for k, v in by_alpha.items() if v},
        healthy_run_rounds=hrr,
        federation_false_alarms=sum(fed_fa.values()),
        federation_false_alarms_per_1000=_ratio(1000.0 * sum(fed_fa.values()), hrr),
        federation_false_alarms_by_kind=dict(sorted(fed_fa.items())),
        injected_faults=injected,
        findings_after_onset=after,
        findings_on_cause=sum(r.findings_on_cause for r in results),
        findings_per_fault=_ratio(after, injected),
    )


def summaries(runs: Sequence[RunResult], kinds: Sequence[str]) -> dict[str, KindSummary]:
    """One summary per fault kind, one for the healthy runs and one over all runs (false alarms)."""
    out = {k: summarize([r for r in runs if r.faults == [k]], k) for k in kinds}
    out["healthy"] = summarize([r for r in runs if r.healthy], "healthy")
    out["all runs"] = summarize(runs, "all runs")
    return out
