"""Issue 11's detectors on synthetic streams: divergence with memory, one finding per cause,
noise-aware fairness, converged vs stuck, dropout under partial participation."""

from __future__ import annotations

import numpy as np

from monitor.detectors import DetectorState, Thresholds, analyze_round
from monitor.evaluation.synthetic import Fault, SyntheticFederation
from tests.test_detectors import stream


def _edit(fed: SyntheticFederation, t: int, change) -> object:
    d = fed.round(t)
    change(d, t)
    return d


def _run(fed: SyntheticFederation, rounds: int, change=None, run=None, th=None):
    run = run or fed.run()
    th = th or Thresholds()
    st, out = DetectorState(), []
    for t in range(1, rounds + 1):
        d = fed.round(t)
        if change is not None:
            change(d, t)
        a = analyze_round(run, th, st, d)
        st = a.state
        out.append(a)
    return out


def _signals(out, kind: str) -> list[tuple[int, object]]:
    return [(a.round, s) for a in out for s in a.active if s.kind == kind]


def test_colluding_clients_sending_one_update_are_found_in_the_onset_round():
    fed = SyntheticFederation(40, alpha=0.5, seed=4)

    def collude(d, t):
        if t >= 8:  # ALIE / IPM: several clients send one crafted vector
            d.sketch[[3, 9, 17]] = d.sketch[[0, 1, 2]].mean(axis=0) * -0.5
            d.update_norm[[3, 9, 17]] = 0.42

    out = _run(fed, 9, collude)
    hits = _signals(out, "update_divergence")
    assert {s.client_id for _, s in hits} == {"c00003", "c00009", "c00017"}
    assert min(r for r, _ in hits) == 8
    assert all(s.details["pattern"] == "colluding" for r, s in hits if r == 8)
    first = [s for r, s in hits if r == 8][0]
    assert "same update as 2 other client(s)" in first.message


def test_a_sign_flip_is_found_at_onset_and_healthy_clients_stay_quiet():
    fed = SyntheticFederation(50, alpha=0.5, seed=1, faults=[Fault("sign_flip", [6], 10)])
    out, seen = stream(fed, 14)
    assert seen[("update_divergence", "c00006")][0] == 10
    others = {k for k in seen if k[1] not in (None, "c00006")}
    assert not others, others
    # the memory keeps the evidence while the attack lasts
    assert seen[("update_divergence", "c00006")] == list(range(10, 15))


def test_a_federation_wide_feature_shift_is_one_finding_listing_clients_and_features():
    fed = SyntheticFederation(
        30, alpha=0.5, seed=5, faults=[Fault("feature_shift", list(range(30)), 8, magnitude=2.0)]
    )
    out, seen = stream(fed, 10)
    assert not [k for k in seen if k[0] in ("feature_drift", "data_drift")], seen
    fed_drift = _signals(out, "federation_drift")
    assert [r for r, _ in fed_drift] == [8, 9, 10]
    s = fed_drift[0][1]
    assert s.client_id is None and s.details["clients_count"] == 30
    assert len(s.details["clients"]) == 30 and s.details["features"]
    assert "30 of 30 clients moved at once" in s.message
    # a drift of a few clients stays per client
    few = SyntheticFederation(
        30, alpha=0.5, seed=5, faults=[Fault("feature_shift", [1, 2], 8, magnitude=2.0)]
    )
    _, seen = stream(few, 9)
    assert ("feature_drift", "c00001") in seen and ("federation_drift", None) not in seen


def test_a_federation_finding_explained_by_client_findings_names_them_and_does_not_page():
    fed = SyntheticFederation(20, alpha=0.5, seed=7)

    def worse(d, t):
        # client 4 drifts from round 6 and is the worst client: its accuracy collapses
        if t >= 6:
            d.eval_accuracy[4] = max(0.05, 0.6 - 0.15 * (t - 5))
            d.label_hist[4] = np.roll(d.label_hist[4], 3) * 3
        d.eval_accuracy[:] = np.where(np.arange(20) == 4, d.eval_accuracy, 0.7 + 0.01 * t)

    out = _run(fed, 12, worse)
    fair = _signals(out, "fairness_regression")
    assert fair, "the worst decile fell while the mean rose"
    explained = [s for _, s in fair if "caused_by" in s.details]
    assert explained and all(s.severity == "info" for s in explained)
    assert "c00004" in explained[-1].details["caused_by"]
    assert "explained by open client findings on c00004" in explained[-1].message


