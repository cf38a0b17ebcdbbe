"""``MonitorClient``: the Python SDK an FL program uses to talk to fedsentinel.

Three calls (register a run, report clients, close a round), each retried with
exponential backoff on connection errors, timeouts and 5xx answers. When the
service stays unreachable and a spool directory is configured, the call is
appended to the on-disk :class:`~collectors.spool.Spool` instead of failing,
and the spool is replayed in order before the next call goes out. While the
service is known to be down, calls go straight to the spool and the service is
probed again every ``probe_interval_seconds``, so training never waits on it.
A 4xx answer is a problem with the data and raises :class:`MonitorError` at
once (during a replay, the record is set aside in the spool's rejected file).

``flush(timeout=...)`` keeps replaying the spool until it is empty or the time
is up and answers how many records are left; it never raises because the
service went away again, so callers need no retry loop of their own.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import orjson

from collectors.analysis import wait_for_analysis
from collectors.privacy import TelemetryBudget, TelemetryNoiser
from collectors.sink import make_record
from collectors.spool import Rejected, Spool

log = logging.getLogger("fedsentinel.sdk")

API = "/api/v1"
JSON_HEADERS = {"Content-Type": "application/json"}
PACKED_MEDIA_TYPE = "application/vnd.fedsentinel.packed+json"
PACKED_HEADERS = {"Content-Type": PACKED_MEDIA_TYPE}
ARRAY_FIELDS = ("update_sketch", "label_histogram", "feature_histograms")
Encoding = Literal["json", "packed"]


def _finite(value: Any) -> bool:
    """True when no float in ``value`` is NaN or infinite (a sum is: one C loop per list)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        try:
            return math.isfinite(sum(value))
        except (TypeError, OverflowError):
            return all(_finite(v) for v in value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return bool(np.isfinite(value).all())
    return True


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_body(body: dict[str, Any]) -> bytes:
    """JSON, fast (orjson) unless a value is NaN or infinite.

    NaN/Infinity are fault evidence and go out as the tokens ``NaN`` / ``Infinity``
    (the stdlib writes them; orjson would write ``null``, httpx's ``json=`` refuses
    them). numpy arrays and scalars are accepted.
    """
    try:
        fast = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        fast = (
            None  # e.g. a non-contiguous or non-float numpy array: let the stdlib say what is wrong
        )
    # orjson writes a NaN as null: without any null in the output nothing was lost.
    if fast is not None and (b"null" not in fast or _finite(body)):
        return fast
    return json.dumps(body, separators=(",", ":"), default=_plain).encode()


def _packed_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _pack_array(value: Any, dtype: str) -> dict[str, str]:
    try:
        array = np.asarray(value, dtype=dtype)
    except ValueError:  # ragged feature histograms: features with different numbers of bins
        array = np.concatenate([np.asarray(row, dtype=dtype) for row in value])
    return {"dtype": dtype, "data": base64.b64encode(array.tobytes()).decode("ascii")}


def _pack_field(
    reports: list[dict[str, Any]], packed: list[dict[str, Any]], key: str, dtype: str
) -> None:
    """Pack one array field of every report; one numpy conversion for the batch when it is
    rectangular (the usual case), one per report otherwise."""
    present = [i for i, r in enumerate(reports) if r.get(key) is not None]
    if not present:
        return
    try:
        block = np.array([reports[i][key] for i in present], dtype=dtype).reshape(len(present), -1)
    except ValueError:
        for i in present:
            packed[i][key] = _pack_array(reports[i][key], dtype)
        return
    for row, i in zip(block, present, strict=True):
        packed[i][key] = {"dtype": dtype, "data": base64.b64encode(row.tobytes()).decode("ascii")}


def encode_packed_reports(body: dict[str, Any], dtype: str = "<f8") -> bytes:
    """A report batch in the packed encoding: arrays as base64 little-endian floats.

    ``dtype`` is ``"<f8"`` (exact) or ``"<f4"`` (half the bytes; histograms of
    counts below 2**24 stay exact). Non-finite losses and norms go as the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; in the arrays they are just bytes.
    """
    reports = body["reports"]
    packed = [dict(report) for report in reports]
    for report in packed:
        for key, value in report.items():
            if type(value) is float and value - value != 0.0:  # NaN or infinite
                report[key] = _packed_float(value)
    for key in ARRAY_FIELDS:
        _pack_field(reports, packed, key, dtype)
    return orjson.dumps({"reports": packed}, option=orjson.OPT_SERIALIZE_NUMPY)


class MonitorError(RuntimeError):
    """The service refused a request (4xx) or could not be reached and there is no spool."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ServiceUnavailable(MonitorError):
    """Retries were exhausted on connection errors or 5xx answers."""


@dataclass(frozen=True)
class FlushResult:
    """What :meth:`MonitorClient.flush` did: records sent, records still in the spool."""

    sent: int
    left: int

    @property
    def done(self) -> bool:
        return self.left == 0


class MonitorClient:
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        spool_dir: str | Path | None = None,
        batch_size: int = 500,
        max_retries: int = 4,
        backoff_base_seconds: float = 0.2,
        backoff_max_seconds: float = 5.0,
        timeout_seconds: float = 30.0,
        probe_interval_seconds: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        telemetry_budget: TelemetryBudget | dict[str, Any] | None = None,
        telemetry_seed: int | None = None,
        encoding: Encoding = "json",
        packed_dtype: Literal["float32", "float64"] = "float64",
    ) -> None:
        """``telemetry_budget``: noise every report's histograms under this budget before
        sending (:mod:`collectors.privacy`; per client id, releases counted per run).
        ``telemetry_seed`` fixes the noise for tests only.

        ``encoding="packed"`` sends report arrays as base64 little-endian floats
        (``application/vnd.fedsentinel.packed+json``, needs a service that has it):
        no float is parsed as text on either side. ``packed_dtype="float32"`` halves
        the bytes at float32 precision. JSON is the default."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if encoding not in ("json", "packed"):
            raise ValueError(f"encoding must be 'json' or 'packed', not {encoding!r}")
        if packed_dtype not in ("float32", "float64"):
            raise ValueError(f"packed_dtype must be 'float32' or 'float64', not {packed_dtype!r}")
        self.encoding = encoding
        self._packed_dtype = "<f4" if packed_dtype == "float32" else "<f8"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout_seconds, transport=transport
        )
        self.spool = Spool(spool_dir) if spool_dir is not None else None
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.spooled = 0
        self.timeout_seconds = timeout_seconds
        self.probe_interval_seconds = probe_interval_seconds
        self._unreachable_at: float | None = None
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsentinel-encode")
        self.noiser = (
            TelemetryNoiser(telemetry_budget, seed=telemetry_seed)
            if telemetry_budget is not None
            else None
        )

    # -- the three calls -------------------------------------------------

    def register_run(self, spec: dict[str, Any]) -> None:
        self._submit(make_record("register_run", spec["run_id"], spec))

    def report(self, run_id: str, round: int, reports: list[dict[str, Any]]) -> None:
        """Send a round's client reports, in batches of ``batch_size``, in order.

        The next batch is encoded in a helper thread while the current one is
        in flight, so encoding and the service's work overlap. With a
        telemetry budget, histograms are noised (or dropped outside release
        rounds) first.
        """
        if self.noiser is not None:
            reports = self.noiser.noise(run_id, round, reports)
        records = [
            make_record(
                "report", run_id, {"reports": reports[start : start + self.batch_size]}, round
            )
            for start in range(0, len(reports), self.batch_size)
        ]
        if not records:
            return
        pending = self._encoder.submit(self._encode, records[0])
        for i, record in enumerate(records):
            payload = pending.result()
            if i + 1 < len(records):
                pending = self._encoder.submit(self._encode, records[i + 1])
            self._submit(record, payload)

    def close_round(self, run_id: str, round: int, summary: dict[str, Any]) -> None:
        self._submit(make_record("close_round", run_id, summary, round))

    def wait_for_analysis(
        self, run_id: str, round: int | None = None, *, timeout_seconds: float = 120.0
    ) -> dict[str, Any]:
        """Block until the service has analysed the run's closed rounds (up to ``round``), so
        that its findings are final; a close returns before its analysis. Flushes the spool first."""
        self.flush()
        return wait_for_analysis(self._http, run_id, round, timeout_seconds=timeout_seconds)

    # -- plumbing ----------------------------------------------------------

    def _encode(self, record: dict[str, Any]) -> bytes:
        if record["op"] == "report" and self.encoding == "packed":
            return encode_packed_reports(record["body"], self._packed_dtype)
        return encode_body(record["body"])

    def send_record(
        self, record: dict[str, Any], payload: bytes | None = None, deadline: float | None = None
    ) -> httpx.Response:
        """Send one record now (with retries, none begun after ``deadline``); raise on failure."""
        op, run_id = record["op"], record["run_id"]
        if op == "register_run":
            path = f"{API}/runs"
        elif op == "report":
            path = f"{API}/runs/{run_id}/rounds/{record['round']}/reports"
        else:
            path = f"{API}/runs/{run_id}/rounds/{record['round']}/close"
        packed = op == "report" and self.encoding == "packed"
        headers = PACKED_HEADERS if packed else JSON_HEADERS
        return self._post_with_retries(path, payload or self._encode(record), headers, deadline)

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Replay the spool in order until it is empty or ``timeout`` seconds have passed.

        ``timeout=None`` makes one pass (each record with its usual retries).
        With a timeout the spool is retried, with backoff, while the service is
        unreachable, so a service that dies again mid-replay costs a wait, not
        an exception. Returns what was sent and how many records are left; the
        spool keeps the rest for the next call. A record the service refuses
        (4xx) is moved to the spool's rejected file instead of blocking the
        records behind it.
        """
        if self.spool is None:
            return FlushResult(0, 0)
        deadline = None if timeout is None else time.monotonic() + timeout
        sent, attempt = [0], 0

        def count() -> None:
            sent[0] += 1

        while not self.spool.is_empty():
            try:
                self._drain(deadline, on_sent=count)
            except ServiceUnavailable as exc:
                self._unreachable_at = time.monotonic()
                remaining = 0.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("flush: service unavailable (%s); %d left", exc, self.pending())
                    break
                time.sleep(min(remaining, self._backoff(attempt)))
                attempt += 1
        return FlushResult(sent[0], self.pending())

    def _drain(
        self, deadline: float | None = None, on_sent: Callable[[], None] | None = None
    ) -> int:
        """One pass over the spool; raises :class:`ServiceUnavailable` where it stopped."""
        if self.spool is None or self.spool.is_empty():
            return 0

        def send(record: dict[str, Any]) -> None:
            try:
                self.send_record(record, deadline=deadline)
            except ServiceUnavailable:
                raise
            except MonitorError as exc:
                raise Rejected(str(exc)) from exc
            if on_sent is not None:
                on_sent()

        sent = self.spool.drain(send)
        self._unreachable_at = None
        log.info("replayed %d spooled records", sent)
        return sent

    def pending(self) -> int:
        return 0 if self.spool is None else len(self.spool)

    def _submit(self, record: dict[str, Any], payload: bytes | None = None) -> None:
        if self.spool is None:
            self.send_record(record, payload)
            return
        if self._recently_unreachable():
            self.spool.append(record)  # do not stall the FL loop on a service known to be down
            self.spooled += 1
            return
        try:
            self._drain()
            self.send_record(record, payload)
        except ServiceUnavailable as exc:
            self._unreachable_at = time.monotonic()
            self.spool.append(record)
            self.spooled += 1
            log.warning(
                "service unavailable (%s); spooled %s to %s", exc, record["op"], self.spool.path
            )

    def _recently_unreachable(self) -> bool:
        return (
            self._unreachable_at is not None
            and time.monotonic() - self._unreachable_at < self.probe_interval_seconds
        )

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: ``base * 2**attempt``, capped, times 0.5-1."""
        delay = min(self.backoff_max_seconds, self.backoff_base_seconds * 2**attempt)
        return delay * (0.5 + random.random() / 2)

    def _post_with_retries(
        self,
        path: str,
        payload: bytes,
        headers: dict[str, str] = JSON_HEADERS,
        deadline: float | None = None,
    ) -> httpx.Response:
        last_error = "no attempt"
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                pause = self._backoff(attempt - 1)
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                time.sleep(pause)
            timeout = self.timeout_seconds
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if attempt and remaining <= 0:
                    break
                timeout = max(0.1, min(timeout, remaining))  # no request outlives the deadline
            attempts += 1
            try:
                response = self._http.post(path, content=payload, headers=headers, timeout=timeout)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                raise MonitorError(
                    f"POST {path} refused with HTTP {response.status_code}: {_detail(response)}",
                    response.status_code,
                )
            return response
        raise ServiceUnavailable(f"POST {path} failed after {attempts} attempts: {last_error}")

    def close(self) -> None:
        self._encoder.shutdown(wait=True)
        self._http.close()

    def __enter__(self) -> MonitorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:500]
