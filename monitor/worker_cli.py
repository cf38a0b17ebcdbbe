"""``fedsentinel worker`` (analysis processes) and ``fedsentinel prune`` (compact old rounds)."""

from __future__ import annotations

import signal
from pathlib import Path

import click
from rich.console import Console

from monitor.settings import Settings

console = Console(stderr=True)

_DB = click.option(
    "--database-url",
    help="SQLAlchemy URL (FEDSENTINEL_DATABASE_URL); default: SQLite in --data-dir.",
)
_DIR = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="FEDSENTINEL_DATA_DIR."
)


def _settings(database_url: str | None, data_dir: Path | None, **more: object) -> Settings:
    overrides = {
        k: v
        for k, v in {"database_url": database_url, "data_dir": data_dir, **more}.items()
        if v is not None
    }
    try:
        return Settings(**overrides)
    except ValueError as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc


def _open_store(settings: Settings):  # type: ignore[no-untyped-def]
    from monitor.store import Store

    try:
        store = Store(
            settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        store.create_schema()
    except Exception as exc:  # noqa: BLE001  (a CLI error, not a traceback)
        raise click.ClickException(f"cannot open the store: {exc}") from exc
    return store


@click.command()
@_DB
@_DIR
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0.01),
    help="FEDSENTINEL_ANALYSIS_POLL_SECONDS (default 1).",
)
@click.option("--once", is_flag=True, help="Analyse what is pending now, then exit.")
def worker(
    database_url: str | None, data_dir: Path | None, poll_seconds: float | None, once: bool
) -> None:
    """Analyse closed rounds from the store (run the service with FEDSENTINEL_ANALYSIS=external).

    Start as many as you like, on any machine that reaches the store: rounds are claimed
    with a row lock (SKIP LOCKED on PostgreSQL), analysed once each, in round order per run.
    SIGTERM or Ctrl-C stops after the round in progress.
    """
    from monitor.engine import build_engine
    from monitor.notifier import notifier_from_settings
    from monitor.worker import AnalysisWorker

    settings = _settings(database_url, data_dir, analysis_poll_seconds=poll_seconds)
    store = _open_store(settings)
    notifier = notifier_from_settings(settings)
    analysis = AnalysisWorker(
        build_engine(store, settings, on_findings_opened=notifier),
        poll_seconds=settings.analysis_poll_seconds,
    )
    try:
        if once:
            console.print(f"analysed {analysis.run_once()} round(s)")
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: analysis.stop(timeout=0))
        console.print(
            f"fedsentinel worker on store {store.dialect}; polling every {settings.analysis_poll_seconds} s"
        )
        analysis.serve()
    finally:
        if notifier is not None:
            notifier.close()
        store.dispose()


@click.command()
@_DB
@_DIR
@click.option(
    "--retention-rounds",
    type=click.IntRange(min=1),
    help="Keep arrays of a run's newest N analysed rounds (FEDSENTINEL_RETENTION_ROUNDS, default 1000).",
)
@click.option(
    "--run", "run_ids", multiple=True, help="Only these runs (repeatable); default every run."
)
def prune(
    database_url: str | None,
    data_dir: Path | None,
    retention_rounds: int | None,
    run_ids: tuple[str, ...],
) -> None:
    """Compact client arrays (sketches, histograms) of rounds outside the retention window.

    Scalars, per-round scores, detector state and findings stay; the history API marks
    compacted rounds (arrays_compacted). Safe while the service runs.
    """
    from monitor.store.prune import compact_run, runs_with_history

    settings = _settings(database_url, data_dir, retention_rounds=retention_rounds)
    store = _open_store(settings)
    try:
        with store.read_session() as session:
            known = runs_with_history(session)
        unknown = sorted(set(run_ids) - set(known))
        if unknown:
            raise click.ClickException(f"no analysed run named {', '.join(unknown)}")
        rounds = reports = 0
        for run_id in run_ids or known:
            with store.write_session() as session:
                result = compact_run(session, run_id, settings.retention_rounds)
            rounds += len(result.rounds)
            reports += result.reports
            if result.rounds:
                console.print(
                    f"{run_id}: compacted rounds {result.rounds[0]}-{result.rounds[-1]} ({result.reports} reports)"
                )
        console.print(
            f"compacted {rounds} round(s), {reports} report(s); retention {settings.retention_rounds} rounds"
        )
    finally:
        store.dispose()
