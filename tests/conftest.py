"""Shared fixtures: stores on SQLite and on the machine's PostgreSQL, the app, real servers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import SQLModel

from monitor.app import create_app
from monitor.server import free_port
from monitor.settings import Settings
from monitor.store import Store

PG_ADMIN_URL = os.environ.get("FEDSENTINEL_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_HOST_URL = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")


def _postgres_unavailable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL at {PG_ADMIN_URL} is not answering ({exc.__class__.__name__}: {exc})"


def require_postgres() -> None:
    """Skip (locally) or fail (in CI) when the PostgreSQL server is not answering."""
    reason = _postgres_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests (.ci/run starts the server)")
        pytest.skip(reason)


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new database on the local PostgreSQL server, dropped afterwards; yields its URL."""
    require_postgres()
    import psycopg

    name = f"fedsentinel_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_HOST_URL}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for the whole session (tables are dropped between tests)."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fedsentinel.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    store = Store(url)
    SQLModel.metadata.drop_all(store.write_engine)
    store.dispose()
    yield url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    store.create_schema()
    yield store
    store.dispose()


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path, **overrides)


@pytest.fixture
def app_factory(store: Store, tmp_path: Path):  # type: ignore[no-untyped-def]
    clients: list[TestClient] = []

    def build(**overrides: object) -> TestClient:
        client = TestClient(create_app(make_settings(tmp_path, **overrides), store=store))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def api(app_factory) -> TestClient:  # type: ignore[no-untyped-def]
    return app_factory()


class ServiceProcess:
    """``fedsentinel serve`` in a subprocess on a free loopback port; stop() always cleans up."""

    def __init__(self, env: dict[str, str], port: int | None = None, workers: int = 1) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **env}
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(env.get("FEDSENTINEL_DATA_DIR", ".")) / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> ServiceProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed by stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.workers)],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited early: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"service did not become ready: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None


@pytest.fixture
def service_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[ServiceProcess] = []

    def start(database_url: str | None = None, **kwargs: object) -> ServiceProcess:
        env = {"FEDSENTINEL_DATA_DIR": str(tmp_path)}
        if database_url:
            env["FEDSENTINEL_DATABASE_URL"] = database_url
        proc = ServiceProcess(env, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
