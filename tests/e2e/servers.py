"""Real Prometheus and Alertmanager on free loopback ports, configured from dashboards/ (fixtures re-exported by conftest.py).

``prometheus_factory(service_url=..., alertmanager_url=...)`` and
``alertmanager_factory(webhook_url=...)`` start the Debian binaries with a
temporary data directory and a configuration derived from the project's own
``dashboards/prometheus/prometheus.yml`` and
``dashboards/alertmanager/alertmanager.yml`` (targets rewritten to loopback,
intervals shortened for tests). Every process started is stopped at teardown,
also when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from monitor.server import free_port

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
PROMETHEUS_BIN = "prometheus"
ALERTMANAGER_BIN = "prometheus-alertmanager"


def _binary(name: str) -> str:
    found = shutil.which(name) or (
        shutil.which("alertmanager") if name == ALERTMANAGER_BIN else None
    )
    if found is None:
        message = f"{name} is not installed (Debian packages prometheus, prometheus-alertmanager)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _hostport(url: str) -> str:
    return urlsplit(url).netloc


class ManagedProcess:
    """A server subprocess; ``start`` waits for its readiness URL; ``stop`` always reaps it."""

    def __init__(self, name: str, args: list[str], ready_url: str, log_path: Path) -> None:
        self.name = name
        self.args = args
        self.ready_url = ready_url
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self, timeout: float = 30) -> ManagedProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.ready_url, timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Prometheus(ManagedProcess):
    def __init__(self, url: str, args: list[str], log_path: Path, config: dict[str, Any]) -> None:
        super().__init__("prometheus", args, f"{url}/-/ready", log_path)
        self.url = url
        self.config = config

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def alerts(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]


class Alertmanager(ManagedProcess):
    def __init__(self, url: str, args: list[str], log_path: Path, config: dict[str, Any]) -> None:
        super().__init__("alertmanager", args, f"{url}/-/ready", log_path)
        self.url = url
        self.config = config


def prometheus_config(
    service_url: str, alertmanager_url: str | None, interval: str = "1s"
) -> dict[str, Any]:
    """dashboards/prometheus/prometheus.yml with loopback targets and short intervals."""
    config = yaml.safe_load((DASHBOARDS / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(DASHBOARDS / "prometheus" / p) for p in config["rule_files"]]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "fedsentinel"]
    for job in jobs:
        job["scrape_timeout"] = interval
        job["static_configs"] = [{"targets": [_hostport(service_url)]}]
    config["scrape_configs"] = jobs
    if alertmanager_url:
        config["alerting"]["alertmanagers"] = [
            {"static_configs": [{"targets": [_hostport(alertmanager_url)]}]}
        ]
    else:
        config.pop("alerting", None)
    return config


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """dashboards/alertmanager/alertmanager.yml with the webhook on loopback and 1 s grouping."""
    config = yaml.safe_load((DASHBOARDS / "alertmanager" / "alertmanager.yml").read_text())

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (
            ("group_wait", "1s"),
            ("group_interval", "1s"),
            ("repeat_interval", "1m"),
        ):
            if key in route or route is config["route"]:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url
    return config


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Callable[..., Alertmanager]]:
    started: list[Alertmanager] = []

    def start(webhook_url: str) -> Alertmanager:
        binary = _binary(ALERTMANAGER_BIN)
        port = free_port()
        root = tmp_path / f"alertmanager-{port}"
        (root / "data").mkdir(parents=True)
        config = alertmanager_config(webhook_url)
        (root / "alertmanager.yml").write_text(yaml.safe_dump(config))
        url = f"http://127.0.0.1:{port}"
        am = Alertmanager(
            url,
            [binary, f"--config.file={root / 'alertmanager.yml'}", f"--storage.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=info"],
            root / "alertmanager.log",
            config,
        )  # fmt: skip
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
        binary = _binary(PROMETHEUS_BIN)
        port = free_port()
        root = tmp_path / f"prometheus-{port}"
        (root / "data").mkdir(parents=True)
        config = prometheus_config(service_url, alertmanager_url, interval)
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        url = f"http://127.0.0.1:{port}"
        prom = Prometheus(
            url,
            [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            root / "prometheus.log",
            config,
        )  # fmt: skip
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
