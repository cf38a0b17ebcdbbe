"""Finding lifecycle: one finding per ongoing problem."""

from __future__ import annotations

import pytest

from monitor.detectors import ActiveSignal, DetectorState, Thresholds, analyze_round
from monitor.evaluation.synthetic import Fault, SyntheticFederation
from monitor.findings import FindingRecord, reconcile


def sig(kind="label_drift", client="c1", score=0.5, severity="warning"):
    return ActiveSignal(
        kind, severity, client, score, 0.2, f"{client}: {kind} {score}", {"x": score}
    )


def apply(open_, rec):
    """What a store does with a Reconciliation: keep the open ones."""
    changed = {f.key: f for f in rec.updated}
    resolved = {f.key for f in rec.resolved}
    kept = [changed.get(f.key, f) for f in open_ if f.key not in resolved]
    return kept + rec.opened


def test_open_update_resolve():
    rec = reconcile([], [sig(score=0.5)], round=10)
    assert len(rec.opened) == 1 and not rec.updated and not rec.resolved
    f = rec.opened[0]
    assert (f.first_round, f.last_round, f.status, f.peak_score) == (10, 10, "open", 0.5)

    rec = reconcile([f], [sig(score=0.9, severity="critical")], round=11)
    (u,) = rec.updated
    assert (u.first_round, u.last_round, u.score, u.severity, u.peak_score) == (
        10,
        11,
        0.9,
        "critical",
        0.9,
    )
    assert u.message.endswith("0.9") and not rec.opened
    assert f.last_round == 10  # input not mutated

    open_ = [u]
    for r, quiet in ((12, 1), (13, 2)):
        rec = reconcile(open_, [], round=r)
        assert not rec.resolved and rec.updated[0].quiet_rounds == quiet
        open_ = apply(open_, rec)
    rec = reconcile(open_, [], round=14)
    (res,) = rec.resolved
    assert (res.status, res.resolved_round, res.last_round) == ("resolved", 14, 11)


def test_quiet_counter_resets_when_signal_returns():
    f = reconcile([], [sig()], 1).opened[0]
    open_ = apply([f], reconcile([f], [], 2))
    open_ = apply(open_, reconcile(open_, [], 3))
    assert open_[0].quiet_rounds == 2
    open_ = apply(open_, reconcile(open_, [sig()], 4))
    assert open_[0].quiet_rounds == 0 and open_[0].last_round == 4
    assert not reconcile(open_, [], 5, resolve_after=3).resolved


def test_keys_are_kind_and_client_and_duplicates_merge():
    rec = reconcile(
        [],
        [
            sig(client="a"),
            sig(client="b"),
            sig("stale_update", "a"),
            sig(client="a", score=2.0),
            sig("participation_drop", None),
        ],
        3,
    )
    keys = sorted((f.kind, f.client_id or "") for f in rec.opened)
    assert keys == [
        ("label_drift", "a"),
        ("label_drift", "b"),
        ("participation_drop", ""),
        ("stale_update", "a"),
    ]
    assert next(f for f in rec.opened if f.key == ("label_drift", "a")).score == 2.0


def test_unobserved_clients_neither_update_nor_resolve():
    f = reconcile([], [sig(client="a"), sig("participation_drop", None)], 1).opened
    open_ = f
    for r in (2, 3, 4, 5):
        rec = reconcile(open_, [], r, resolve_after=3, observed_clients=["b"])
        open_ = apply(open_, rec)
    assert [f.key for f in open_] == [
        ("label_drift", "a")
    ]  # federation finding resolved, client one kept
    assert open_[0].quiet_rounds == 0


def test_resolve_after_validation_and_store_mapping():
    with pytest.raises(ValueError):
        reconcile([], [], 1, resolve_after=0)
    f = reconcile([], [sig()], 1).opened[0]
    f.quiet_rounds = 2
    row = {
        "id": 7,
        "kind": f.kind,
        "severity": f.severity,
        "client_id": f.client_id,
        "first_round": 1,
        "last_round": 1,
        "score": f.score,
        "threshold": f.threshold,
        "message": f.message,
        "status": "open",
        "details": f.details_for_store(),
        "run_id": "ignored",
    }
    back = FindingRecord.from_row_fields(**row)
    assert back.quiet_rounds == 2 and back.peak_score == f.peak_score and back.id == 7
    assert back.details == f.details


def test_one_finding_per_ongoing_problem_on_a_stream():
    fed = SyntheticFederation(
        30,
        alpha=0.5,
        seed=3,
        faults=[Fault("label_shift", [4], 6, 12, magnitude=0.6), Fault("stale", [9], 8, 10)],
    )
    run = fed.run()
    st = DetectorState()
    open_: list[FindingRecord] = []
    opened, resolved = [], []
    for t in range(1, 20):
        d = fed.round(t)
        a = analyze_round(run, Thresholds(), st, d)
        st = a.state
        rec = reconcile(open_, a.active, t, observed_clients=d.client_ids)
        opened += rec.opened
        resolved += rec.resolved
        open_ = apply(open_, rec)
    assert sorted((f.kind, f.client_id, f.first_round) for f in opened) == [
        ("label_drift", "c00004", 6),
        ("stale_update", "c00009", 8),
    ]
    got = {(f.kind, f.client_id): (f.last_round, f.resolved_round) for f in resolved}
    assert got == {("label_drift", "c00004"): (11, 14), ("stale_update", "c00009"): (9, 12)}
    assert not open_


def test_active_streak_counts_consecutive_active_rounds_only() -> None:
    """A quiet round inside an open finding restarts the streak the alert rules count."""
    from types import SimpleNamespace

    def active(rnd: int) -> list:
        return [SimpleNamespace(kind="global_stagnation", severity="warning", client_id=None, score=1.0,
                                threshold=0.5, message=f"r{rnd}", details={})]

    opened = reconcile([], active(10), 10).opened
    assert [f.active_streak for f in opened] == [1]
    f = reconcile(opened, active(11), 11).updated[0]
    assert f.active_streak == 2
    f = reconcile([f], [], 12).updated[0]  # quiet, still open
    assert f.quiet_rounds == 1 and f.status == "open"
    f = reconcile([f], active(13), 13).updated[0]
    assert f.active_streak == 1 and f.last_round == 13 and f.first_round == 10
    columns = {k: v for k, v in f.__dict__.items() if k not in ("quiet_rounds", "peak_score", "active_streak")}
    stored = FindingRecord.from_row_fields(**{**columns, "details": f.details_for_store()})
    assert stored.active_streak == 1
