"""``fedsentinel report RUN``: write a run's offline HTML report from the store or a running service."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from monitor.settings import Settings

console = Console(stderr=True)


def _from_store(run_id: str, database_url: str | None, data_dir: Path | None) -> str:
    from monitor.errors import NotFound
    from monitor.report import run_report_html
    from monitor.store import Store

    overrides = {"database_url": database_url, "data_dir": data_dir}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if settings.database_url is None and not (settings.data_dir / "fedsentinel.db").exists():
        raise click.ClickException(
            f"no store at {settings.data_dir / 'fedsentinel.db'} (use --data-dir or --database-url)"
        )
    try:
        store = Store(
            settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
    except Exception as exc:  # noqa: BLE001  (a CLI error, not a traceback)
        raise click.ClickException(f"cannot open the store: {exc}") from exc
    try:
        with store.read_session() as session:
            return run_report_html(session, run_id)
    except NotFound as exc:
        raise click.ClickException(f"{exc} in {settings.resolved_database_url}") from exc
    finally:
        store.dispose()


def _from_service(run_id: str, url: str, api_key: str | None) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(
            f"{url.rstrip('/')}/api/v1/runs/{run_id}/report", headers=headers, timeout=120
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from exc
    if response.status_code != 200:
        raise click.ClickException(f"{url} answered {response.status_code}: {response.text[:300]}")
    return response.text


@click.command()
@click.argument("run_id")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file (default: report-RUN.html).",
)
@click.option(
    "--url", help="Fetch the report from this running service instead of reading the store."
)
@click.option(
    "--api-key",
    envvar="FEDSENTINEL_API_KEY",
    help="Read-scoped key for --url (or FEDSENTINEL_API_KEY).",
)
@click.option(
    "--database-url",
    help="Store to read (FEDSENTINEL_DATABASE_URL); default: SQLite in --data-dir.",
)
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="FEDSENTINEL_DATA_DIR."
)
def report(
    run_id: str,
    out: Path | None,
    url: str | None,
    api_key: str | None,
    database_url: str | None,
    data_dir: Path | None,
) -> None:
    """Write RUN's report: one self-contained HTML file that opens offline in any browser."""
    page = (
        _from_service(run_id, url, api_key) if url else _from_store(run_id, database_url, data_dir)
    )
    out = out or Path(f"report-{run_id}.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    console.print(f"report of run {run_id}: {out} ({out.stat().st_size / 1e6:.1f} MB)")