def test_fairness_threshold_follows_the_noise_of_small_evaluation_sets():
    fed = SyntheticFederation(30, alpha=0.5, seed=9)
    rng = np.random.default_rng(3)

    def noisy(d, t):
        # 12 held-out examples a client: accuracies jump by 1/12 from round to round
        d.eval_accuracy[:] = rng.binomial(12, 0.75, size=30) / 12 + 0.004 * t

    out = _run(fed, 30, noisy)
    assert not _signals(out, "fairness_regression")
    limits = [a.round_scores["fairness_worst10_threshold"] for a in out[8:]]
    assert min(limits) > 0.02  # wider than the base threshold: the noise is large


def _cohort_falls(d, t, examples: float, cohort=(3, 11, 17), everyone=False):
    """30 clients near 75% on ``examples`` held-out rows each; from round 8 a cohort of 3 (10%)
    loses 10 points a round (the mean of all clients falls), the others gain 0.3 a round."""
    base = 0.75 + 0.003 * t + 0.01 * np.sin(np.arange(30))
    fall = 0.1 * max(0, t - 7)
    base[list(cohort)] -= fall
    if everyone:
        base -= fall
    d.eval_accuracy[:] = np.clip(base, 0, 1)
    d.eval_examples[:] = examples


def test_a_cohort_regression_fires_although_it_pulls_the_mean_down():
    out = _run(
        SyntheticFederation(30, alpha=0.5, seed=9), 16, lambda d, t: _cohort_falls(d, t, 500)
    )
    fair = _signals(out, "fairness_regression")
    assert fair and 9 <= fair[0][0] <= 11, fair
    first = fair[0][1]
    assert first.details["mean_change"] < 0 < first.details["rest_change"]
    assert "the other 90% of clients +" in first.message


def test_a_fall_of_every_client_or_of_tiny_evaluation_sets_is_no_fairness_regression():
    fed = SyntheticFederation(30, alpha=0.5, seed=9)
    everyone = _run(fed, 16, lambda d, t: _cohort_falls(d, t, 500, everyone=True))
    assert not _signals(everyone, "fairness_regression")  # a global fall: the others fall too
    # the same cohort fall, measured on 3 examples a client: within its binomial noise
    tiny = _run(fed, 12, lambda d, t: _cohort_falls(d, t, 3))
    assert not _signals(tiny, "fairness_regression")
    assert min(a.round_scores["fairness_worst10_threshold"] for a in tiny[6:]) > 0.3
    # no counts reported: no binomial term, so the stricter gate (the mean of all must rise):
    # the fall shows only while the mean's fitted change is still positive
    uncounted = _run(fed, 16, lambda d, t: _cohort_falls(d, t, np.nan))
    fired = _signals(uncounted, "fairness_regression")
    assert all(s.details["mean_change"] > 0 and "mean accuracy +" in s.message for _, s in fired)
    assert uncounted[-1].round_scores["fairness_mean_change"] < 0 and fired[-1][0] < 16


def test_stagnation_tells_converged_from_stuck():
    fed = SyntheticFederation(20, alpha=0.5, seed=2)
    rounds = 30

    def converging(d, t):
        d.global_eval_loss = 0.4 + 1.6 * np.exp(-t / 2.5)
        d.aggregate_update_norm = 0.6 * np.exp(-t / 8)

    def stuck(d, t):
        d.global_eval_loss = 2.3 + 0.0001 * np.sin(t)
        d.aggregate_update_norm = 0.6

    conv = _signals(_run(fed, rounds, converging), "global_stagnation")
    assert conv and all(s.severity == "info" and s.details["converged"] for _, s in conv)
    st = _signals(_run(fed, rounds, stuck), "global_stagnation")
    assert st and all(s.severity == "warning" and not s.details["converged"] for _, s in st)


