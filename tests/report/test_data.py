"""The report's data against the store it was built from (brute force over the same rows)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from sqlalchemy import select

from monitor.report import ReportLimits, build_report_data
from monitor.report.data import SEVERITY_RANK
from monitor.store import Store
from monitor.store.tables import ClientReportRow
from tests.report.conftest import DRIFTING, DROPPED, ROUNDS


def _data(faulty_run, **limits):  # type: ignore[no-untyped-def]
    with faulty_run.store.read_session() as session:
        return build_report_data(
            session, faulty_run.run_id, ReportLimits(**limits) if limits else None
        )


def _reports(faulty_run) -> list[ClientReportRow]:  # type: ignore[no-untyped-def]
    with faulty_run.store.read_session() as session:
        return list(
            session.execute(
                select(ClientReportRow).where(ClientReportRow.run_id == faulty_run.run_id)
            ).scalars()
        )


def test_the_report_data_is_plain_json_with_every_section(faulty_run) -> None:  # type: ignore[no-untyped-def]
    data = _data(faulty_run)
    json.dumps(data, allow_nan=False)  # no NaN, no objects: it goes into a <script> as JSON
    assert data["run"]["run_id"] == "faulty" and data["run"]["dp"]["target_epsilon"] == 30.0
    assert data["health"]["rounds_closed"] == ROUNDS
    assert data["global"]["rounds"] == list(range(1, ROUNDS + 1))
    assert data["global"]["centralized_accuracy"] is not None


def test_findings_open_and_most_severe_first_and_the_faulty_clients_are_flagged(faulty_run) -> None:  # type: ignore[no-untyped-def]
    findings = _data(faulty_run)["findings"]
    keys = [(f["status"] != "open", SEVERITY_RANK[f["severity"]]) for f in findings]
    assert keys == sorted(keys)
    by_client = {(f["client_id"], f["kind"]) for f in findings}
    assert (DRIFTING, "label_drift") in by_client
    assert (DROPPED, "dropout") in by_client
    assert all(f["message"] for f in findings)


def test_drift_map_puts_the_drifting_client_first_and_caps_with_a_count(faulty_run) -> None:  # type: ignore[no-untyped-def]
    full = _data(faulty_run)["drift_map"]
    assert full["clients_total"] == 10 and full["clients_left_out"] == 0
    row = full["z"][full["clients"].index(DRIFTING)]
    after_onset = [v for r, v in zip(full["rounds"], row, strict=True) if r >= 5 and v is not None]
    assert after_onset and min(after_onset) >= 1.0, "drift ratio over its threshold after the onset"
    assert DRIFTING in full["clients"][:2]
    capped = _data(faulty_run, map_clients=3)["drift_map"]
    assert len(capped["clients"]) == 3 and capped["clients_left_out"] == 7
    assert capped["clients"] == full["clients"][:3]


def test_participation_counts_match_the_stored_reports(faulty_run) -> None:  # type: ignore[no-untyped-def]
    p = _data(faulty_run)["participation"]
    reports = _reports(faulty_run)
    for i, rnd in enumerate(p["rounds"]):
        ok = sum(1 for r in reports if r.round == rnd and r.status == "ok")
        total = sum(1 for r in reports if r.round == rnd)
        assert p["ok"][i] == ok
        assert p["missing"][i] == max(0, p["expected"][i] - total)
    assert p["expected"] == [10] * ROUNDS
    assert (
        p["ok"][-1] + p["failed"][-1] + p["dropped"][-1] + p["timeout"][-1] + p["missing"][-1] == 10
    )
    assert p["ok"][-1] <= 9, "c007 no longer reports"


def test_fairness_band_is_the_mean_worst_decile_and_worst_client_of_the_reports(faulty_run) -> None:  # type: ignore[no-untyped-def]
    band = _data(faulty_run)["fairness"]
    reports = [r for r in _reports(faulty_run) if r.status == "ok" and r.eval_accuracy is not None]
    assert band["rounds"] == list(range(1, ROUNDS + 1))
    for i, rnd in enumerate(band["rounds"]):
        acc = np.array([r.eval_accuracy for r in reports if r.round == rnd])
        worst10 = np.sort(acc)[: int(np.ceil(0.1 * acc.size))].mean()
        assert band["mean"][i] == pytest.approx(acc.mean(), abs=1e-4)
        assert band["worst10"][i] == pytest.approx(worst10, abs=1e-4)
        assert band["worst"][i] == pytest.approx(acc.min(), abs=1e-4)


def test_rounds_not_analysed_are_summarised_from_the_reports(faulty_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Without stored scores (analysis behind, or off) participation and fairness come from the reports."""
    copy = tmp_path / "unanalysed.db"
    source = sqlite3.connect(faulty_run.data_dir / "fedsentinel.db")
    with sqlite3.connect(copy) as target:
        source.backup(target)
        target.execute("DELETE FROM round_scores")
    source.close()
    unanalysed = Store(f"sqlite:///{copy}")
    try:
        with unanalysed.read_session() as session:
            unscored = build_report_data(session, faulty_run.run_id)
    finally:
        unanalysed.dispose()
    scored = _data(faulty_run)
    assert unscored["participation"] == scored["participation"]
    assert unscored["fairness"]["rounds"] == scored["fairness"]["rounds"]
    for key in ("mean", "worst10", "worst"):
        assert unscored["fairness"][key] == pytest.approx(scored["fairness"][key], abs=1e-4)
    assert unscored["drift_map"]["clients"] == [] and unscored["divergence"] is None


def test_divergence_uses_the_latest_round_and_client_sections_cover_the_flagged(faulty_run) -> None:  # type: ignore[no-untyped-def]
    data = _data(faulty_run)
    div = data["divergence"]
    assert div["round"] == ROUNDS
    assert {p["client"] for p in div["points"]} <= {f"c{i:03d}" for i in range(10)} - {DROPPED}
    assert all(-1 <= p["cosine"] <= 1 and p["norm_ratio"] >= 0 for p in div["points"])
    sections = {c["client_id"]: c for c in data["clients"]}
    assert set(sections) == {f["client_id"] for f in data["findings"] if f["client_id"]}
    drift = sections[DRIFTING]
    mix = drift["label_mix"]
    assert mix["reference_rounds"] == [1, 2, 3] and mix["current_round"] == ROUNDS
    assert mix["current"][1] > mix["reference"][1] + 0.3, "class 1 took over"
    assert abs(sum(mix["current"]) - 1) < 1e-3
    assert drift["loss"]["rounds"] == list(range(1, ROUNDS + 1))
    assert max(drift["drift"]["label_drift_ratio"]["values"][-3:]) >= 1
    assert len(_data(faulty_run, client_sections=1)["clients"]) == 1


def test_privacy_section_is_epsilon_by_round_rising_towards_the_budget(faulty_run) -> None:  # type: ignore[no-untyped-def]
    privacy = _data(faulty_run)["privacy"]
    assert privacy["target_epsilon"] == 30.0 and privacy["rounds"] == list(range(1, ROUNDS + 1))
    eps = privacy["epsilon"]
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False))
