"""Bounded storage: old rounds lose their arrays, the detectors do not notice, the history
API says so, and `fedsentinel prune` does by hand what auto_prune does as rounds pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from collectors.analysis import wait_for_analysis
from monitor.app import create_app
from monitor.settings import Settings
from monitor.store import Store
from monitor.store.db import add_missing_columns
from monitor.store.tables import ClientReportRow
from monitor.worker_cli import prune
from tests.streams import ROUNDS, RUN_ID, findings_signature, post_record, simulated_stream

RETAIN = 3


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return simulated_stream(tmp_path_factory.mktemp("stream"))


def _replay(store: Store, stream: list[dict], tmp_path: Path, **settings: object) -> list[tuple]:
    with TestClient(create_app(Settings(data_dir=tmp_path, **settings), store=store)) as api:
        for record in stream:
            post_record(api, record)
        wait_for_analysis(api, RUN_ID, timeout_seconds=120)
        return findings_signature(api, RUN_ID)


def _array_bytes(store: Store) -> int:
    t = ClientReportRow.__table__
    arrays = func.coalesce(func.length(t.c.update_sketch), 0) + func.coalesce(
        func.length(t.c.label_histogram), 0
    )
    arrays = arrays + func.coalesce(func.length(t.c.feature_histograms), 0)
    with store.read_session() as session:
        return int(session.execute(select(func.coalesce(func.sum(arrays), 0))).scalar_one())


def test_auto_prune_keeps_the_findings_and_the_history_says_what_was_compacted(
    store: Store, stream: list[dict], tmp_path: Path
) -> None:
    reference_store = Store(f"sqlite:///{tmp_path / 'unpruned.db'}")
    reference_store.create_schema()
    try:
        expected = _replay(reference_store, stream, tmp_path, auto_prune=False)
        full_bytes = _array_bytes(reference_store)
    finally:
        reference_store.dispose()
    found = _replay(store, stream, tmp_path, auto_prune=True, retention_rounds=RETAIN)
    assert expected and found == expected  # the detectors never needed the old arrays

    compacted_rounds = list(range(1, ROUNDS - RETAIN + 1))
    assert 0 < _array_bytes(store) <= full_bytes * RETAIN / ROUNDS + 1
    with TestClient(
        create_app(Settings(data_dir=tmp_path, analysis="external"), store=store)
    ) as api:
        rounds = api.get(f"/api/v1/runs/{RUN_ID}/rounds", params={"limit": 100}).json()["items"]
        assert [r["round"] for r in rounds if r["arrays_compacted"]] == compacted_rounds
        history = api.get(
            f"/api/v1/runs/{RUN_ID}/clients/c002/history", params={"limit": 100}
        ).json()["items"]
    assert [h["round"] for h in history] == list(range(1, ROUNDS + 1))
    for h in history:
        old = h["round"] in compacted_rounds
        assert h["arrays_compacted"] is old
        assert (h["label_histogram"] is None) is old and (h["update_sketch"] is None) is old
        assert (h["feature_histograms"] is None) is old
        assert h["eval_accuracy"] is not None and h["update_norm"] is not None  # scalars stay


def test_prune_command_compacts_by_hand_and_is_idempotent(
    stream: list[dict], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'manual.db'}"
    store = Store(url)
    store.create_schema()
    try:
        _replay(store, stream, tmp_path, auto_prune=False)
        before = _array_bytes(store)
        runner = CliRunner()
        first = runner.invoke(prune, ["--database-url", url, "--retention-rounds", "4"])
        assert first.exit_code == 0, first.output
        assert f"{RUN_ID}: compacted rounds 1-{ROUNDS - 4}" in first.output
        after = _array_bytes(store)
        assert after == pytest.approx(before * 4 / ROUNDS, rel=0.05)
        again = runner.invoke(prune, ["--database-url", url, "--retention-rounds", "4"])
        assert again.exit_code == 0 and "compacted 0 round(s)" in again.output
        assert _array_bytes(store) == after
        unknown = runner.invoke(prune, ["--database-url", url, "--run", "nope"])
        assert unknown.exit_code != 0 and "no analysed run named nope" in unknown.output
    finally:
        store.dispose()


def test_a_store_from_before_these_columns_is_upgraded_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store(url)
    store.create_schema()
    with store.write_engine.begin() as conn:  # as an earlier release left it
        conn.exec_driver_sql('ALTER TABLE "round" DROP COLUMN arrays_compacted')
        conn.exec_driver_sql('ALTER TABLE "round" DROP COLUMN analyzed_at')
        conn.exec_driver_sql(
            "INSERT INTO run (run_id, created_at, config_json, config_hash, expected_clients) "
            "VALUES ('old', '2026-01-01', '{}', 'h', 1)"
        )
        conn.exec_driver_sql(
            "INSERT INTO round (run_id, round, status, opened_at, reports, analyzed) "
            "VALUES ('old', 1, 'closed', '2026-01-01', 0, 1)"
        )
    assert sorted(add_missing_columns(store.write_engine)) == [
        "round.analyzed_at",
        "round.arrays_compacted",
    ]
    with store.read_session() as session:
        row = session.execute(text("SELECT arrays_compacted, analyzed_at FROM round")).one()
    assert row == (0, None)
    assert add_missing_columns(store.write_engine) == []
    store.dispose()
