"""update_divergence's norm side: judged against the client's own usual as well as the round's."""

from __future__ import annotations

import numpy as np

from monitor.detectors import DetectorState, Thresholds, analyze_round
from monitor.detectors.updates import UpdateState
from monitor.evaluation.synthetic import Fault, SyntheticFederation


def _stream(fed: SyntheticFederation, rounds: int, scale=None):
    """{client: [rounds update_divergence active]}; ``scale(t)``: per-client norm factors."""
    run, th, st, seen = fed.run(), Thresholds(), DetectorState(), {}
    for t in range(1, rounds + 1):
        d = fed.round(t)
        if scale is not None:
            f = scale(t)
            d.sketch *= f[:, None]
            d.update_norm *= f
            d.aggregate_sketch = d.sketch.mean(axis=0)
        a = analyze_round(run, th, st, d)
        st = a.state
        for s in a.active:
            if s.kind == "update_divergence":
                seen.setdefault(s.client_id, []).append(t)
    return seen


def test_a_client_that_always_sends_a_larger_or_smaller_update_stays_quiet():
    # more local data, more steps: 4x (and 0.3x) the round's median norm every round
    faults = [
        Fault("norm_scale", [7], 1, magnitude=4.0),
        Fault("norm_scale", [8], 1, magnitude=0.3),
    ]
    fed = SyntheticFederation(50, alpha=100.0, seed=4, faults=faults)
    assert _stream(fed, 20) == {}


def test_a_slow_honest_drift_of_the_norm_is_followed():
    # a client whose local loss converges: its norm falls 5% a round, to 0.25x by round 28
    fed = SyntheticFederation(50, alpha=100.0, seed=5)

    def scale(t):
        f = np.ones(50)
        f[3] = 0.95 ** (t - 1)
        return f

    assert _stream(fed, 30, scale) == {}


def test_a_jump_beyond_the_client_usual_fires_on_its_second_round():
    faults = [
        Fault("norm_scale", [7], 1, magnitude=4.0),  # its usual: 4x
        Fault("norm_scale", [7], 10, magnitude=11.0),  # explodes: ~44x
        Fault("norm_scale", [9], 10, magnitude=1 / 11.0),  # collapses to 1/11 of its usual
    ]
    fed = SyntheticFederation(50, alpha=100.0, seed=4, faults=faults)
    seen = _stream(fed, 16)
    # only the larger side is divergence: a shrinking update is what honest clients send as
    # they converge, or after the aggregate moved away from their data (a near-zero one is a
    # free rider, its own kind)
    assert set(seen) == {fed.client_ids[7]}, seen
    assert seen[fed.client_ids[7]] == list(range(11, 17))


def test_a_client_that_explodes_from_its_first_round_is_flagged_and_stays_flagged():
    faults = [Fault("norm_scale", [5], 1, magnitude=11.0)]
    fed = SyntheticFederation(50, alpha=100.0, seed=6, faults=faults)
    seen = _stream(fed, 15)
    # no usual to compare with: the stricter bound holds, and exploded rounds never teach one
    assert seen == {fed.client_ids[5]: list(range(2, 16))}, seen


def test_a_state_stored_before_the_norm_reference_reads_with_no_usual_yet():
    # additive fields: no layout bump; the stored clients start with no usual
    fed = SyntheticFederation(20, seed=7)
    run, th = fed.run(), Thresholds()
    st = analyze_round(run, th, DetectorState(), fed.round(1)).state
    arrays, header = st.detectors["update_anomalies"].pack()
    del arrays["norm_ref"], arrays["norm_ref_n"]
    old = UpdateState.unpack(arrays, header)
    assert header["layout"] == UpdateState.LAYOUT
    assert old.norm_ref.shape == (20,) and (old.norm_ref_n == 0).all()
    assert old.norm_ref_n.dtype == np.int64