def test_dropout_under_partial_participation_counts_sampled_rounds_and_improbable_absence():
    from monitor.evaluation.synthetic import _subset

    n = 40
    fed = SyntheticFederation(n, alpha=0.5, seed=3)
    rng = np.random.default_rng(0)
    sampled = {t: set(rng.choice(n, size=n // 2, replace=False).tolist()) for t in range(1, 31)}
    for t in range(8, 31):
        sampled[t].add(5)  # the victim is sampled every round from 8 on (and times out)

    def round_(t: int, timeout: bool):
        gone = {5, 6} if t >= 8 else set()  # from round 8 c005 and c006 never answer
        rows = sorted(sampled[t] - gone) + ([5] if timeout and t >= 8 else [])
        d = _subset(fed.round(t), np.array(sorted(rows)))
        if timeout and t >= 8:
            d.status[d.client_ids.index("c00005")] = "timeout"
        d.num_sampled = n // 2
        return d

    for timeout in (True, False):
        st, seen = DetectorState(), {}
        for t in range(1, 31):
            a = analyze_round(fed.run(), Thresholds(), st, round_(t, timeout))
            st = a.state
            for s in a.active:
                if s.kind == "dropout":
                    seen.setdefault(s.client_id, []).append(t)
        if timeout:
            # one sampled timeout is a dropout at half participation (ceil(2 x 0.5) = 1)
            assert seen["c00005"][0] == 8
        # never heard from again: absent 14 rounds at q = 0.5 has chance 0.5^14 < 1e-4
        assert seen["c00006"][0] >= 8 + 13 - 7, seen["c00006"]
        healthy = {c for c in seen if c not in ("c00005", "c00006")}
        assert not healthy, seen


def test_a_federation_wide_shift_absorbs_its_members_consequences_but_not_a_sign_flip():
    shift = Fault("feature_shift", list(range(30)), 8, magnitude=2.0)
    later = [
        Fault("loss_jump", [3, 4], 12, magnitude=1.5),
        Fault("label_noise", [7], 12, magnitude=1.0),
        Fault("sign_flip", [6], 12),
    ]
    fed = SyntheticFederation(30, alpha=0.5, seed=5, faults=[shift, *later])
    out, seen = stream(fed, 16)
    # one federation-level finding from onset to the end; the members' loss jump is part of it
    assert [r for r, _ in _signals(out, "federation_drift")] == list(range(8, 17))
    assert not [
        k for k in seen if k[0] in ("feature_drift", "data_drift", "performance_drift", "label_noise")
    ]
    last = _signals(out, "federation_drift")[-1][1]
    assert last.details["clients_count"] == 30 and last.details["since_round"] == 8
    assert {"c00003", "c00004"} <= set(last.details["caused"]["performance_drift"])
    assert last.details["caused"]["label_noise"] == ["c00007"]
    assert "performance drift of" in last.message
    # a sign-flipped update stands out against clients whose data moved as much: its own finding
    assert seen[("update_divergence", "c00006")][0] == 12
    # without the federation-wide shift the loss jump is the clients' own finding
    _, alone = stream(SyntheticFederation(30, alpha=0.5, seed=5, faults=later), 16)
    assert ("performance_drift", "c00003") in alone and ("performance_drift", "c00004") in alone
    assert ("label_noise", "c00007") in alone


def test_the_federation_wide_change_stays_one_finding_until_no_client_differs():
    faults = [
        Fault("feature_shift", list(range(30)), 8, end=12, magnitude=2.0),
        Fault("feature_shift", [1, 2, 3], 8, end=14, magnitude=2.0),  # these three go on
        Fault("feature_shift", [2], 17, magnitude=2.0),  # a drift of its own, after the change
    ]
    out, seen = stream(SyntheticFederation(30, alpha=0.5, seed=5, faults=faults), 19)
    rounds = [r for r, _ in _signals(out, "federation_drift")]
    assert rounds == list(range(8, 14)), rounds
    late = dict(_signals(out, "federation_drift"))[13]
    assert "3 of 30 clients still differ (one change since round 8)" in late.message
    assert late.details["clients_count"] == 30  # the members of the change, not this round's
    drift = {k: v for k, v in seen.items() if k[0] in ("feature_drift", "data_drift")}
    assert drift and all(k[1] == "c00002" and min(v) >= 17 for k, v in drift.items()), drift
