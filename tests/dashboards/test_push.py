"""``fedsentinel grafana push`` against a recording stand-in for Grafana's HTTP API.

No Grafana server can be installed on these machines (no Debian package, no
Docker engine), so the requests are checked against what Grafana's HTTP API
documents (paths, methods, bodies, bearer auth) by tests/dashboards/fake_grafana.py,
which keeps folders, datasources and dashboards by uid as Grafana does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from monitor.cli import main
from monitor.dashboards import DATASOURCE_UID
from monitor.dashboards.build import dashboards
from monitor.server import free_port
from tests.dashboards.fake_grafana import FakeGrafana, serve
from tests.dashboards.helpers import provisioned_prometheus

TOKEN = "glsa_test_token"


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    fake = FakeGrafana(token=TOKEN)
    server = serve(fake)
    yield fake
    server.shutdown()
    server.server_close()


def push(fake: FakeGrafana, *args: str, token: str = TOKEN) -> Result:
    return CliRunner().invoke(
        main,
        [
            "grafana",
            "push",
            "--url",
            fake.url,
            "--token",
            token,
            "--prometheus-url",
            "http://prom:9090",
            *args,
        ],
    )


def calls(fake: FakeGrafana) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in fake.requests]


def test_first_push_creates_folder_datasource_and_dashboards(grafana: FakeGrafana) -> None:
    result = push(grafana)
    assert result.exit_code == 0, result.output
    expected = dashboards()
    assert calls(grafana) == [
        ("GET", "/api/health"),
        ("GET", "/api/folders/fedsentinel"),
        ("POST", "/api/folders"),
        ("GET", f"/api/datasources/uid/{DATASOURCE_UID}"),
        ("POST", "/api/datasources"),
    ] + [("POST", "/api/dashboards/db")] * len(expected)
    assert all(r.authorization == f"Bearer {TOKEN}" for r in grafana.requests[1:])

    assert grafana.requests[2].body == {"title": "fedsentinel", "uid": "fedsentinel"}
    ds = grafana.requests[4].body
    provisioned = provisioned_prometheus()
    assert {k: ds[k] for k in ("uid", "type", "access")} == {
        k: provisioned[k] for k in ("uid", "type", "access")
    }
    assert ds["url"] == "http://prom:9090" and ds["name"] == provisioned["name"]

    for request in grafana.requests[5:]:
        body = request.body
        assert body["folderUid"] == "fedsentinel" and body["overwrite"] is True and body["message"]
        uid = body["dashboard"]["uid"]
        assert body["dashboard"] == {**expected[uid], "id": None}, (
            "the pushed JSON is the generated one"
        )
    assert set(grafana.dashboards) == set(expected)
    assert all(d["dashboard"]["version"] == 1 for d in grafana.dashboards.values())
    assert "datasource: created" in result.output and "/d/fedsentinel-overview/" in result.output


def test_second_push_updates_instead_of_duplicating(grafana: FakeGrafana) -> None:
    assert push(grafana).exit_code == 0
    first = len(grafana.requests)
    result = push(grafana)
    assert result.exit_code == 0, result.output
    again = calls(grafana)[first:]
    assert again == [
        ("GET", "/api/health"),
        ("GET", "/api/folders/fedsentinel"),
        ("GET", f"/api/datasources/uid/{DATASOURCE_UID}"),
        ("PUT", f"/api/datasources/uid/{DATASOURCE_UID}"),
    ] + [("POST", "/api/dashboards/db")] * len(dashboards())
    assert len(grafana.folders) == 1 and len(grafana.datasources) == 1
    assert len(grafana.dashboards) == len(dashboards())
    assert all(d["dashboard"]["version"] == 2 for d in grafana.dashboards.values())
    assert grafana.datasources[DATASOURCE_UID]["version"] == 2
    assert "datasource: updated" in result.output


def test_folder_name_and_existing_folder(grafana: FakeGrafana) -> None:
    result = push(grafana, "--folder", "FL Team / Monitoring")
    assert result.exit_code == 0, result.output
    assert grafana.requests[2].body == {
        "title": "FL Team / Monitoring",
        "uid": "fl-team-monitoring",
    }
    assert {d["folderUid"] for d in grafana.dashboards.values()} == {"fl-team-monitoring"}


def test_folder_of_the_same_title_with_another_uid_is_reused(grafana: FakeGrafana) -> None:
    grafana.folders["abc123"] = {"id": 99, "uid": "abc123", "title": "fedsentinel", "version": 1}
    result = push(grafana)
    assert result.exit_code == 0, result.output
    assert ("GET", "/api/folders") in calls(grafana)
    assert len(grafana.folders) == 1
    assert {d["folderUid"] for d in grafana.dashboards.values()} == {"abc123"}


def test_wrong_token_is_a_clear_error(grafana: FakeGrafana) -> None:
    result = push(grafana, token="wrong")
    assert result.exit_code == 1
    assert "rejected the token (401 Unauthorized)" in result.output
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)
    assert grafana.dashboards == {}


def test_unreachable_grafana_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["grafana", "push", "--url", f"http://127.0.0.1:{free_port()}",
                                       "--token", TOKEN, "--timeout", "3"])  # fmt: skip
    assert result.exit_code == 1
    assert "cannot reach Grafana at http://127.0.0.1:" in result.output
    assert "connection refused" in result.output and "Traceback" not in result.output


def test_editor_token_without_datasource_rights(grafana: FakeGrafana) -> None:
    grafana.datasource_role_ok = False
    result = push(grafana)
    assert result.exit_code == 1
    assert "403 Forbidden" in result.output and "--no-datasource" in result.output
    grafana.requests.clear()
    result = push(grafana, "--no-datasource")
    assert result.exit_code == 0, result.output
    assert not [p for _, p in calls(grafana) if "datasource" in p]
    assert len(grafana.dashboards) == len(dashboards())
