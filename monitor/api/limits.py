"""ASGI middleware that guards request bodies: who may send one, how large, how many at once.

In this order, before a byte of the body is read:

1. **authentication**: a request that carries a body (POST, PUT, PATCH,
   DELETE) must present a key (or the webhook token) that may write; otherwise
   401/403 at once, so an anonymous client cannot make the service buffer
   16 MiB on its behalf;
2. **size**: a declared ``Content-Length`` over ``max_body_bytes`` gets 413;
3. **concurrency**: a body that is large (declared over ``large_body_bytes``,
   or of unknown length) waits for one of ``max_concurrent_large_uploads``
   slots, at most ``upload_slot_wait_seconds``, then gets 503 with
   ``Retry-After`` (the SDK retries 5xx with backoff). The slot is held until
   the answer is sent, because parsing a large body costs more memory than
   the body itself.

Then the body is read, still refusing with 413 the moment it passes the limit
(a body without a declared length included) and with 408 when it has not
arrived ``body_timeout_seconds`` after the headers (a client that trickles its
body cannot hold a slot), and handed to the app. After the
last large request in flight has finished, freed memory is handed back to the
operating system (``malloc_trim`` on glibc), so the resident size falls back
from its peak instead of staying there (docs/hardening.md has the figures).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import logging
from collections.abc import Callable

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("fedsentinel")

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TRIM_DELAY_SECONDS = 0.5


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op where there is none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class BodyGate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        large_bytes: int,
        max_large: int,
        slot_wait_seconds: float,
        body_timeout_seconds: float = 60.0,
        authorize: Callable[[Request], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.large_bytes = large_bytes
        self.slot_wait_seconds = slot_wait_seconds
        self.body_timeout_seconds = body_timeout_seconds
        self.authorize = authorize
        self._slots = asyncio.Semaphore(max_large)
        self._max_large = max_large
        self._large_in_flight = 0
        self._trim = _malloc_trim()

    async def _refuse(
        self, send: Send, status: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps({"detail": detail, "errors": []}, separators=(",", ":")).encode()
        raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    def _denied(self, scope: Scope) -> HTTPException | None:
        if self.authorize is None:
            return None
        try:
            self.authorize(Request(scope))
        except HTTPException as exc:
            return exc
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        denied = self._denied(scope)
        if denied is not None:
            await self._refuse(send, denied.status_code, str(denied.detail), denied.headers)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, 413, self._too_large())
            return
        if declared is not None and declared <= self.large_bytes:
            await self._serve(scope, receive, send)
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), self.slot_wait_seconds)
        except TimeoutError:
            detail = (
                f"{self._max_large} large uploads are already in flight; retry in a few seconds"
            )
            await self._refuse(send, 503, detail, {"Retry-After": "2"})
            return
        self._large_in_flight += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            self._large_in_flight -= 1
            self._slots.release()
            if self._large_in_flight == 0:
                self._schedule_trim()

    def _schedule_trim(self) -> None:
        """Hand the freed heap back to the OS once nothing large is in flight.

        Deferred by :data:`TRIM_DELAY_SECONDS` and run off the event loop: the
        parsed batch is released only after the answer has gone out (the
        threadpool's last result, the response object), and a trim before that
        would find nothing to return.
        """
        loop = asyncio.get_running_loop()

        def trim() -> None:
            if self._large_in_flight == 0:
                loop.run_in_executor(None, self._trim)

        loop.call_later(TRIM_DELAY_SECONDS, trim)

    def _too_large(self) -> str:
        return f"request body exceeds the limit of {self.max_bytes} bytes"

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        deadline = asyncio.get_running_loop().time() + self.body_timeout_seconds
        while True:
            try:
                message = await asyncio.wait_for(
                    receive(), max(0.0, deadline - asyncio.get_running_loop().time())
                )
            except TimeoutError:
                detail = f"the request body did not arrive within {self.body_timeout_seconds:g} s"
                await self._refuse(send, 408, detail, {"Connection": "close"})
                return
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(send, 413, self._too_large())
                return
            if not message.get("more_body", False):
                break
        payload = bytes(body)
        del body
        delivered = False

        async def replay() -> Message:
            nonlocal delivered, payload
            if not delivered:
                delivered = True
                message = {"type": "http.request", "body": payload, "more_body": False}
                payload = b""  # the app holds the only reference from here on
                return message
            return await receive()

        await self.app(scope, replay, send)


def _declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when it declares none (chunked) or nonsense."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return max(int(value), 0)
            except ValueError:
                return None
    return None
