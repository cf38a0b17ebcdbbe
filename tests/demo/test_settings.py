"""The demo's service settings ignore a real service's FEDSENTINEL_* store, keys and receivers."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.demo.run import DemoOptions, demo_settings


def test_demo_keeps_its_own_store_and_open_service_whatever_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDSENTINEL_DATABASE_URL", "postgresql+psycopg://prod@127.0.0.1/fl")
    monkeypatch.setenv("FEDSENTINEL_API_KEYS", '{"secret": ["admin"]}')
    monkeypatch.setenv("FEDSENTINEL_ALERT_WEBHOOK_TOKEN", "am-token")
    monkeypatch.setenv("FEDSENTINEL_NOTIFY_WEBHOOK_URL", "https://hooks.example.com/real")
    monkeypatch.setenv("FEDSENTINEL_PAGE_SIZE_MAX", "500")
    settings = demo_settings(DemoOptions(data_dir=tmp_path / "demo", port=0))
    assert settings.resolved_database_url.startswith("sqlite:")
    assert str(tmp_path / "demo" / "fedsentinel.db") in settings.resolved_database_url
    assert settings.api_keys == {} and settings.alert_webhook_token is None
    assert settings.notify_webhook_url is None and settings.notify_webhook_token is None
    assert settings.host == "127.0.0.1"
    assert settings.page_size_max == 500, "settings the demo does not own still apply"
