"""End-to-end fixtures: real Prometheus and Alertmanager processes (see servers.py)."""

from tests.e2e.servers import alertmanager_factory, prometheus_factory  # noqa: F401
from tests.report.browser import browser_page, chromium  # noqa: F401
