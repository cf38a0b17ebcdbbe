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


def test_a_partial_last_line_from_a_crash_is_cut(tmp_path) -> None:
    spool = Spool(tmp_path)
    spool.append(_rec(0))
    with open(spool.path, "a") as fh:
        fh.write('{"op": "report", "run_id": "r", "ro')  # the process died mid-append
    reopened = Spool(tmp_path)
    reopened.append(_rec(1))
    sent: list[int] = []
    reopened.drain(lambda r: sent.append(r["round"]))
    assert sent == [0, 1] and not reopened.rejected_path.exists()


def test_a_stale_offset_does_not_hide_new_records(tmp_path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / Spool.OFFSET_NAME).write_text("10000")  # left behind by a crash during cleanup
    spool.append(_rec(7))
    assert len(spool) == 1
    sent: list[int] = []
    spool.drain(lambda r: sent.append(r["round"]))
    assert sent == [7]


def test_unreadable_and_rejected_records_are_set_aside(tmp_path) -> None:
    from collectors.spool import Rejected

    spool = Spool(tmp_path)
    spool.append(_rec(0))
    with open(spool.path, "a") as fh:
        fh.write("{not json\n")
    spool.append(_rec(2))
    spool.append(_rec(3))
    sent: list[int] = []

    def send(record: dict) -> None:
        if record["round"] == 2:
            raise Rejected("HTTP 422: bad histogram")
        sent.append(record["round"])

    assert spool.drain(send) == 2
    assert sent == [0, 3]
    reasons = [line for line in spool.rejected_path.read_text().splitlines()]
    assert len(reasons) == 2 and "422" in reasons[1]
