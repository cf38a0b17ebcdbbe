"""docker-compose.yml and the Dockerfile: the file parses, mounted paths exist, hosts and ports agree.

No Docker engine runs on these machines; Debian's ``docker-compose`` (1.29)
validates and normalises the file without one (``docker-compose config``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from simulator.scenario import Scenario
from tests.dashboards.helpers import GRAFANA, ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (named volumes left out)."""
    out = {}
    for spec in SERVICES[service].get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith("."):
            out[target] = (ROOT / source).resolve()
    return out


def published(service: str) -> dict[int, int]:
    """Container port -> host port."""
    return {int(c): int(h) for h, c in (p.split(":") for p in SERVICES[service].get("ports", []))}


def flag(service: str, name: str) -> str:
    [value] = [a.split("=", 1)[1] for a in SERVICES[service]["command"] if a.startswith(f"{name}=")]
    return value


def hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    assert parts.hostname and parts.port, url
    return parts.hostname, parts.port


def test_docker_compose_config_parses() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        message = "docker-compose is not installed (Debian package docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    for args in ([], ["--profile", "demo"]):
        result = subprocess.run(
            [binary, "-f", str(COMPOSE_FILE), *args, "config"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        normalised = yaml.safe_load(result.stdout)["services"]
        assert set(normalised) == {"fedsentinel", "prometheus", "alertmanager", "grafana", "demo"}
        assert normalised["demo"]["profiles"] == ["demo"]
        assert all("profiles" not in s for name, s in normalised.items() if name != "demo")


def test_every_mounted_path_exists() -> None:
    for name, service in SERVICES.items():
        for target, source in mounts(name).items():
            assert source.exists(), (
                f"{name}: {source} (mounted at {target}) is not in the repository"
            )
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file()
    assert set(COMPOSE["volumes"]) >= {
        spec.split(":")[0]
        for s in SERVICES.values()
        for spec in s.get("volumes", [])
        if not spec.startswith(".")
    }


def test_ports_and_urls_agree_across_files() -> None:
    prometheus_yml = yaml.safe_load((ROOT / "dashboards/prometheus/prometheus.yml").read_text())
    alertmanager_yml = yaml.safe_load(
        (ROOT / "dashboards/alertmanager/alertmanager.yml").read_text()
    )
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning/datasources/fedsentinel.yaml").read_text()
    )

    service_port = int(SERVICES["fedsentinel"]["environment"]["FEDSENTINEL_PORT"])
    prometheus_port = hostport(
        flag("prometheus", "--web.listen-address").replace(":", "localhost:", 1)
    )[1]
    alertmanager_port = hostport(
        flag("alertmanager", "--web.listen-address").replace(":", "localhost:", 1)
    )[1]
    assert (service_port, prometheus_port, alertmanager_port) == (8080, 9090, 9093)
    assert published("fedsentinel") == {service_port: 8080}
    assert published("prometheus") == {prometheus_port: 9090}
    assert published("alertmanager") == {alertmanager_port: 9093}
    assert published("grafana") == {3000: 3000}

    jobs = {j["job_name"]: j for j in prometheus_yml["scrape_configs"]}
    [fedsentinel_target] = jobs["fedsentinel"]["static_configs"][0]["targets"]
    assert hostport(fedsentinel_target) == ("fedsentinel", service_port)
    assert jobs["prometheus"]["static_configs"][0]["targets"] == [f"localhost:{prometheus_port}"]
    assert jobs["alertmanager"]["static_configs"][0]["targets"] == [
        f"alertmanager:{alertmanager_port}"
    ]
    [am_target] = prometheus_yml["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert hostport(am_target) == ("alertmanager", alertmanager_port)

    for receiver in alertmanager_yml["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hostport(hook["url"]) == ("fedsentinel", service_port)
            assert urlsplit(hook["url"]).path == "/api/v1/alerts/webhook"

    urls = {d["type"]: d["url"] for d in datasources["datasources"]}
    [prom_ds] = [d for d in datasources["datasources"] if d["type"] == "prometheus"]
    assert prom_ds["jsonData"]["timeInterval"] == prometheus_yml["global"]["scrape_interval"]
    assert hostport(urls["prometheus"]) == ("prometheus", prometheus_port)
    assert hostport(urls["alertmanager"]) == ("alertmanager", alertmanager_port)

    command = SERVICES["demo"]["command"]
    assert hostport(command[command.index("--url") + 1]) == ("fedsentinel", service_port)
    assert SERVICES["demo"]["depends_on"]["fedsentinel"]["condition"] == "service_healthy"
    assert f"127.0.0.1:{service_port}/readyz" in " ".join(
        SERVICES["fedsentinel"]["healthcheck"]["test"]
    )


def test_prometheus_and_alertmanager_get_the_projects_files() -> None:
    prom = mounts("prometheus")
    config_path = flag("prometheus", "--config.file")
    assert prom[config_path] == ROOT / "dashboards/prometheus/prometheus.yml"
    rule_globs = yaml.safe_load((ROOT / "dashboards/prometheus/prometheus.yml").read_text())[
        "rule_files"
    ]
    for pattern in rule_globs:  # relative to the config file, inside the container
        directory = str(Path(config_path).parent / Path(pattern).parent)
        assert prom[directory] == ROOT / "dashboards/prometheus/rules"
        assert list(prom[directory].glob(Path(pattern).name))
    am = mounts("alertmanager")
    assert (
        am[flag("alertmanager", "--config.file")]
        == ROOT / "dashboards/alertmanager/alertmanager.yml"
    )


def test_grafana_is_provisioned_with_the_generated_dashboards() -> None:
    graf = mounts("grafana")
    assert graf["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/fedsentinel.yaml").read_text())
    [p] = provider["providers"]
    assert p["type"] == "file" and p["orgId"] == 1 and p["allowUiUpdates"] is False
    assert graf[p["options"]["path"]] == GRAFANA
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / Path(home).relative_to(p["options"]["path"])).is_file()
    major, minor = (
        int(x) for x in re.search(r":(\d+)\.(\d+)", SERVICES["grafana"]["image"]).groups()
    )
    assert (major, minor) >= (12, 3), "schemaVersion 42 dashboards need Grafana 12.3 or newer"


def test_demo_scenario_is_mounted_and_valid() -> None:
    command = SERVICES["demo"]["command"]
    assert command[:2] == ["fedsentinel", "simulate"]
    path = command[command.index("--scenario") + 1]
    scenario = Scenario.from_file(mounts("demo")[path])
    assert scenario.faults and scenario.dp and scenario.dp.target_epsilon
    assert scenario.centralized_baseline and scenario.local_baselines


def test_dockerfile_builds_the_package_with_cpu_torch() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in dockerfile
    assert "torch==2.13.0" in (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^EXPOSE 8080$", dockerfile, re.M)
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.M))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= copied, f"the image misses packages: {packages - copied}"
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert not (packages | {"pyproject.toml", "README.md"}) & ignored
