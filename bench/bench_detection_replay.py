"""Detection benchmark by record and replay: simulate each grid case once, replay the detectors.

``fedsentinel evaluate`` runs every case through the real service (HTTP, store, engine).
Tuning the detectors needs the same grid many times, and simulation is most of a run's
cost; this script records each case's report stream once (``--record``, a pickle per case
under ``--cache``) and then replays it through :func:`monitor.detectors.analyze_round` and
:func:`monitor.findings.reconcile` exactly as the engine calls them (state serialised
between rounds, findings resolved after 3 quiet rounds), scored by
:func:`monitor.evaluation.scoring.score_run`. The findings are the engine's; only HTTP and
the store are left out (docs/evaluation.md, "how the figures were made").

    python -m bench.bench_detection_replay --record --jobs 2          # the full grid, once
    python -m bench.bench_detection_replay --jobs 2 --out /tmp/replay  # replay and report
    python -m bench.bench_detection_replay --jobs 2 --write-docs       # ... into docs/evaluation.md

The report is ``fedsentinel evaluate``'s (:func:`monitor.evaluation.render.render_markdown`):
targets on the tuned and held-out seeds, conditions, calibration, per fault kind.
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path("data/bench-replay")


class _Recorder:
    def __init__(self) -> None:
        self.spec: dict[str, Any] | None = None
        self.rounds: dict[int, list[dict[str, Any]]] = {}
        self.closes: dict[int, dict[str, Any]] = {}

    def register_run(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def report(self, run_id: str, round: int, reports: list[dict[str, Any]]) -> None:
        self.rounds.setdefault(round, []).extend(reports)

    def close_round(self, run_id: str, round: int, summary: dict[str, Any]) -> None:
        self.closes[round] = summary


def record(case: Any, cache: Path) -> Path:
    """Simulate one case (once: an existing recording is kept)."""
    import torch

    from monitor.evaluation.grid import make_scenario
    from simulator import run_scenario

    torch.set_num_threads(1)
    path = cache / f"{case.run_id}.pkl"
    if path.exists():
        return path
    scenario = make_scenario(case)
    rec = _Recorder()
    result = run_scenario(scenario, rec, progress=False)
    body = {
        "spec": rec.spec,
        "rounds": rec.rounds,
        "closes": rec.closes,
        "truth": result.ground_truth,
        "client_ids": [scenario.client_id(k) for k in range(scenario.num_clients)],
        "nrounds": scenario.rounds,
        "partial": scenario.sample_fraction < 1,
        "alpha": case.alpha,
        "seed": case.seed,
        "condition": case.condition,
    }
    path.write_bytes(pickle.dumps(body))
    return path


def replay(path: Path) -> Any:
    """The recorded run through the detectors and the finding lifecycle; its scored result."""
    from monitor.detectors import DetectorState, RoundInput, Thresholds, analyze_round
    from monitor.evaluation.scoring import score_run
    from monitor.findings import reconcile
    from monitor.schemas import ClientReport, RoundClose, RunCreate

    b = pickle.loads(path.read_bytes())
    run = RunCreate.model_validate(b["spec"])
    th, blob = Thresholds(), DetectorState().to_bytes()
    open_: list[Any] = []
    closed: list[Any] = []
    seen: dict[str, list[int]] = {}
    for r in sorted(b["closes"]):
        raw = b["rounds"].get(r, [])
        for x in raw:
            seen.setdefault(x["client_id"], []).append(r)
        data = RoundInput.from_reports(
            r,
            [ClientReport.model_validate(x) for x in raw],
            RoundClose.model_validate(b["closes"][r]),
            run,
        )
        a = analyze_round(run, th, DetectorState.from_bytes(blob), data)
        blob = a.state.to_bytes()
        ch = reconcile(open_, a.active, a.round, 3, data.client_ids)
        touched = {f.key for f in ch.updated + ch.resolved}
        closed.extend(ch.resolved)
        open_ = [f for f in open_ if f.key not in touched] + ch.updated + ch.opened
    findings = [
        {
            "kind": f.kind,
            "client_id": f.client_id,
            "first_round": f.first_round,
            "severity": f.severity,
        }
        for f in closed + open_
    ]
    return score_run(
        b["truth"],
        findings,
        run_id=path.stem,
        client_ids=b["client_ids"],
        rounds=b["nrounds"],
        alpha=b["alpha"],
        seed=b["seed"],
        condition=b["condition"],
        client_rounds=seen if b["partial"] else None,
    )


def main() -> None:
    from monitor.evaluation.grid import SEVERITY, full_grid
    from monitor.evaluation.render import render_markdown, write_markdown
    from monitor.evaluation.scoring import summaries
    from simulator.scenario import FAULT_KINDS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--record", action="store_true", help="simulate the cases not recorded yet")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--match", default="", help="only cases whose run id contains this")
    ap.add_argument("--out", type=Path, help="write replay.md (the evaluate report) here")
    ap.add_argument(
        "--write-docs",
        action="store_true",
        help="also write the results into docs/evaluation.md (between its evaluate markers)",
    )
    args = ap.parse_args()
    kinds = [k for k in FAULT_KINDS if k in SEVERITY]
    tuned, held = full_grid(kinds)
    cases = [c for c in tuned + held if args.match in c.run_id]
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        if args.record:
            _progress(pool.map(record, cases, [args.cache] * len(cases)), len(cases), "record")
        paths = [args.cache / f"{c.run_id}.pkl" for c in cases]
        paths = [p for p in paths if p.exists()]
        results = dict(
            zip(paths, _progress(pool.map(replay, paths), len(paths), "replay"), strict=True)
        )
    seconds = time.perf_counter() - started
    held_ids = {c.run_id for c in held}
    t = [r for p, r in results.items() if p.stem not in held_ids]
    h = [r for p, r in results.items() if p.stem in held_ids]
    meta = {
        "runs": len(results),
        "grid": "the full grid (monitor.evaluation.grid.full_grid), recorded once and replayed "
        "through the detectors and the finding lifecycle",
        "seconds": seconds,
        "jobs": args.jobs,
        "machine": f"{os.cpu_count()} CPU(s)",
        "command": "python -m bench.bench_detection_replay"
        + (f" --jobs {args.jobs}" if args.jobs > 1 else ""),
    }
    text = render_markdown(summaries(t, kinds), t, meta, kinds, h)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "replay.md").write_text(text, encoding="utf-8")
    if args.write_docs:
        write_markdown(Path("docs/evaluation.md"), text)


def _progress(items: Any, total: int, what: str) -> list[Any]:
    from rich.progress import track

    return list(track(items, total=total, description=what, transient=True))


if __name__ == "__main__":
    main()
