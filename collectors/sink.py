"""The three calls every producer makes, and a sink that writes them to a file.

A *record* is one JSON object per line, the same format for the SDK's on-disk
spool, ``fedsentinel replay FILE`` and ``fedsentinel simulate --out FILE``::

    {"op": "register_run", "run_id": "r1", "body": {...RunCreate...}}
    {"op": "report", "run_id": "r1", "round": 3, "body": {"reports": [...]}}
    {"op": "close_round", "run_id": "r1", "round": 3, "body": {...RoundClose...}}

Non-finite floats are written as the JSON tokens ``NaN`` / ``Infinity``
(Python's json module reads them back; so does the service).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

OPS = ("register_run", "report", "close_round")


class ReportSink(Protocol):
    """Where an FL program sends its statistics (the service, or a file)."""

    def register_run(self, spec: dict[str, Any]) -> None: ...

    def report(self, run_id: str, round: int, reports: list[dict[str, Any]]) -> None: ...

    def close_round(self, run_id: str, round: int, summary: dict[str, Any]) -> None: ...


def make_record(op: str, run_id: str, body: dict[str, Any], round: int | None = None) -> dict[str, Any]:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    record: dict[str, Any] = {"op": op, "run_id": run_id}
    if round is not None:
        record["round"] = round
    record["body"] = body
    return record


def encode_record(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)``; raise ValueError naming the line on bad input."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            check_record(record, f"{path}:{lineno}")
            yield lineno, record


def check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a record must be a JSON object")
    op = record.get("op")
    if op not in OPS:
        raise ValueError(f"{where}: unknown op {op!r}; expected one of {', '.join(OPS)}")
    if not isinstance(record.get("run_id"), str):
        raise ValueError(f"{where}: missing run_id")
    if op != "register_run" and not isinstance(record.get("round"), int):
        raise ValueError(f"{where}: {op} needs an integer round")
    if not isinstance(record.get("body"), dict):
        raise ValueError(f"{where}: missing body object")


class JsonlWriter:
    """A :class:`ReportSink` that appends records to a JSON-lines file."""

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (closed by close())
        self._fsync = fsync

    def _write(self, record: dict[str, Any]) -> None:
        self._fh.write(encode_record(record) + "\n")
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def register_run(self, spec: dict[str, Any]) -> None:
        self._write(make_record("register_run", spec["run_id"], spec))

    def report(self, run_id: str, round: int, reports: list[dict[str, Any]]) -> None:
        self._write(make_record("report", run_id, {"reports": reports}, round))

    def close_round(self, run_id: str, round: int, summary: dict[str, Any]) -> None:
        self._write(make_record("close_round", run_id, summary, round))

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
