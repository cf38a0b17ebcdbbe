"""An append-only on-disk queue of records the service has not acknowledged yet.

The spool keeps the producer's order: while it holds anything, new records go
behind it, and :meth:`Spool.drain` sends them front to back, removing each only
after the service acknowledged it. Because the service's ingest is idempotent,
a crash between "acknowledged" and "removed" resends a record that is then
counted as a duplicate, never stored twice.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collectors.sink import check_record, encode_record


class Spool:
    FILE_NAME = "spool.jsonl"
    OFFSET_NAME = "spool.offset"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / self.FILE_NAME
        self._offset_path = self.directory / self.OFFSET_NAME
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(encode_record(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _read_offset(self) -> int:
        try:
            return int(self._offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

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

    def drain(self, send: Callable[[dict[str, Any]], None]) -> int:
        """Send pending records in order; stop at the first failure (it propagates).

        Returns how many records were sent. The file is truncated once empty.
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
                        record = json.loads(line)
                        check_record(record, f"{self.path} at byte {offset}")
                        send(record)
                        sent += 1
                    offset += len(raw)
                    self._write_offset(offset)
            self.path.unlink()
            self._offset_path.unlink(missing_ok=True)
        return sent
