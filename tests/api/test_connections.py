"""Connections and bodies against a real uvicorn server, probed with raw sockets.

Deadlines are set small (a fraction of a second) so the tests are quick; each
check waits several times the deadline before it calls a connection "held",
so a loaded machine cannot make them fail.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from monitor.server import ServerThread
from monitor.settings import Settings

SLACK = 10.0  # seconds beyond a deadline before a connection counts as held open
KEY = "writer-key"


@contextmanager
def serve(tmp_path: Path, **overrides: object) -> Iterator[tuple[str, int]]:
    settings = Settings(data_dir=tmp_path, port=0, **overrides)
    with ServerThread(settings) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=SLACK)
    sock.settimeout(SLACK)
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes the connection (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def read_response(sock: socket.socket) -> bytes:
    """The status line and headers of one response (and whatever of the body came with them)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def trickle_until_closed(sock: socket.socket, data: bytes, bound: float) -> bool:
    """Send ``data`` one byte every 50 ms; True when the server closes the connection first."""
    sock.settimeout(0.05)
    deadline = time.monotonic() + bound
    for byte in data:
        if time.monotonic() > deadline:
            return False
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


@pytest.mark.e2e
def test_a_connection_that_sends_nothing_is_closed_within_the_header_deadline(tmp_path) -> None:
    with serve(tmp_path, header_timeout_seconds=0.5) as address:
        sock = connect(address)
        assert closed_by_server(sock, 0.5 + SLACK)
        sock.close()


@pytest.mark.e2e
def test_slow_headers_are_cut_off_at_the_header_deadline(tmp_path) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 10_000
    with serve(tmp_path, header_timeout_seconds=0.5) as address:
        sock = connect(address)
        assert trickle_until_closed(sock, request, 0.5 + SLACK)
        sock.close()


@pytest.mark.e2e
def test_keep_alive_idle_and_trickling_connections_are_closed(tmp_path) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with serve(tmp_path, keep_alive_timeout_seconds=0.5, header_timeout_seconds=0.8) as address:
        idle = connect(address)
        idle.sendall(request)
        assert read_response(idle).startswith(b"HTTP/1.1 200")
        assert closed_by_server(idle, 0.5 + SLACK)  # uvicorn's keep-alive timeout
        idle.close()
        # Each byte cancels uvicorn's keep-alive timer; the header deadline still holds.
        trickler = connect(address)
        trickler.sendall(request)
        assert read_response(trickler).startswith(b"HTTP/1.1 200")
        assert trickle_until_closed(
            trickler, request.removesuffix(b"\r\n") + b"X-Slow: " + b"a" * 10_000, 0.8 + SLACK
        )
        trickler.close()


@pytest.mark.e2e
def test_a_request_in_progress_is_not_cut_by_the_header_deadline(tmp_path) -> None:
    """A body slower than the header deadline but inside the body timeout is served."""
    body = b'{"run_id": "r1", "task": {"num_classes": 2}, "expected_clients": 1}'
    head = f"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    with serve(tmp_path, header_timeout_seconds=0.3, body_timeout_seconds=30) as address:
        sock = connect(address)
        sock.sendall(head.encode() + body[:10])
        time.sleep(1.0)  # past the header deadline, inside the body timeout
        sock.sendall(body[10:])
        assert read_response(sock).startswith(b"HTTP/1.1 201")
        sock.close()


@pytest.mark.e2e
def test_a_body_that_does_not_arrive_gets_408(tmp_path) -> None:
    head = b"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"
    with serve(tmp_path, body_timeout_seconds=0.5) as address:
        sock = connect(address)
        sock.sendall(head)
        response = read_response(sock)
        assert response.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in response
        sock.close()


@pytest.mark.e2e
def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(tmp_path) -> None:
    """The client declares 8 MiB and sends none of it: the 401 comes at once, not after the body."""
    head = (
        b"POST /api/v1/runs/r1/rounds/1/reports HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 8388608\r\n\r\n"
    )
    with serve(
        tmp_path, api_keys={KEY: ["write"], "reader": ["read"]}, body_timeout_seconds=600
    ) as address:
        for extra in (b"", b"Authorization: Bearer wrong\r\n", b"X-API-Key: reader\r\n"):
            sock = connect(address)
            sock.sendall(head.replace(b"Host: x\r\n", b"Host: x\r\n" + extra))
            response = read_response(sock)
            assert response.split(b" ")[1] in (b"401", b"403"), response
            assert b'"errors":[]' in response
            sock.close()


@pytest.mark.e2e
def test_large_uploads_beyond_the_slots_wait_then_get_503(tmp_path) -> None:
    head = (
        f"POST /api/v1/runs/r1/rounds/1/reports HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    ).encode()
    with serve(tmp_path, api_keys={KEY: ["write"]}, large_body_bytes=1000,
               max_concurrent_large_uploads=1, upload_slot_wait_seconds=0.3) as address:  # fmt: skip
        holder = connect(address)
        holder.sendall(head + b"{" * 100)  # holds the only slot while its body is read
        time.sleep(0.3)
        waiter = connect(address)
        waiter.sendall(head)
        refused = read_response(waiter)
        assert refused.startswith(b"HTTP/1.1 503") and b"retry-after: 2" in refused.lower()
        waiter.close()
        holder.sendall(b" " * 4900)  # the rest of its (invalid) body: answered, slot released
        assert read_response(holder).startswith(b"HTTP/1.1 422")
        holder.close()
        small = connect(address)  # a small body never needs a slot; a large one gets it again
        small.sendall(head.replace(b"5000", b"2") + b"{}")
        assert read_response(small).startswith(b"HTTP/1.1 422")
        small.close()
