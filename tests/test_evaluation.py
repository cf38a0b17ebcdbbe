"""Detection-quality scoring (hand-computed cases) and one small evaluate run through the real service."""

from __future__ import annotations

import json
import math

import pytest

from monitor.evaluation import FITTING_KINDS, score_run, summarize


def finding(kind: str, client: str | None, first: int, last: int | None = None) -> dict:
    return {"kind": kind, "client_id": client, "first_round": first, "last_round": last or first}


CLIENTS = [f"c{i:03d}" for i in range(10)]


def test_recall_delay_false_alarms_and_precision_by_hand():
    truth = [
        {"client_id": "c001", "fault": "label_drift", "onset_round": 10},
        {"client_id": "c002", "fault": "label_drift", "onset_round": 10},
    ]
    findings = [
        finding("label_drift", "c001", 11),  # detected, delay 1
        finding("data_drift", "c001", 12),  # later, same pair: delay stays 1
        finding("straggler", "c002", 12),  # not a fitting kind: c002 missed
        # before onset: a false alarm on a still-healthy client
        finding("update_divergence", "c002", 5),
        # a fitting kind on a healthy client: a false alarm, and it costs precision
        finding("feature_drift", "c005", 14),
        finding("performance_drift", "c007", 3),  # false alarm, not fitting for label_drift
        finding("global_stagnation", None, 20),  # federation-level: not a client false alarm
    ]
    r = score_run(truth, findings, run_id="r", client_ids=CLIENTS, rounds=30)
    assert [(p.client_id, p.detected, p.delay_rounds, p.kind) for p in r.pairs] == [
        ("c001", True, 1, "label_drift"),
        ("c002", False, None, None),
    ]
    # healthy client-rounds: 8 healthy clients x 30 + 2 faulty clients x 9 rounds before onset
    assert r.healthy_client_rounds == 8 * 30 + 2 * 9
    assert r.false_alarms == 3
    assert r.false_alarms_by_kind == {
        "feature_drift": 1,
        "performance_drift": 1,
        "update_divergence": 1,
    }
    assert r.federation_findings == {"global_stagnation": 1}
    # flagged by a fitting kind at/after onset: c001 (faulty) and c005 (healthy)
    assert r.flagged_clients == ["c001", "c005"] and r.flagged_faulty == 1

    s = summarize([r], "label_drift")
    assert s.recall == 0.5
    assert s.median_delay_rounds == 1.0
    assert s.false_alarms_per_1000 == pytest.approx(1000 * 3 / 258)
    assert s.localisation_precision == 0.5


def test_pooling_over_runs_and_healthy_runs():
    truth_a = [{"client_id": "c000", "fault": "free_rider", "onset_round": 8}]
    truth_b = [{"client_id": "c003", "fault": "free_rider", "onset_round": 12}]
    a = score_run(
        truth_a,
        [finding("free_rider", "c000", 8)],
        run_id="a",
        client_ids=CLIENTS,
        rounds=20,
        alpha=0.1,
    )
    b = score_run(
        truth_b,
        [finding("free_rider", "c003", 15)],
        run_id="b",
        client_ids=CLIENTS,
        rounds=20,
        alpha=100,
    )
    healthy = score_run(
        [],
        [finding("straggler", "c004", 6), finding("participation_drop", None, 9)],
        run_id="h",
        client_ids=CLIENTS,
        rounds=20,
    )
    s = summarize([a, b], "free_rider")
    assert s.recall == 1.0 and s.detected == 2
    assert s.median_delay_rounds == 1.5 and s.max_delay_rounds == 3.0  # delays 0 and 3
    assert s.recall_by_alpha == {"0.1": 1.0, "100": 1.0}
    assert s.localisation_precision == 1.0
    h = summarize([healthy], "healthy")
    assert healthy.healthy and h.pairs == 0 and math.isnan(h.recall)
    assert h.healthy_client_rounds == 200 and h.false_alarms_per_1000 == 5.0
    assert h.federation_findings == {"participation_drop": 1}


