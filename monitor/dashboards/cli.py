"""``fedsentinel dashboards build|check`` and ``fedsentinel grafana push`` (registered lazily in monitor/cli.py)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import click
from rich.console import Console

console = Console(stderr=True)

DIR_OPTION = click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("dashboards/grafana"),
    show_default=True, help="Where the dashboard JSON files live (the provisioning provider reads them).",
)  # fmt: skip


@click.group()
def dashboards() -> None:
    """Grafana dashboards generated from code (monitor/dashboards)."""


@dashboards.command()
@DIR_OPTION
def build(directory: Path) -> None:
    """Write every dashboard's JSON into DIR (one <uid>.json per dashboard)."""
    from monitor.dashboards.build import write

    for path in write(directory):
        console.print(f"wrote {path}")


@dashboards.command()
@DIR_OPTION
def check(directory: Path) -> None:
    """Fail when the JSON in DIR differs from what the code generates."""
    from monitor.dashboards.build import check as check_dir

    problems = check_dir(directory)
    if problems:
        raise click.ClickException("\n".join(problems))
    console.print(f"{directory}: dashboards match the code")


@click.group()
def grafana() -> None:
    """Work with an existing Grafana over its HTTP API."""


def _http_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(
            f"{value!r} is not an http(s) URL, e.g. http://grafana.example.org:3000"
        )
    return value


@grafana.command()
@click.option(
    "--url", required=True, callback=_http_url, help="Grafana base URL, e.g. http://127.0.0.1:3000."
)
@click.option(
    "--token",
    required=True,
    envvar="GRAFANA_TOKEN",
    help="Service-account token (or GRAFANA_TOKEN).",
)
@click.option(
    "--folder", default="fedsentinel", show_default=True, help="Folder to put the dashboards in."
)
@click.option(
    "--prometheus-url",
    default="http://localhost:9090",
    show_default=True,
    help="URL Grafana (its server) uses to reach Prometheus, for the datasource.",
)
@click.option(
    "--datasource/--no-datasource",
    default=True,
    show_default=True,
    help="Create or update the Prometheus datasource the panels use (needs an Admin token).",
)
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds per HTTP request."
)
def push(
    url: str, token: str, folder: str, prometheus_url: str, datasource: bool, timeout: float
) -> None:
    """Create or update the dashboards (and their datasource) in an existing Grafana."""
    from monitor.dashboards.push import PushError
    from monitor.dashboards.push import push as do_push

    try:
        result = do_push(url, token, folder=folder, prometheus_url=prometheus_url, datasource=datasource,
                         timeout=timeout)  # fmt: skip
    except PushError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(f"datasource: {result.datasource}; folder uid: {result.folder_uid}")
    for answer in result.dashboards:
        console.print(f"dashboard {answer.get('uid')}: version {answer.get('version', '?')} "
                      f"{url.rstrip('/')}{answer.get('url', '')}")  # fmt: skip
