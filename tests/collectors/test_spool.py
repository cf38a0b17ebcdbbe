"""The on-disk spool keeps order and survives partial drains."""

from __future__ import annotations

import pytest

from collectors.spool import Spool


def _rec(i: int) -> dict:
    return {"op": "report", "run_id": "r", "round": i, "body": {"reports": []}}


def test_drain_sends_in_order_and_empties(tmp_path) -> None:
    spool = Spool(tmp_path)
    for i in range(5):
        spool.append(_rec(i))
    assert len(spool) == 5
    sent: list[int] = []
    assert spool.drain(lambda r: sent.append(r["round"])) == 5
    assert sent == [0, 1, 2, 3, 4] and spool.is_empty() and len(spool) == 0


def test_a_failed_send_keeps_the_rest_and_resumes_there(tmp_path) -> None:
    spool = Spool(tmp_path)
    for i in range(4):
        spool.append(_rec(i))
    sent: list[int] = []

    def flaky(record: dict) -> None:
        if record["round"] == 2:
            raise ConnectionError("down")
        sent.append(record["round"])

    with pytest.raises(ConnectionError):
        spool.drain(flaky)
    assert sent == [0, 1] and len(spool) == 2
    spool.append(_rec(4))
    reopened = Spool(tmp_path)  # a new process picks up where the last one stopped
    reopened.drain(lambda r: sent.append(r["round"]))
    assert sent == [0, 1, 2, 3, 4]