def test_federation_detection_and_fairness_cohort():
    truth = [
        {"client_id": c, "fault": "fairness_regression", "onset_round": 10}
        for c in ("c001", "c002", "c003")
    ]
    findings = [
        finding("fairness_regression", None, 16),
        finding("performance_drift", "c001", 13),
        # opened before onset: a false alarm, and not a detection
        finding("feature_drift", "c002", 9),
    ]
    r = score_run(truth, findings, run_id="f", client_ids=CLIENTS, rounds=30)
    assert [p.detected for p in r.pairs] == [True, False, False]
    assert r.pairs[0].delay_rounds == 3
    assert r.federation_detection_round == 16
    assert r.false_alarms == 1


def test_federation_false_alarms_alert_noise_and_a_federation_wide_fault_by_hand():
    sev = lambda f, s: {**f, "severity": s}  # noqa: E731
    truth = [
        {"client_id": "c001", "fault": "sign_flip", "onset_round": 10},
        {"client_id": "c002", "fault": "sign_flip", "onset_round": 10},
    ]
    findings = [
        sev(finding("update_divergence", "c001", 10), "warning"),  # on the cause
        sev(finding("performance_drift", "c001", 12), "warning"),  # after onset, not the cause
        sev(finding("update_divergence", "c002", 11), "warning"),  # on the cause
        sev(finding("straggler", "c004", 12), "info"),  # a healthy client: a false alarm, not noise
        sev(finding("fairness_regression", None, 14), "warning"),  # pages: federation false alarm
        sev(finding("global_divergence", None, 15), "info"),  # explained, does not page
    ]
    r = score_run(truth, findings, run_id="r", client_ids=CLIENTS, rounds=30)
    assert r.healthy_run_rounds == 30
    assert r.federation_false_alarms == 1
    assert r.federation_false_alarms_by_kind == {"fairness_regression": 1}
    # noise: 3 client findings on faulty clients after onset + 2 federation findings, per 2 faults
    assert (r.findings_after_onset, r.findings_on_cause, r.injected_faults) == (5, 2, 2)
    s = summarize([r], "sign_flip")
    assert s.findings_per_fault == 2.5
    assert s.federation_false_alarms_per_1000 == pytest.approx(1000 / 30)

    # a federation-wide shift: one pair, found by one federation finding; client findings are noise
    wide = [
        {
            "client_id": c,
            "fault": "federation_covariate_shift",
            "onset_round": 8,
            "scope": "federation",
            "fault_index": 0,
        }
        for c in CLIENTS
    ]
    findings = [
        sev(finding("federation_drift", None, 9), "warning"),
        sev(finding("feature_drift", "c003", 9), "warning"),
    ]
    r = score_run(wide, findings, run_id="w", client_ids=CLIENTS, rounds=30)
    assert [(p.client_id, p.detected, p.delay_rounds) for p in r.pairs] == [("*", True, 1)]
    assert r.healthy_run_rounds == 0 and r.federation_false_alarms == 0  # a federation-level fault
    assert (r.findings_after_onset, r.findings_on_cause, r.injected_faults) == (2, 1, 1)
    assert r.false_alarms == 0 and r.healthy_client_rounds == 10 * 7


def test_partial_participation_counts_only_sampled_client_rounds():
    truth = [{"client_id": "c001", "fault": "dropout", "onset_round": 5}]
    sampled = {c: [1, 3, 5, 7] for c in CLIENTS}  # every client sampled in 4 of 10 rounds
    r = score_run(truth, [], run_id="p", client_ids=CLIENTS, rounds=10, client_rounds=sampled)
    assert r.healthy_client_rounds == 9 * 4 + 2  # c001: rounds 1 and 3 before onset


def test_every_fault_kind_has_fitting_kinds():
    from monitor.detectors import KINDS
    from simulator.scenario import FAULT_KINDS

    assert set(FITTING_KINDS) == set(FAULT_KINDS)
    for kinds in FITTING_KINDS.values():
        assert kinds and kinds <= set(KINDS)


