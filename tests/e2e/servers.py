"""Real Prometheus and Alertmanager on free loopback ports, configured from dashboards/ (fixtures re-exported by conftest.py).

``prometheus_factory(service_url=..., alertmanager_url=...)`` and
``alertmanager_factory(webhook_url=...)`` start the Debian binaries with a
temporary data directory and a configuration derived from the project's own
``dashboards/prometheus/prometheus.yml`` and
``dashboards/alertmanager/alertmanager.yml`` (targets rewritten to loopback,
intervals shortened for tests; see monitor/demo/stack.py, which
``fedsentinel demo`` uses too). Every process started is stopped at teardown,
also when the test fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.demo.stack import (  # noqa: F401  (re-exported for the tests)
    ALERTMANAGER_BIN,
    DASHBOARDS,
    PROMETHEUS_BIN,
    Alertmanager,
    ManagedProcess,
    Prometheus,
    alertmanager_config,
    find_binary,
    make_alertmanager,
    make_prometheus,
    prometheus_config,
)


def _binary(name: str) -> str:
    found = find_binary(name)
    if found is None:
        message = f"{name} is not installed (Debian packages prometheus, prometheus-alertmanager)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Callable[..., Alertmanager]]:
    started: list[Alertmanager] = []

    def start(webhook_url: str) -> Alertmanager:
        am = make_alertmanager(_binary(ALERTMANAGER_BIN), tmp_path, webhook_url)
        started.append(am)
        return am.start()  # type: ignore[return-value]

    try:
        yield start
    finally:
        for am in started:
            am.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    started: list[Prometheus] = []

    def start(
        service_url: str, alertmanager_url: str | None = None, interval: str = "1s"
    ) -> Prometheus:
        prom = make_prometheus(
            _binary(PROMETHEUS_BIN), tmp_path, service_url, alertmanager_url, interval
        )
        started.append(prom)
        return prom.start(timeout=60)  # type: ignore[return-value]

    try:
        yield start
    finally:
        for prom in started:
            prom.stop()


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
