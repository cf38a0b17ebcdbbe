"""Old vs new :func:`analyze_round` on the same 10,000-client round, in one run, as a ratio.

Runs ``bench/bench_signals.py`` alternately in another checkout (``OLD``, e.g. a
``git worktree add --detach /tmp/old <commit>``) and in this one, ``--pairs``
times, so both see the same machine load; reports each side's median of the
per-run medians and the median of the per-pair ratios (new / old; < 1 = faster).

    python bench/compare_signals.py /tmp/old [--pairs 5] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"median (\d+) ms.*\n.*\n.*to_bytes (\d+) ms, from_bytes (\d+) ms")


def one(checkout: Path, repeat: int) -> tuple[float, float, float]:
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, str(checkout / "bench" / "bench_signals.py"), "--repeat", str(repeat)],
        cwd=checkout, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    m = PATTERN.search(out)
    if m is None:
        raise SystemExit(f"unexpected output from {checkout}:\n{out}")
    return float(m.group(1)), float(m.group(2)), float(m.group(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    old, new = [], []
    for i in range(a.pairs):
        old.append(one(a.old.resolve(), a.repeat))
        new.append(one(NEW, a.repeat))
        print(f"pair {i + 1}: old {old[-1][0]:.0f} ms, new {new[-1][0]:.0f} ms", flush=True)
    for j, what in enumerate(("analyze_round", "to_bytes", "from_bytes")):
        o = statistics.median(x[j] for x in old)
        n = statistics.median(x[j] for x in new)
        r = statistics.median(y[j] / x[j] for x, y in zip(old, new, strict=True) if x[j] > 0)
        print(
            f"{what}: old median {o:.0f} ms, new median {n:.0f} ms, new/old per pair (median) {r:.2f}"
        )
    print(
        f"{a.pairs} pairs, {a.repeat} runs each, cpu affinity {len(os.sched_getaffinity(0))} cores"
    )


if __name__ == "__main__":
    main()
