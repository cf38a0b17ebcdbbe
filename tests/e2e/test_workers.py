"""Several uvicorn workers over one store answer a scrape with the same domain metrics."""

from __future__ import annotations

import httpx
import pytest

from monitor.store import Store
from tests.exporter.populate import add_finding, populate

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def domain_lines(text: str) -> list[str]:
    keep = ("fl_", "fedsentinel_reports_ingested_total", "fedsentinel_runs_exported")
    return sorted(line for line in text.splitlines() if line.startswith(keep))


def test_two_workers_export_identical_domain_metrics(service_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    store = Store(url)
    store.create_schema()
    ids = populate(store, "r1", 2_000, rounds=3, seed=5)
    with store.write_session() as session:
        add_finding(session, "r1", "free_rider", ids[1999], 2, 3)
    store.dispose()
    service = service_factory(database_url=url, workers=2)
    # a new connection per scrape, so that the workers share the scrapes
    scrapes = [
        domain_lines(httpx.get(f"{service.url}/metrics", timeout=10).text) for _ in range(12)
    ]
    assert scrapes[0], "no domain metrics"
    assert any(f'client="{ids[1999]}"' in line for line in scrapes[0])
    assert all(s == scrapes[0] for s in scrapes[1:])
