"""Running the service: in this process (a thread, for the demo) or as uvicorn workers."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from monitor.app import create_app
from monitor.http_protocol import PROTOCOL, protocol_with_deadline
from monitor.settings import Settings


def uvicorn_options(settings: Settings) -> dict[str, object]:
    """Connection limits for ``uvicorn.run``/``uvicorn.Config`` from the settings (README, "Running
    the service"): keep-alive and header deadlines, and the optional connection cap."""
    return {
        "http": PROTOCOL,
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
        "limit_concurrency": settings.max_connections,
    }


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerThread:
    """A uvicorn server in a background thread; ``with ServerThread(settings) as url: ...``."""

    def __init__(self, settings: Settings, *, log_level: str = "warning") -> None:
        if settings.port == 0:
            settings = settings.model_copy(update={"port": free_port(settings.host)})
        self.settings = settings
        options = {
            **uvicorn_options(settings),
            "http": protocol_with_deadline(settings.header_timeout_seconds),
        }
        config = uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            **options,  # type: ignore[arg-type]
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="fedsentinel-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
