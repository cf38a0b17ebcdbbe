"""Prometheus and Alertmanager from Debian's packages on free loopback ports, with the project's configs.

Used by ``fedsentinel demo`` and by the end-to-end tests (tests/e2e/servers.py):
the configuration is the project's own ``dashboards/prometheus/prometheus.yml``
(rules included) and ``dashboards/alertmanager/alertmanager.yml``, with targets
rewritten to loopback and intervals shortened so an alert travels in seconds.
Every process is started with a readiness wait and stopped with terminate, then
kill after a grace period.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from monitor.server import free_port

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
PROMETHEUS_BIN = "prometheus"
ALERTMANAGER_BIN = "prometheus-alertmanager"
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"


def find_binary(name: str) -> str | None:
    """The binary's path; Debian names Alertmanager ``prometheus-alertmanager``, upstream ``alertmanager``."""
    return shutil.which(name) or (
        shutil.which("alertmanager") if name == ALERTMANAGER_BIN else None
    )


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
            # Own session: a Ctrl-C in the terminal reaches the demo, which stops this in order.
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
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

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def make_alertmanager(binary: str, root: Path, webhook_url: str) -> Alertmanager:
    """An Alertmanager (not started) with its config and data under ``root``."""
    port = free_port()
    root = root / f"alertmanager-{port}"
    (root / "data").mkdir(parents=True)
    config = alertmanager_config(webhook_url)
    (root / "alertmanager.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    args = [binary, f"--config.file={root / 'alertmanager.yml'}", f"--storage.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=info"]  # fmt: skip
    return Alertmanager(url, args, root / "alertmanager.log", config)


def make_prometheus(
    binary: str, root: Path, service_url: str, alertmanager_url: str | None, interval: str = "1s"
) -> Prometheus:
    """A Prometheus (not started) scraping ``service_url`` with the project's rules, data under ``root``."""
    port = free_port()
    root = root / f"prometheus-{port}"
    (root / "data").mkdir(parents=True)
    config = prometheus_config(service_url, alertmanager_url, interval)
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    args = [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    return Prometheus(url, args, root / "prometheus.log", config)
