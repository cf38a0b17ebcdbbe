"""The /metrics collector against a real store: lint-clean, capped, agreeing across workers."""

from __future__ import annotations

import shutil
import subprocess
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.exporter import CLIENT_SCORE_METRICS, STREAK_METRICS, DomainCollector
from monitor.settings import Settings
from monitor.store import Store
from tests.exporter.populate import add_finding, add_round, add_run, client_ids, populate
from tests.factories import close_body, report, run_spec

PER_CLIENT = [name for name, _, _ in CLIENT_SCORE_METRICS + STREAK_METRICS] + [
    "fl_client_eval_accuracy_ratio",
    "fl_client_eval_loss",
]


def scrape(api) -> tuple[str, dict[str, list]]:  # type: ignore[no-untyped-def]
    response = api.get("/metrics")  # no OpenMetrics Accept header: classic text format
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return response.text, samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    hits = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_real_scrape_passes_promtool_check_metrics(api, store: Store) -> None:  # type: ignore[no-untyped-def]
    ids = populate(store, "r1", 120, rounds=2)
    with store.write_session() as session:
        add_finding(session, "r1", "label_drift", ids[7], 1, 2, "critical")
        add_finding(session, "r1", "fairness_regression", None, 1, 2)
        # open since round 1 but quiet in between: only the current active run of rounds counts
        add_finding(session, "r1", "global_stagnation", None, 1, 2, active_streak=1)
    api.get("/healthz")  # a request so the latency histogram has samples
    text, samples = scrape(api)
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""
    # every family has HELP and TYPE, counters end in _total, no *_created series
    assert "_created" not in text
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total")
    assert value(samples, "fl_run_round", run="r1") == 2
    assert value(samples, "fl_run_signal_streak_rounds", run="r1", kind="fairness_regression") == 2
    assert value(samples, "fl_run_signal_streak_rounds", run="r1", kind="global_stagnation") == 1
    assert value(samples, "fl_client_findings_open", run="r1", client=ids[7], kind="label_drift",
                 severity="critical") == 1  # fmt: skip
    assert (
        value(samples, "fl_run_findings_open", run="r1", kind="label_drift", severity="critical")
        == 1
    )
    assert (
        value(samples, "fl_run_findings_open", run="r1", kind="label_drift", severity="warning")
        == 0
    )
    assert "fedsentinel_http_request_duration_seconds_bucket" in samples


def test_ten_thousand_clients_export_only_the_cap_plus_flagged(app_factory, store: Store) -> None:  # type: ignore[no-untyped-def]
    n, k = 10_000, 50
    rng = np.random.default_rng(3)
    anomaly = rng.gamma(2.0, 0.2, n)
    anomaly[123] = np.inf  # non-finite client ranks first
    anomaly[456] = np.nan  # NaN never ranks
    ids = client_ids(n)
    low = int(np.argsort(anomaly)[10])  # a quiet client with an open finding
    with store.write_session() as session:
        add_run(session, "big", n)
        add_round(session, "big", 1, ids, anomaly)
        add_finding(session, "big", "stale_update", ids[low], 1, 1)
    api = app_factory(exporter_top_k_clients=k)
    started = time.perf_counter()
    text, samples = scrape(api)
    elapsed = time.perf_counter() - started
    exported = {s.labels["client"] for s in samples["fl_client_anomaly_score"]}
    top = {ids[i] for i in np.argsort(-np.nan_to_num(anomaly, nan=-np.inf), kind="stable")[:k]}
    assert exported == top | {ids[low]}
    for name in PER_CLIENT:
        assert {s.labels["client"] for s in samples.get(name, [])} == exported, name
    assert value(samples, "fl_run_clients_exported", run="big") == k + 1
    assert value(samples, "fl_run_clients_cut", run="big") == n - k - 1
    assert value(samples, "fl_client_anomaly_score", run="big", client=ids[123]) == float("inf")
    # federation quantiles always there, computed over every client
    finite = anomaly[np.isfinite(anomaly) | np.isinf(anomaly)]
    assert value(
        samples, "fl_run_client_anomaly_score_quantile", run="big", q="0.5"
    ) == pytest.approx(float(np.quantile(finite, 0.5)))
    per_client_series = sum(len(samples.get(name, [])) for name in PER_CLIENT)
    assert per_client_series == len(PER_CLIENT) * (k + 1)
    assert value(samples, "fedsentinel_exporter_series") < 3000
    assert elapsed < 5.0


def test_previous_top_clients_keep_their_place_while_in_the_top_2k(
    app_factory, store: Store
) -> None:  # type: ignore[no-untyped-def]
    n, k = 100, 5
    ids = client_ids(n)
    first = np.linspace(1.0, 0.0, n)  # round 1: c00000..c00004 on top
    second = np.linspace(0.0, 1.0, n)  # round 2: the order flips ...
    second[[0, 1]] = [0.9555, 0.9545]  # ... but c00000/c00001 stay in the top 10 (ranks 6 and 7)
    with store.write_session() as session:
        add_run(session, "r", n)
        add_round(session, "r", 1, ids, first)
        add_round(session, "r", 2, ids, second)
    api = app_factory(exporter_top_k_clients=k)
    _, samples = scrape(api)
    exported = {s.labels["client"] for s in samples["fl_client_anomaly_score"]}
    assert exported == {ids[0], ids[1], ids[99], ids[98], ids[97]}


