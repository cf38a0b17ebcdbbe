"""The report's HTML from hand-made data: ids, escaping and the feature table's source (no service, no browser)."""

from __future__ import annotations

import re
from typing import Any

from monitor.report.data import top_features
from monitor.report.render import client_anchor, render_html
from monitor.schemas import FindingOut

HOSTILE = '<img src=x onerror="alert(1)">&</script>'


def _finding(client: str | None, **fields: Any) -> dict[str, Any]:
    base = {"id": 1, "kind": "label_drift", "severity": "warning", "status": "open",
            "client_id": client, "first_round": 3, "last_round": 5, "score": 2.0,
            "threshold": 1.0, "message": f"labels moved {HOSTILE}"}  # fmt: skip
    return {**base, **fields}


def _client(client: str) -> dict[str, Any]:
    return {"client_id": client, "findings": [_finding(client)], "label_mix": None, "drift": {},
            "top_features": [{"feature": HOSTILE, "psi": 0.5, "wasserstein_std": 1.0, "ks": 0.3}],
            "loss": {"rounds": [], "eval_loss": [], "train_loss": [], "eval_accuracy": [], "status": []}}  # fmt: skip


def _data(clients: list[str]) -> dict[str, Any]:
    health = {"rounds_closed": 5, "clients_seen": 2, "reports": 10, "global_eval_accuracy": 0.9,
              "centralized_gap": 0.01, "last_round_participation_ratio": 1.0,
              "open_findings": {"warning": len(clients)}, "epsilon": None}  # fmt: skip
    return {
        "generated_at": "2026-01-01T00:00:00+00:00",
        "version": "0",
        "run": {
            "run_id": "r1",
            "name": HOSTILE,
            "created_at": "2026-01-01T00:00:00",
            "expected_clients": 2,
            "dp": None,
        },  # fmt: skip
        "health": health,
        "findings": [_finding(c) for c in clients],
        "drift_map": {"clients": [], "clients_total": 0, "clients_left_out": 0},
        "privacy": None,
        "clients": [_client(c) for c in clients],
        "clients_flagged": len(clients),
    }


def test_client_anchors_differ_for_ids_that_differ_only_in_punctuation() -> None:
    # Every character ID_PATTERN allows besides letters and digits: . _ : @ -
    ids = ["a.b", "a_b", "a:b", "a@b", "a-b", "ab", "a_2e_b", "a.b.c", "a_b_c"]
    anchors = [client_anchor(c) for c in ids]
    assert len(set(anchors)) == len(ids), dict(zip(ids, anchors, strict=True))
    assert client_anchor("c003") == "client-c003"
    assert all(re.fullmatch(r"client-[A-Za-z0-9_-]+", a) for a in anchors)


def test_each_flagged_client_gets_its_own_section_and_link() -> None:
    page = render_html(_data(["h.07", "h_07"]))
    body = page.split('<script type="application/json"')[0]
    ids = re.findall(r'<section class="client" id="([^"]+)"', body)
    assert len(ids) == 2 and len(set(ids)) == 2, ids
    for anchor in ids:  # the findings table links to each section, and each chart div is unique
        assert f'href="#{anchor}"' in body
        assert body.count(f'id="{anchor}-labels"') == 1


def test_free_text_is_escaped_in_the_markup_and_cannot_close_the_data_script() -> None:
    page = render_html(_data(["c001"]))
    markup, data_and_scripts = page.split('<script type="application/json" id="report-data">')
    assert "<img" not in markup and 'onerror="' not in markup
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&lt;/script&gt;" in markup
    data_json = data_and_scripts.split("</script>")[0]
    assert "<" not in data_json and ">" not in data_json


def _feature_finding(fid: int, status: str, first: int, feature: str) -> FindingOut:
    return FindingOut(id=fid, run_id="r1", kind="feature_drift", severity="warning", status=status,
                      client_id="c001", first_round=first, last_round=first + 3, score=2.0,
                      threshold=1.0, message="features moved",
                      details={"top_features": [{"feature": feature, "psi": 1.0}]})  # fmt: skip


def test_feature_table_comes_from_the_open_finding_not_an_older_resolved_one() -> None:
    older = _feature_finding(1, "resolved", 2, "pixel_old")
    current = _feature_finding(2, "open", 20, "pixel_now")
    assert top_features([older, current]) == [{"feature": "pixel_now", "psi": 1.0}]
    assert top_features([older]) == [{"feature": "pixel_old", "psi": 1.0}]
    assert top_features([]) is None
