"""Service health: fedsentinel's own ingest, latency, signal time and scrape cost."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as model

from monitor.dashboards.kit import DATASOURCE, Board, query, stat_panel, steps, timeseries_panel

UID = "fedsentinel-service"
I = 'instance=~"$instance"'  # noqa: E741
HTTP = "fedsentinel_http_request_duration_seconds"
SIGNAL = "fedsentinel_signal_computation_duration_seconds"
RATE = "$__rate_interval"


def instance_variable() -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable("instance")
        .label("Instance")
        .description(
            "fedsentinel instances (one per scrape target; every worker of one answers alike)."
        )
        .datasource(DATASOURCE)
        .query("label_values(fedsentinel_store_up, instance)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .include_all(True)
        .all_value(".*")
        .multi(True)
    )


def _quantile(q: float, metric: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{I}}}[{RATE}])))"


def build() -> dict[str, Any]:
    b = Board(
        UID,
        "fedsentinel / Service health",
        "fedsentinel itself: reports ingested, HTTP request rate, latency and errors, time to compute a "
        "round's signals, and what a Prometheus scrape costs.",
        tags=["service"],
        time_from="now-1h",
    ).variable(instance_variable())

    b.row("Up")
    b.add(stat_panel("Scrape target up", "1 if Prometheus' latest scrape of the instance succeeded "
                     "(FedsentinelDown fires after 2 minutes at 0).", [query(f'up{{job="fedsentinel", {I}}}')],
                     decimals=0, graph=False, thresholds=steps((1, "green"), base="red")), 6, 4)  # fmt: skip
    b.add(stat_panel("Store readable", "1 if the latest scrape could read the store "
                     "(FedsentinelStoreUnavailable fires after 2 minutes at 0).",
                     [query(f"min(fedsentinel_store_up{{{I}}})")], decimals=0, graph=False,
                     thresholds=steps((1, "green"), base="red")), 6, 4)  # fmt: skip
    b.add(stat_panel("Store errors", "Database errors answered with 503 over the dashboard's time range.",
                     [query(f"sum(increase(fedsentinel_store_errors_total{{{I}}}[$__range]))")], decimals=0,
                     thresholds=steps((1, "red"))), 6, 4)  # fmt: skip
    b.add(stat_panel("Runs exported", "Runs with series in the latest scrape (idle runs age out).",
                     [query(f"max(fedsentinel_runs_exported{{{I}}})")], decimals=0), 6, 4)  # fmt: skip

    b.row("Ingest and requests")
    b.add(timeseries_panel(
        "Reports ingested",
        "Client reports stored per second (duplicates not counted), from the store's count.",
        [query(f"max(rate(fedsentinel_reports_ingested_total{{{I}}}[{RATE}]))", "reports/s")],
        unit="ops", minimum=0,
    ), 12)  # fmt: skip
    b.add(timeseries_panel(
        "Requests by route and status",
        "HTTP requests per second by route template and status code.",
        [query(f"sum by (route, code) (rate({HTTP}_count{{{I}}}[{RATE}]))", "{{route}} {{code}}")],
        unit="reqps", minimum=0, stacked=True, fill=30,
    ), 12)  # fmt: skip

    b.row("Latency")
    b.add(timeseries_panel(
        "Request latency",
        "Median, 95th and 99th percentile of HTTP request latency over every route (histogram quantiles).",
        [query(_quantile(0.5, HTTP), "p50"), query(_quantile(0.95, HTTP), "p95"), query(_quantile(0.99, HTTP), "p99")],
        unit="s", minimum=0, fill=0,
    ), 12)  # fmt: skip
    b.add(timeseries_panel(
        "p95 latency by route", "95th percentile of request latency per route template.",
        [query(_quantile(0.95, HTTP, "route"), "{{route}}")], unit="s", minimum=0, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Server errors", "Share of requests answered with a 5xx status.",
        [query(f'(sum(rate({HTTP}_count{{{I}, code=~"5.."}}[{RATE}])) or vector(0)) '
               f"/ sum(rate({HTTP}_count{{{I}}}[{RATE}]))", "5xx share")],
        unit="percentunit", minimum=0, thresholds=steps((0.01, "red")),
    ), 4)  # fmt: skip

    b.row("Signals")
    b.add(timeseries_panel(
        "Signal computation time",
        "Median and 95th percentile of the time to compute a round's signals and findings when it closes.",
        [query(_quantile(0.5, SIGNAL), "p50"), query(_quantile(0.95, SIGNAL), "p95")],
        unit="s", minimum=0, fill=0,
    ), 12)  # fmt: skip
    b.add(timeseries_panel(
        "Analysis time by run", "Time the engine took to analyse each run's latest round.",
        [query(f"max by (run) (fl_run_analysis_duration_seconds{{{I}}})", "{{run}}")], unit="s", minimum=0, fill=0,
    ), 12)  # fmt: skip
    b.add(timeseries_panel(
        "Analysis lag",
        "Closed rounds waiting for their analysis: the run furthest behind, and every run together "
        "(FedsentinelAnalysisLagging fires at 3 rounds for 5 minutes).",
        [query(f"max(fedsentinel_analysis_lag_rounds{{{I}}})", "furthest behind"),
         query(f"max(fedsentinel_analysis_pending_rounds{{{I}}})", "all runs")],
        minimum=0, decimals=0, fill=0, thresholds=steps((3, "red")),
    ), 12)  # fmt: skip
    b.add(timeseries_panel(
        "Oldest unanalysed close",
        "How long the oldest closed round has waited for its analysis (0 when the analysis is current).",
        [query(f"max(fedsentinel_analysis_oldest_pending_age_seconds{{{I}}})", "waited")],
        unit="s", minimum=0, fill=0, thresholds=steps((300, "red")),
    ), 12)  # fmt: skip

    b.row("Scrape")
    b.add(timeseries_panel(
        "Scrape duration",
        "Time the service took to build the domain metrics, and the whole scrape as Prometheus timed it.",
        [query(f"fedsentinel_exporter_scrape_duration_seconds{{{I}}}", "exporter {{instance}}"),
         query(f'scrape_duration_seconds{{job="fedsentinel", {I}}}', "Prometheus {{instance}}")],
        unit="s", minimum=0, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Scrape size",
        "Series the domain collector produced, and samples Prometheus scraped from the target in total.",
        [query(f"fedsentinel_exporter_series{{{I}}}", "domain series {{instance}}"),
         query(f'scrape_samples_scraped{{job="fedsentinel", {I}}}', "samples scraped {{instance}}")],
        minimum=0, decimals=0, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Per-client series cap",
        "Clients exported with per-client series, and clients of the latest round left out by the cap, per run.",
        [query(f"max by (run) (fl_run_clients_exported{{{I}}})", "exported {{run}}"),
         query(f"max by (run) (fl_run_clients_cut{{{I}}})", "cut {{run}}")],
        minimum=0, decimals=0, fill=0,
    ), 8)  # fmt: skip
    b.add(timeseries_panel(
        "Exporter errors", "Scrapes that failed to read the store, per instance.",
        [query(f"increase(fedsentinel_exporter_errors_total{{{I}}}[{RATE}])", "{{instance}}")],
        minimum=0, decimals=0, thresholds=steps((1, "red")),
    ), 24, 6)  # fmt: skip
    return b.build()