def test_scores_and_streaks_are_exported_per_client(app_factory, store: Store) -> None:  # type: ignore[no-untyped-def]
    ids = client_ids(4)
    with store.write_session() as session:
        add_run(session, "r", 4)
        add_round(
            session, "r", 5, ids, np.array([0.1, 3.0, 0.2, 0.3]),
            overrides={"drift_streak_rounds": np.array([0, 4, 0, 0.0]),
                       "label_drift_js_reference": np.array([0.01, 0.61, 0.02, np.nan])},
            round_scores={"privacy_budget_share": 0.85, "epsilon_spent": 6.8},
        )  # fmt: skip
    _, samples = scrape(app_factory())
    assert value(samples, "fl_client_drift_streak_rounds", run="r", client=ids[1]) == 4
    assert value(
        samples, "fl_client_label_drift_distance", run="r", client=ids[1]
    ) == pytest.approx(0.61)
    assert np.isnan(value(samples, "fl_client_label_drift_distance", run="r", client=ids[3]))
    assert value(samples, "fl_run_privacy_budget_spent_ratio", run="r") == pytest.approx(0.85)
    assert np.isnan(value(samples, "fl_run_centralized_gap_ratio", run="r"))


def test_every_worker_reports_the_stores_count(app_factory) -> None:  # type: ignore[no-untyped-def]
    worker_a, worker_b = app_factory(), app_factory()  # two apps, one store: two uvicorn workers
    worker_a.post("/api/v1/runs", json=run_spec())
    batch = {"reports": [report(f"c{i}", seed=i) for i in range(3)]}
    assert worker_a.post("/api/v1/runs/run-1/rounds/1/reports", json=batch).status_code == 200
    worker_a.post("/api/v1/runs/run-1/rounds/1/close", json=close_body())
    for worker in (worker_a, worker_b):
        _, samples = scrape(worker)
        assert value(samples, "fedsentinel_reports_ingested_total") == 3
        assert value(samples, "fl_run_last_closed_round", run="run-1") == 1
        assert value(samples, "fl_run_open_rounds", run="run-1") == 0
        assert value(
            samples, "fl_run_last_activity_timestamp_seconds", run="run-1"
        ) == pytest.approx(time.time(), abs=120)


def test_an_unreadable_store_gives_store_up_zero_not_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broken = Store(f"sqlite:///{tmp_path / 'never-created.db'}")  # no schema: every query fails
    collector = DomainCollector(lambda: broken, Settings(data_dir=tmp_path))
    families = {f.name: f for f in collector.collect()}
    assert families["fedsentinel_store_up"].samples[0].value == 0
    assert families["fedsentinel_exporter_errors"].samples[0].value == 1
    assert not any(name.startswith("fl_") for name in families)
    broken.dispose()


def test_many_live_runs_share_one_per_client_budget_most_recent_first(
    app_factory, store: Store
) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from monitor.store.tables import RoundRow

    ids = client_ids(100)
    with store.write_session() as session:
        for i in range(5):
            add_run(session, f"run{i}", 100)
            add_round(session, f"run{i}", 1, ids, np.linspace(1.0, 0.0, 100))
    with store.write_session() as session:  # run4 is the most recently active, run0 the least
        for i, row in enumerate(session.query(RoundRow).order_by(RoundRow.run_id)):
            row.closed_at = row.closed_at - timedelta(minutes=10 * (5 - i))
    api = app_factory(exporter_top_k_clients=50, exporter_max_exported_clients=120)
    _, samples = scrape(api)
    exported = {
        f"run{i}": value(samples, "fl_run_clients_exported", run=f"run{i}") for i in range(5)
    }
    assert exported == {"run4": 50, "run3": 50, "run2": 20, "run1": 0, "run0": 0}
    assert len(samples["fl_client_anomaly_score"]) == 120
    # run-level series and quantiles stay for every run
    assert {s.labels["run"] for s in samples["fl_run_client_anomaly_score_quantile"]} == {
        f"run{i}" for i in range(5)
    }


def test_explained_and_converged_federation_findings_do_not_page(api, store: Store) -> None:  # type: ignore[no-untyped-def]
    """A finding explained by client findings (caused_by) or a converged run has no streak: no alert."""
    import json

    from monitor.store.tables import FindingRow

    populate(store, "r2", 20, rounds=3)
    with store.write_session() as session:
        for kind, details in (
            ("fairness_regression", {"active_streak": 3, "caused_by": ["c0004"]}),
            ("global_stagnation", {"active_streak": 3, "converged": True}),
            ("participation_drop", {"active_streak": 3}),
        ):
            session.add(
                FindingRow(
                    run_id="r2",
                    kind=kind,
                    severity="info" if len(details) > 1 else "warning",
                    client_id=None,
                    first_round=1,
                    last_round=3,
                    message=kind,
                    details_json=json.dumps(details),
                )  # fmt: skip
            )
    _, samples = scrape(api)
    assert value(samples, "fl_run_signal_streak_rounds", run="r2", kind="fairness_regression") == 0
    assert value(samples, "fl_run_signal_streak_rounds", run="r2", kind="global_stagnation") == 0
    assert value(samples, "fl_run_signal_streak_rounds", run="r2", kind="participation_drop") == 3
    assert (
        value(
            samples, "fl_run_findings_open", run="r2", kind="fairness_regression", severity="info"
        )
        == 1
    )
