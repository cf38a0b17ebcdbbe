"""The benchmark's targets (issue 11) and the tables that check them: per condition, per seed set.

Pure: run results in, markdown lines out. :mod:`monitor.evaluation.render` places them
in the report; the README quotes the targets table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from monitor.evaluation.grid import SEVERAL
from monitor.evaluation.scoring import KindSummary, RunResult, summarize

__all__ = [
    "RAMP_FAULTS",
    "Target",
    "targets",
    "render_targets",
    "render_conditions",
    "render_calibration",
]

RAMP_FAULTS = frozenset({"fairness_regression"})
"""Faults that grow over rounds: they report their own delay, not the step-fault target."""


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    limit: float
    higher_is_better: bool
    note: str = ""

    @property
    def met(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit


def _worst(
    sums: dict[str, KindSummary], kinds: Sequence[str], attr: str, low: bool
) -> tuple[float, str]:
    vals = [(getattr(sums[k], attr), k) for k in kinds if not math.isnan(getattr(sums[k], attr))]
    if not vals:
        return math.nan, ""
    return min(vals) if low else max(vals)


def targets(runs: Sequence[RunResult], kinds: Sequence[str]) -> list[Target]:
    """Every "Done when" figure of issue 11 over ``runs``, each with its limit."""
    sums = {k: summarize([r for r in runs if r.faults == [k]], k) for k in kinds}
    sums = {k: s for k, s in sums.items() if s.runs}
    present = list(sums)
    total = summarize(runs, "all")
    recall, rk = _worst(sums, present, "recall", low=True)
    prec, pk = _worst(sums, present, "localisation_precision", low=True)
    steps = [k for k in present if k not in RAMP_FAULTS]
    delay, dk = _worst(sums, steps, "median_delay_rounds", low=False)
    wide = [r for r in runs if r.faults == ["federation_covariate_shift"]]
    wide_max = max((r.findings_after_onset for r in wide), default=math.nan)
    return [
        Target("recall, worst fault kind", recall, 0.95, True, rk),
        Target("localisation precision, worst fault kind", prec, 0.9, True, pk),
        Target("median delay of step faults (rounds), worst kind", delay, 1, False, dk),
        Target(
            "client-level false alarms / 1,000 healthy client-rounds",
            total.false_alarms_per_1000,
            2,
            False,
            f"{total.false_alarms} in {total.healthy_client_rounds:,}",
        ),
        Target(
            "federation-level false alarms / 1,000 healthy run-rounds",
            total.federation_false_alarms_per_1000,
            1,
            False,
            f"{total.federation_false_alarms} in {total.healthy_run_rounds:,}",
        ),
        Target(
            "findings opened per injected fault (mean)",
            total.findings_per_fault,
            2,
            False,
            f"{total.findings_after_onset} for {total.injected_faults}; "
            f"{total.findings_on_cause} on the cause",
        ),
        Target(
            "findings of a federation-wide shift, worst run",
            float(wide_max),
            3,
            False,
            f"{len(wide)} runs",
        ),
    ]


def _fmt(x: float, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def render_targets(sets: dict[str, Sequence[RunResult]], kinds: Sequence[str]) -> list[str]:
    """One column per seed set (tuned, held-out): value, and whether it meets the target."""
    names = list(sets)
    rows = {name: targets(runs, kinds) for name, runs in sets.items() if runs}
    if not rows:
        return []
    lines = [
        "| target | limit | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    first = next(iter(rows.values()))
    for i, t in enumerate(first):
        cells = []
        for name in names:
            if name not in rows:
                cells.append("-")
                continue
            u = rows[name][i]
            mark = "met" if u.met else "**not met**"
            cells.append(
                f"{_fmt(u.value)} {mark} ({u.note})" if u.note else f"{_fmt(u.value)} {mark}"
            )
        sign = ">=" if t.higher_is_better else "<="
        lines.append(f"| {t.name} | {sign} {t.limit:g} | " + " | ".join(cells) + " |")
    return lines


def render_conditions(runs: Sequence[RunResult]) -> list[str]:
    """Recall, delay, false alarms and alert noise per grid condition (and for runs with several faults)."""
    groups: dict[str, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(r.condition, []).append(r)
    several = [r for r in runs if len(r.faults) > 1]
    if several:
        groups[f"{SEVERAL} faults (any condition)"] = several
    lines = [
        "| condition | runs | faulty pairs | recall | median delay | client false alarms / 1,000 | "
        "federation false alarms / 1,000 run-rounds | findings per fault | on the cause |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, group in groups.items():
        s = summarize(group, name)
        lines.append(
            f"| {name} | {s.runs} | {s.pairs} | {_fmt(s.recall)} | "
            f"{'-' if math.isnan(s.median_delay_rounds) else f'{s.median_delay_rounds:g}'} | "
            f"{_fmt(s.false_alarms_per_1000)} ({s.false_alarms}) | "
            f"{_fmt(s.federation_false_alarms_per_1000)} ({s.federation_false_alarms}) | "
            f"{_fmt(s.findings_per_fault)} | {s.findings_on_cause}/{s.findings_after_onset} |"
        )
    return lines


SIZE_BUCKETS = ((1, 50), (51, 200), (201, 1000), (1001, None))
"""Federation sizes the calibration table groups runs by (the grid: 20-50, 200 and 1,000 clients)."""


def _bucket(n: int) -> tuple[int, str]:
    """(order, label) of the size bucket of an ``n``-client federation."""
    for i, (lo, hi) in enumerate(SIZE_BUCKETS):
        if n >= lo and (hi is None or n <= hi):
            return i, (f"{lo:,}-{hi:,}" if hi is not None else f"over {lo - 1:,}")
    return len(SIZE_BUCKETS), str(n)


def _rate(group: Sequence[RunResult]) -> str:
    if not group:
        return "-"
    n = sum(r.federation_false_alarms for r in group)
    rr = sum(r.healthy_run_rounds for r in group)
    return f"{n} in {rr:,} ({_fmt(1000 * n / rr if rr else math.nan)} / 1,000)"


def render_calibration(runs: Sequence[RunResult]) -> list[str]:
    """Calibration measured: false alarms of the run-level (federation) thresholds per 1,000
    run-rounds, by federation size (:data:`SIZE_BUCKETS`) and Dirichlet alpha.

    Two rows per size: the healthy runs (any participation or noise condition), and every run
    without a federation-level fault (a client-level fault must not page at federation level
    either, unless it is marked as explained)."""
    scored = [r for r in runs if r.healthy_run_rounds]
    alphas = sorted({r.alpha for r in scored if r.alpha is not None})
    sizes = sorted({_bucket(r.num_clients) for r in scored})
    lines = [
        "| clients | runs | " + " | ".join(f"alpha {a:g}" for a in alphas) + " | all | by kind |",
        "|---|---|" + "---|" * (len(alphas) + 2),
    ]
    for size in sizes:
        for label, keep in (
            ("healthy", lambda r: r.healthy),
            ("no federation fault", lambda r: True),
        ):
            group = [r for r in scored if _bucket(r.num_clients) == size and keep(r)]
            if not group:
                continue
            cells = [_rate([r for r in group if r.alpha == a]) for a in alphas]
            kinds: dict[str, int] = {}
            for r in group:
                for k, v in r.federation_false_alarms_by_kind.items():
                    kinds[k] = kinds.get(k, 0) + v
            by_kind = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none"
            lines.append(
                f"| {size[1]}, {label} | {len(group)} | "
                + " | ".join(cells)
                + f" | {_rate(group)} | {by_kind} |"
            )
    return lines
