"""Dashboard tests reuse the end-to-end harness (real Prometheus processes) of tests/e2e."""

from tests.e2e.servers import prometheus_factory  # noqa: F401
