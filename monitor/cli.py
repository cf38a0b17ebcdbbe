"""The ``fedsentinel`` command."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from monitor import __version__
from monitor.settings import Settings

console = Console(stderr=True)


class LazyGroup(click.Group):
    """A group whose heavy subcommands (torch, the simulator) are imported only when run.

    ``fedsentinel serve`` must not pay for PyTorch: each entry of
    ``LAZY_COMMANDS`` maps a command name to ``"module:attribute"``.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


LAZY_COMMANDS: dict[str, str] = {
    "simulate": "simulator.cli:simulate",
    "evaluate": "monitor.evaluate_cli:evaluate",
    "dashboards": "monitor.dashboards.cli:dashboards",
    "grafana": "monitor.dashboards.cli:grafana",
    "report": "monitor.report.cli:report",
    "demo": "monitor.demo.cli:demo",
    "worker": "monitor.worker_cli:worker",
    "prune": "monitor.worker_cli:prune",
}


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="fedsentinel")
@click.option("-v", "--verbose", is_flag=True, help="Also log every HTTP request the SDK makes.")
def main(verbose: bool) -> None:
    """fedsentinel: observability for federated learning."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.INFO if verbose else logging.WARNING)


@main.command()
@click.option("--host", help="Address to bind (FEDSENTINEL_HOST; default 127.0.0.1).")
@click.option("--port", type=int, help="Port (FEDSENTINEL_PORT; default 8080).")
@click.option("--workers", type=click.IntRange(1, 64), help="uvicorn worker processes (FEDSENTINEL_WORKERS).")
@click.option("--database-url", help="SQLAlchemy URL (FEDSENTINEL_DATABASE_URL); default: SQLite in --data-dir.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="FEDSENTINEL_DATA_DIR.")
def serve(
    host: str | None, port: int | None, workers: int | None, database_url: str | None, data_dir: Path | None
) -> None:
    """Start the service (uvicorn). API keys come from FEDSENTINEL_API_KEYS only, never from flags."""
    import uvicorn

    from monitor.server import uvicorn_options
    from monitor.store import Store

    overrides = {
        "HOST": host,
        "PORT": None if port is None else str(port),
        "WORKERS": None if workers is None else str(workers),
        "DATABASE_URL": database_url,
        "DATA_DIR": None if data_dir is None else str(data_dir),
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"FEDSENTINEL_{name}"] = value  # workers read the same settings
    try:
        settings = Settings()
        store = Store(settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous)
        store.create_schema()  # once, before workers race to do it
        store.dispose()
    except Exception as exc:  # noqa: BLE001  (a CLI error, not a traceback)
        raise click.ClickException(f"cannot open the store: {exc}") from exc
    console.print(
        f"fedsentinel {__version__} on http://{settings.host}:{settings.port} "
        f"({settings.workers} worker(s), store {store.dialect}); API docs at /docs"
    )
    uvicorn.run(
        "monitor.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        **uvicorn_options(settings),  # keep-alive and header deadlines, connection cap
    )


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="Service base URL.")
@click.option("--api-key", envvar="FEDSENTINEL_API_KEY", help="Write-scoped key (or FEDSENTINEL_API_KEY).")
def replay(file: Path, url: str, api_key: str | None) -> None:
    """Send a JSON-lines file of records (spool / simulator output) to the service, in order."""
    from collectors.client import MonitorClient, MonitorError
    from collectors.sink import read_records

    try:
        records = list(read_records(file))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    counts = {"register_run": 0, "report": 0, "close_round": 0}
    with MonitorClient(url, api_key=api_key) as client, _progress() as progress:
        task = progress.add_task(f"replaying {file.name}", total=len(records))
        for lineno, record in records:
            try:
                client.send_record(record)
            except MonitorError as exc:
                raise click.ClickException(f"{file}:{lineno}: {exc}") from exc
            counts[record["op"]] += 1
            progress.advance(task)
    console.print(
        f"replayed {len(records)} records: {counts['register_run']} run registrations, "
        f"{counts['report']} report batches, {counts['close_round']} round closes"
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )


