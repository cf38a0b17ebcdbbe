"""An append-only on-disk queue of records the service has not acknowledged yet.

The spool keeps the producer's order: while it holds anything, new records go
behind it, and :meth:`Spool.drain` sends them front to back, removing each only
after the service acknowledged it. Because the service's ingest is idempotent,
a crash between "acknowledged" and "removed" resends a record that is then
counted as a duplicate, never stored twice.

A record the service refuses for good (a 4xx: the data itself is wrong) or a
line that cannot be read is moved to ``spool.rejected.jsonl`` with the reason,
so that one bad record cannot block every record behind it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collectors.sink import check_record, encode_record

log = logging.getLogger("fedsentinel.sdk")


class Rejected(Exception):
    """Raised by a drain's ``send`` for a record that must not be retried."""


class Spool:
    FILE_NAME = "spool.jsonl"
    OFFSET_NAME = "spool.offset"
    REJECTED_NAME = "spool.rejected.jsonl"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / self.FILE_NAME
        self.rejected_path = self.directory / self.REJECTED_NAME
        self._offset_path = self.directory / self.OFFSET_NAME
        self._lock = threading.Lock()
        self._repair()

    def _repair(self) -> None:
        """Cut a partial last line left by a crash during :meth:`append` (it was never acknowledged)."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
                log.warning("spool %s: dropped a partial last line left by a crash", self.path)

    def append(self, record: dict[str, Any]) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(encode_record(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _read_offset(self) -> int:
        try:
            offset = int(self._offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0
        size = self.path.stat().st_size if self.path.exists() else 0
        return offset if offset <= size else 0  # a stale offset from an older file

    def _write_offset(self, offset: int) -> None:
        tmp = self._offset_path.with_suffix(".tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self._offset_path)

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as fh:
            fh.seek(self._read_offset())
            return sum(1 for line in fh if line.strip())

    def is_empty(self) -> bool:
        return not self.path.exists() or self.path.stat().st_size <= self._read_offset()

    def _reject(self, line: bytes, reason: str) -> None:
        with open(self.rejected_path, "ab") as fh:
            fh.write(json.dumps({"reason": reason, "line": line.decode(errors="replace")}).encode() + b"\n")
        log.error("spool: moved a record to %s: %s", self.rejected_path, reason)

    def drain(self, send: Callable[[dict[str, Any]], None]) -> int:
        """Send pending records in order; stop at the first failure other than :class:`Rejected`.

        Returns how many records were sent. The files are removed once empty
        (the offset first, so a crash in between cannot leave a stale offset).
        """
        sent = 0
        with self._lock:
            if not self.path.exists():
                return 0
            offset = self._read_offset()
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                for raw in iter(fh.readline, b""):
                    line = raw.strip()
                    if line:
                        try:
                            record = json.loads(line)
                            check_record(record, f"{self.path} at byte {offset}")
                            send(record)
                            sent += 1
                        except (ValueError, Rejected) as exc:
                            self._reject(line, str(exc))
                    offset += len(raw)
                    self._write_offset(offset)
            self._offset_path.unlink(missing_ok=True)
            self.path.unlink()
        return sent
