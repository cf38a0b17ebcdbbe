"""The database engine: SQLite (default, WAL) or PostgreSQL, chosen by URL.

SQLite needs two things to be safe with several uvicorn workers: WAL (readers
never block the writer) and ``BEGIN IMMEDIATE`` for write transactions (a
writer takes the lock up front and waits ``busy_timeout`` for it, instead of
failing half-way when two deferred transactions both try to upgrade). Reads use
a second engine with plain deferred transactions so they never queue behind
writers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel, create_engine

from monitor.store import tables  # noqa: F401  (registers the tables)

log = logging.getLogger("fedsentinel.store")
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_engine(url: str, *, immediate: bool, synchronous: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def add_missing_columns(engine: Engine) -> list[str]:
    """Add columns that newer releases defined to tables an older release created.

    ``create_all`` creates missing tables but never alters existing ones; a
    store written by an earlier fedsentinel would otherwise fail on the first
    query naming a new column. Only nullable or defaulted columns are ever
    added, so this is safe on a live store. Returns ``table.column`` names added.
    """
    added: list[str] = []
    with engine.begin() as conn:
        inspector = inspect(conn)
        existing_tables = set(inspector.get_table_names())
        for table in SQLModel.metadata.sorted_tables:
            if table.name not in existing_tables:
                continue
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                ddl = column.type.compile(dialect=conn.dialect)
                default = _literal_default(column)
                clause = f" NOT NULL DEFAULT {default}" if default is not None else ""
                conn.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {ddl}{clause}')
                added.append(f"{table.name}.{column.name}")
    if added:
        log.info("store upgraded: added columns %s", ", ".join(added))
    return added


def _literal_default(column) -> str | None:  # type: ignore[no-untyped-def]
    """A column's Python-side scalar default as SQL (bool/int/str), else None (the column is nullable)."""
    default = getattr(column.default, "arg", None)
    if isinstance(default, bool):
        return "TRUE" if default else "FALSE"
    if isinstance(default, int | float):
        return repr(default)
    if isinstance(default, str):
        return "'" + default.replace("'", "''") + "'"
    return None


class Store:
    """Owns the engines; hands out sessions for reading and for writing."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 5) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if not parsed.database or parsed.database == ":memory:":
                raise ValueError(
                    "an in-memory SQLite database cannot be shared by the service's connections; "
                    "use a file (sqlite:///path/fedsentinel.db)"
                )
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.write_engine = _sqlite_engine(url, immediate=True, synchronous=sqlite_synchronous)
            self.read_engine = _sqlite_engine(url, immediate=False, synchronous=sqlite_synchronous)
        elif self.dialect == "postgresql":
            self.write_engine = create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
            self.read_engine = self.write_engine
        else:
            raise ValueError(f"unsupported database {self.dialect!r}: use sqlite or postgresql+psycopg")

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def create_schema(self, attempts: int = 5) -> None:
        """Create missing tables; safe when several workers start at once."""
        for attempt in range(attempts):
            try:
                SQLModel.metadata.create_all(self.write_engine)
                add_missing_columns(self.write_engine)
                return
            except DBAPIError as exc:  # a concurrent creator won the race
                if attempt == attempts - 1:
                    raise
                log.info("schema creation raced (%s); retrying", exc.__class__.__name__)
                time.sleep(0.2 * (attempt + 1))

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on any error."""
        with Session(self.write_engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        with Session(self.read_engine, expire_on_commit=False) as session:
            yield session

    def dispose(self) -> None:
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()