def test_evaluate_through_the_real_service(tmp_path):
    """Two scenarios (a label drift and a healthy twin) through the service: the drifting clients are found."""
    from click.testing import CliRunner

    from monitor.cli import main

    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--kinds",
            "label_drift",
            "--alphas",
            "0.5",
            "--seeds",
            "0",
            "--clients",
            "20-20",
            "--rounds",
            "14",
            "--onset",
            "8-8",
            "--out",
            str(tmp_path),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    body = json.loads((tmp_path / "evaluation.json").read_text())
    runs = {r["run_id"]: r for r in body["runs"]}
    assert set(runs) == {"label_drift-a0.5-s0", "healthy-a0.5-s0"}
    drift = runs["label_drift-a0.5-s0"]
    assert len(drift["pairs"]) == 2 and all(p["detected"] for p in drift["pairs"])
    assert all(p["delay_rounds"] <= 1 for p in drift["pairs"])
    assert body["summary"]["label_drift"]["recall"] == 1.0
    md = (tmp_path / "evaluation.md").read_text()
    assert "| label_drift | 1 | 2 | 1.00 |" in md
    assert (tmp_path / "evaluation.png").stat().st_size > 1000


@pytest.mark.slow
def test_quick_grid_through_the_real_service(tmp_path):
    """The CI grid (every fault kind incl. the attacks and a federation-wide shift, several faults,
    healthy, dropout at half participation) runs through the service and meets loose aims."""
    from click.testing import CliRunner

    from monitor.cli import main

    result = CliRunner().invoke(
        main, ["evaluate", "--quick", "--jobs", "2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    body = json.loads((tmp_path / "evaluation.json").read_text())
    runs = body["runs"]
    assert {r["condition"] for r in runs} == {"full", "partial-0.5-timeout"}
    pairs = [p for r in runs for p in r["pairs"]]
    assert sum(p["detected"] for p in pairs) / len(pairs) >= 0.9
    wide = next(r for r in runs if r["faults"] == ["federation_covariate_shift"])
    assert [p["client_id"] for p in wide["pairs"]] == ["*"] and wide["pairs"][0]["detected"]
    assert wide["findings_after_onset"] <= 4
    healthy = [r for r in runs if not r["faults"]]
    assert sum(r["federation_false_alarms"] for r in healthy) == 0
    text = (tmp_path / "evaluation.md").read_text()
    assert "Targets (issue 11)" in text and "By condition" in text


def test_calibration_table_groups_healthy_runs_by_size_and_alpha() -> None:
    """Run-level false alarms per 1,000 run-rounds by federation size bucket and Dirichlet
    alpha; a run with a client-level fault counts in the second row of its size, a run with a
    federation-level fault in none."""
    from monitor.evaluation.targets import render_calibration

    def run(rid: str, n: int, alpha: float, truth=(), findings=()):  # type: ignore[no-untyped-def]
        return score_run(
            list(truth), list(findings), run_id=rid, client_ids=[f"c{i}" for i in range(n)],
            rounds=20, alpha=alpha, seed=0,
        )  # fmt: skip

    page = {
        "kind": "fairness_regression",
        "client_id": None,
        "first_round": 9,
        "severity": "warning",
    }
    info = {**page, "severity": "info"}
    drift = {"client_id": "c1", "fault": "label_drift", "onset_round": 5}
    cohort = {"client_id": "c1", "fault": "fairness_regression", "onset_round": 5}
    lines = render_calibration(
        [
            run("a", 30, 0.1, findings=[page]),
            run("b", 40, 100),
            run("c", 30, 0.1, truth=[drift], findings=[info]),
            run("d", 30, 0.1, truth=[cohort], findings=[page]),
            run("e", 200, 0.1),
            run("f", 1000, 100, findings=[page, page]),
        ]
    )
    assert lines[0] == "| clients | runs | alpha 0.1 | alpha 100 | all | by kind |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert list(rows) == [
        "1-50, healthy", "1-50, no federation fault", "51-200, healthy",
        "51-200, no federation fault", "201-1,000, healthy", "201-1,000, no federation fault",
    ]  # fmt: skip
    assert (
        "| 2 | 1 in 20 (50.00 / 1,000) | 0 in 20 (0.00 / 1,000) | 1 in 40 " in rows["1-50, healthy"]
    )
    assert "| 3 | 1 in 40 (25.00 / 1,000) |" in rows["1-50, no federation fault"]
    assert (
        "fairness_regression 2" in rows["201-1,000, healthy"] and "| - |" in rows["51-200, healthy"]
    )
