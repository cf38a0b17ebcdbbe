"""The service's telemetry accounting and the secure-aggregation scalars in the update detector.

References: Opacus' ``RDPAccountant`` (the whole package, stepped release by
release) for the epsilon; the telemetry noise the SDK computes for the
sigma; the exposition of a real service for the exported gauges.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from collectors.privacy import NoisePlan
from monitor.detectors import DetectorState, RoundInput, Thresholds, analyze_round
from monitor.schemas import RunCreate

EDGES = [[0.0, 1.0, 2.0, 3.0], [0.0, 10.0, 20.0]]
H = 3  # one label histogram + two feature histograms
BUDGET = {"epsilon": 3.0, "delta": 1e-5, "planned_rounds": 10}


def _run(budget: dict | None = BUDGET, **extra) -> RunCreate:  # type: ignore[no-untyped-def]
    return RunCreate.model_validate(
        {
            "run_id": "tp",
            "task": {"num_classes": 4, "feature_names": ["a", "b"]},
            "feature_bin_edges": EDGES,
            "sketch_dim": 0,
            "expected_clients": 4,
            **({"telemetry_budget": budget} if budget else {}),
            **extra,
        }
    )


def _round(run: RunCreate, t: int, noise: dict[str, tuple[str | None, float]], rng) -> RoundInput:  # type: ignore[no-untyped-def]
    """Clients with histograms; ``noise[cid] = (mechanism, scale)``; cid 'quiet' sends none."""
    ids = sorted([*noise, "quiet"])
    d = RoundInput.empty(t, ids, run)
    for i, cid in enumerate(ids):
        d.update_norm[i] = 1.0 + 0.01 * i
        d.eval_loss[i] = 0.5
        if cid == "quiet":
            continue
        mech, scale = noise[cid]
        d.label_hist[i] = np.array([10.0, 20.0, 30.0, 40.0]) + rng.normal(0, scale or 0, 4)
        d.feature_hists[0][i] = np.array([30.0, 40.0, 30.0]) + rng.normal(0, scale or 0, 3)
        d.feature_hists[1][i] = np.array([50.0, 50.0]) + rng.normal(0, scale or 0, 2)
        d.noise_mechanism[i] = mech
        d.noise_scale[i] = scale
    return d


def _stream(run: RunCreate, rounds: int, noise):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    st, out = DetectorState(), []
    for t in range(1, rounds + 1):
        a = analyze_round(run, Thresholds(), st, _round(run, t, noise, rng))
        st = a.state
        out.append(a)
    return out


def _eps(a, cid: str) -> float:  # type: ignore[no-untyped-def]
    return float(a.client_scores["telemetry_epsilon"][a.client_ids.index(cid)])


def _opacus_epsilon(z: float, steps: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    from monitor.signals.telemetry_privacy import ORDERS

    acct = RDPAccountant()
    for _ in range(steps):
        acct.step(noise_multiplier=z, sample_rate=1.0)
    return acct.get_epsilon(delta, alphas=list(ORDERS))


def test_epsilon_is_the_accountants_for_the_declared_noise_and_no_noise_is_infinite() -> None:
    run = _run()
    sigma = NoisePlan.from_budget(BUDGET).sigma(H)  # what a client under this budget sends
    weak = sigma / 4
    out = _stream(
        run, 10, {"good": ("gaussian", sigma), "raw": (None, 0.0), "weak": ("gaussian", weak)}
    )
    for t, a in enumerate(out, start=1):
        assert _eps(a, "good") == pytest.approx(
            _opacus_epsilon(sigma / math.sqrt(2 * H), t, 1e-5), rel=1e-9
        )
        assert math.isinf(_eps(a, "raw"))  # no protection, not zero
        assert _eps(a, "quiet") == 0.0  # never released a histogram
        assert a.round_scores["telemetry_epsilon_max"] == math.inf
        assert a.round_scores["telemetry_unprotected_clients"] == 1
        assert a.round_scores["telemetry_budget_epsilon"] == 3.0
    assert _eps(out[-1], "good") <= 3.0  # the planned 10 releases stay within the budget
    # findings: the raw client at once (critical), the weak one from its first round over budget
    first_over = next(
        t for t in range(1, 11) if _opacus_epsilon(weak / math.sqrt(2 * H), t, 1e-5) > 3.0
    )
    kinds = {}
    for t, a in enumerate(out, start=1):
        for s in a.active:
            if s.kind == "telemetry_budget_exceeded":
                kinds.setdefault(s.client_id, (t, s.severity, s.message))
    assert set(kinds) == {"raw", "weak"}
    assert kinds["raw"][:2] == (1, "critical") and "without noise" in kinds["raw"][2]
    assert kinds["weak"][:2] == (first_over, "warning")
    assert "exceeds the run's budget 3.00" in kinds["weak"][2]


def test_laplace_and_a_run_without_budget() -> None:
    run = _run(budget=None)
    out = _stream(run, 3, {"lap": ("laplace", 20.0)})
    # pure-DP releases: 2H / b each, composed (the conversion adds a small slack)
    eps = _eps(out[-1], "lap")
    assert 3 * 2 * H / 20.0 < eps < 3 * 2 * H / 20.0 + 0.5
    assert not any(s.kind == "telemetry_budget_exceeded" for a in out for s in a.active)
    assert math.isnan(out[-1].round_scores["telemetry_budget_epsilon"])


def test_failed_clients_release_nothing() -> None:
    run = _run()
    rng = np.random.default_rng(1)
    d = _round(run, 1, {"x": (None, 0.0)}, rng)
    d.status[d.client_ids.index("x")] = "failed"
    a = analyze_round(run, Thresholds(), DetectorState(), d)
    assert _eps(a, "x") == 0.0


# ---------------------------------------------------------------------------
# secure aggregation: the client-side scalars drive the update detector


def _scalar_round(run: RunCreate, t: int, n: int, bad: int, stale: int) -> RoundInput:
    rng = np.random.default_rng([7, t])
    ids = [f"s{i:02d}" for i in range(n)]
    d = RoundInput.empty(t, ids, run)
    d.update_norm[:] = rng.uniform(0.9, 1.1, n)
    d.update_cosine_previous_global[:] = rng.uniform(0.6, 0.8, n)
    d.update_repeated[:] = 0.0
    d.eval_loss[:] = 0.5
    if t >= 5:
        d.update_cosine_previous_global[bad] = -0.7  # pulls against the federation
        d.update_repeated[stale] = 1.0
    return d


def test_client_scalars_find_divergent_and_stale_updates_without_a_sketch() -> None:
    run = _run(budget=None, secure_aggregation=True)
    st, seen = DetectorState(), {}
    for t in range(1, 10):
        a = analyze_round(run, Thresholds(), st, _scalar_round(run, t, 20, bad=3, stale=7))
        st = a.state
        for s in a.active:
            seen.setdefault((s.kind, s.client_id), []).append(t)
        if t == 6:
            i = a.client_ids.index("s03")
            assert a.client_scores["update_cosine"][i] == pytest.approx(-0.7)
    flagged = {k for k in seen if k[0] in {"update_divergence", "stale_update"}}
    assert flagged == {("update_divergence", "s03"), ("stale_update", "s07")}, seen
    assert seen[("stale_update", "s07")][0] == 5
    assert seen[("update_divergence", "s03")][0] > 5  # after its persistence streak


def test_client_scalars_from_wire_reports_and_the_store_shape() -> None:
    from monitor.schemas import ClientReport

    run = _run(budget=None, secure_aggregation=True)
    reports = [
        ClientReport(
            client_id="a", update_norm=1.0, update_cosine_previous_global=0.5, update_repeated=True
        ),
        ClientReport(client_id="b", update_norm=1.0, update_cosine_previous_global=float("nan")),
    ]
    d = RoundInput.from_reports(1, reports, None, run)
    assert d.update_cosine_previous_global[0] == 0.5 and math.isnan(
        d.update_cosine_previous_global[1]
    )
    assert d.update_repeated[0] == 1.0 and math.isnan(d.update_repeated[1])
