"""``fedsentinel demo``: the path a user cares about, with output a person can read."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

console = Console(stderr=True)


def _quiet_logs(verbose: bool) -> None:
    """Per-request HTTP logs (httpx, uvicorn access) and the service's start-up lines only with -v."""
    level = logging.INFO if verbose else logging.WARNING
    for name in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("fedsentinel").setLevel(logging.INFO if verbose else logging.ERROR)


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/demo"),
    show_default=True,
    help="Where the demo's SQLite store, report and server data go (wiped first).",
)
@click.option(
    "--port", type=int, default=0, help="Port for the demo service (default: a free one)."
)
@click.option(
    "--serve/--no-serve",
    default=False,
    show_default=True,
    help="Keep the service, Prometheus and Alertmanager up afterwards and print their URLs (Ctrl-C stops).",
)
@click.option(
    "--rounds",
    type=click.IntRange(13, 1000),
    help="Rounds to simulate (default: the scenario's 25).",
)
@click.option(
    "--alert-timeout",
    type=click.FloatRange(1, 3600),
    default=120,
    show_default=True,
    help="Seconds to wait for the drift alert to arrive.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the HTML report (default: DATA_DIR/report-demo.html).",
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Show per-request HTTP logs and the service's log."
)
def demo(data_dir: Path, port: int, serve: bool, rounds: int | None, alert_timeout: float,
         report_path: Path | None, verbose: bool) -> None:  # fmt: skip
    """Run the service with Prometheus and Alertmanager, simulate a federation with injected faults,
    show the drift alert arriving at the service's webhook, and write the HTML report."""
    from monitor.demo.run import Demo, DemoError, DemoOptions, prepare_data_dir

    _quiet_logs(verbose)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the servers too, like Ctrl-C
    options = DemoOptions(data_dir=data_dir, port=port, rounds=rounds, alert_timeout=alert_timeout,
                          report=report_path)  # fmt: skip
    try:
        prepare_data_dir(data_dir)
        with Demo(options, console) as running:
            result = running.run()
            _print_result(result)
            if serve:
                _serve(result)
        stopped = ", ".join(running.stopped)
        console.print(f"stopped {stopped}" + ("" if serve else "; --serve keeps them up to browse"))
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        console.print("interrupted: stopped everything the demo started")
        raise SystemExit(130) from None


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _serve(result: Any) -> None:
    urls = {
        "runs and reports": f"{result.service_url}/",
        "this run's report": f"{result.service_url}/api/v1/runs/{result.run_id}/report",
        "API docs": f"{result.service_url}/docs",
        "alerts received": f"{result.service_url}/api/v1/alerts",
    }
    if result.prometheus_url:
        urls["Prometheus"] = result.prometheus_url
        urls["Prometheus alerts (API)"] = f"{result.prometheus_url}/api/v1/alerts"
        urls["Alertmanager"] = result.alertmanager_url
    console.print("[bold]serving until Ctrl-C:[/]")
    for label, url in urls.items():
        console.print(f"  {label}: {url}", soft_wrap=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def _print_alert(alert: dict[str, Any]) -> None:
    labels, annotations = alert["labels"], alert["annotations"]
    lines = [
        f"[bold]{alert['alertname']}[/] ({alert['severity']}) run {alert['run_id']}, client {alert['client_id']}",
        annotations.get("summary", ""),
        f"received {alert['received_at']} by receiver {alert['receiver']}; firing since {alert['starts_at']}",
        f"runbook: {annotations.get('runbook_url', '-')}; labels: "
        + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())),
    ]
    console.print(
        Panel("\n".join(lines), title="alert received at the service's webhook", border_style="red")
    )


def _print_result(result: Any) -> None:
    health = result.detail["health"]
    summary = Table(title=f"run {result.run_id}", show_header=False)
    for key in ("rounds_closed", "clients_seen", "reports", "global_eval_accuracy", "centralized_gap",
                "last_round_participation_ratio", "open_findings"):  # fmt: skip
        value = health[key]
        summary.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(summary)
    truth = Table(title="injected faults (ground truth)")
    for column in ("client", "fault", "onset round", "severity"):
        truth.add_column(column)
    for row in result.ground_truth:
        truth.add_row(*(str(row.get(k)) for k in ("client_id", "fault", "onset_round", "severity")))
    console.print(truth)
    findings = Table(title=f"findings ({result.findings['total']})")
    for column in ("kind", "severity", "client", "rounds", "message"):
        findings.add_column(column)
    for f in result.findings["items"]:
        findings.add_row(f["kind"], f["severity"], f["client_id"] or "-",
                         f"{f['first_round']}-{f['last_round']}", f["message"])  # fmt: skip
    console.print(findings)
    if result.alert is not None:
        _print_alert(result.alert)
    size = result.report_path.stat().st_size / 1e6
    console.print(f"report: {result.report_path} ({size:.1f} MB, opens offline in any browser)")
    steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.steps.items())
    console.print(f"demo took {result.seconds:.0f} s ({steps})")
