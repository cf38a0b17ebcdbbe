"""Time :func:`monitor.detectors.analyze_round` on one large round.

Default: 10,000 clients, 10 classes, 20 features x 10 bins, 128-float sketch,
after ``--warm`` rounds (so references, Page-Hinkley and previous sketches
exist and every detector runs). Reports the median of ``--repeat`` runs of the
same round on the same state, plus the state's serialised size and the time
to serialise it and read it back.

    python bench/bench_signals.py [--clients 10000] [--repeat 7]

Pin to one core for the headline number:
``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 0 python bench/bench_signals.py``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.detectors import DetectorState, Thresholds, analyze_round  # noqa: E402
from monitor.evaluation.synthetic import Fault, SyntheticFederation  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--sketch", type=int, default=128)
    ap.add_argument("--warm", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()

    n = a.clients
    faults = [
        Fault("label_shift", range(0, n, 500), a.warm + 1, magnitude=0.6),
        Fault("sign_flip", range(1, n, 700), a.warm),
        Fault("straggler", range(2, n, 900), a.warm + 1, magnitude=10),
    ]
    fed = SyntheticFederation(
        n,
        num_classes=a.classes,
        n_features=a.features,
        bins=a.bins,
        sketch_dim=a.sketch,
        faults=faults,
    )
    run = fed.run("bench")
    th = Thresholds()
    state = DetectorState()
    for t in range(1, a.warm + 1):
        state = analyze_round(run, th, state, fed.round(t)).state
    data = fed.round(a.warm + 1)
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        res = analyze_round(run, th, state, data)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    blob = res.state.to_bytes()
    t_ser = time.perf_counter() - t0
    t0 = time.perf_counter()
    DetectorState.from_bytes(blob)
    t_de = time.perf_counter() - t0
    print(
        f"analyze_round: {n} clients, {a.classes} classes, {a.features}x{a.bins} bins, "
        f"sketch {a.sketch}: median {statistics.median(times) * 1e3:.0f} ms, "
        f"min {min(times) * 1e3:.0f} ms, max {max(times) * 1e3:.0f} ms over {a.repeat} runs "
        f"(cpu affinity {len(os.sched_getaffinity(0))} cores)"
    )
    print(
        f"active signals: {len(res.active)}; flagged clients: {int(res.round_scores['clients_flagged'])}"
    )
    print(
        f"state: {len(blob) / 1e6:.1f} MB, to_bytes {t_ser * 1e3:.0f} ms, from_bytes {t_de * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
