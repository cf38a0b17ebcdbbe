"""Report benchmark: the size and build time of the HTML report of a 1,000-client x 200-round run.

Ingests the run over HTTP with the SDK into a real service (uvicorn in a
thread, SQLite), the reports of bench_ingest's shape (10 classes, 20 features
x 10 bins, 128-float sketch) with five clients whose labels drift from round
50 so that the report has findings and client sections; then builds the
report from the store and, where Chromium and Playwright are installed, opens
it headless and times until every chart has drawn.

    python -m bench.bench_report --rounds 200 --clients 1000 --write
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track

from bench.bench_ingest import N_CLASSES, round_reports, run_spec
from collectors import MonitorClient
from monitor.report import build_report_data, render_html
from monitor.report.render import _static
from monitor.server import ServerThread
from monitor.settings import Settings
from monitor.store import Store
from monitor.store.scores import round_scores

console = Console()
DRIFTING = 5
ONSET = 50


def drifted(reports: list[dict]) -> list[dict]:
    """The first DRIFTING clients' labels moved toward class 1."""
    out = [dict(r) for r in reports]
    for r in out[:DRIFTING]:
        labels = np.asarray(r["label_histogram"]) * 0.3
        labels[1] += 140
        r["label_histogram"] = labels.tolist()
    assert len(labels) == N_CLASSES
    return out


def ingest(url: str, rounds: int, clients: int) -> None:
    rng = np.random.default_rng(0)
    healthy = [round_reports(rng, r, clients) for r in range(5)]
    drifting = [drifted(p) for p in healthy]
    with MonitorClient(url, batch_size=500, timeout_seconds=120) as sdk:
        sdk.register_run(run_spec("bench", clients) | {"centralized_accuracy": 0.8})
        for rnd in track(range(1, rounds + 1), description="ingesting", console=console):
            sdk.report("bench", rnd, (drifting if rnd >= ONSET else healthy)[rnd % 5])
            sdk.close_round(
                "bench",
                rnd,
                {"global_eval_accuracy": 0.8, "global_eval_loss": 0.5, "num_sampled": clients},
            )


def browser_seconds(path: Path) -> float | None:
    if shutil.which("chromium") is None:
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        start = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_function(
            "() => document.body.dataset.reportReady === 'true' && Array.from(document.querySelectorAll('.chart'))"
            ".every(el => el.dataset.drawn === 'true' || el.dataset.points === '0')",
            timeout=120_000,
        )
        elapsed = time.perf_counter() - start
        browser.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write bench/results/report.md")
    parser.add_argument(
        "--data-dir", type=Path, help="keep the run here (reused when it holds one)"
    )
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="fs-bench-report-"))
    settings = Settings(data_dir=data_dir, port=0, host="127.0.0.1")
    store = Store(settings.resolved_database_url)
    store.create_schema()
    with store.read_session() as session:
        ingested = round_scores(session, "bench", args.rounds) is not None
    if not ingested:
        with ServerThread(settings) as url:
            ingest(url, args.rounds, args.clients)
            while True:
                with store.read_session() as session:
                    if round_scores(session, "bench", args.rounds) is not None:
                        break
                time.sleep(0.5)
    build, render = [], []
    for _ in range(args.repeats):
        with store.read_session() as session:
            t0 = time.perf_counter()
            data = build_report_data(session, "bench")
            t1 = time.perf_counter()
            page = render_html(data)
            t2 = time.perf_counter()
        build.append(t1 - t0)
        render.append(t2 - t1)
    store.dispose()
    out = data_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    total = out.stat().st_size
    bundle = len(_static("plotly-cartesian.min.js").encode())
    drawn = browser_seconds(out)
    lines = [
        f"# Report benchmark ({args.clients:,} clients x {args.rounds} rounds)",
        "",
        f"`python -m bench.bench_report --rounds {args.rounds} --clients {args.clients} --write` "
        "on the project's 2-core VM (shared with other work: load average "
        f"{os.getloadavg()[0]:.1f} when it finished).",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| report file | {total / 1e6:.2f} MB |",
        f"| of which plotly.js cartesian bundle | {bundle / 1e6:.2f} MB |",
        f"| of which data, markup and drawing code | {(total - bundle) / 1e6:.2f} MB |",
        f"| drift map rows shown / clients | {len(data['drift_map']['clients'])} / {data['drift_map']['clients_total']} |",
        f"| flagged clients (sections) | {data['clients_flagged']} ({len(data['clients'])}) |",
        f"| findings | {len(data['findings'])} |",
        f"| build from the store, median of {args.repeats} | {statistics.median(build):.2f} s |",
        f"| render HTML, median of {args.repeats} | {statistics.median(render):.3f} s |",
        f"| headless Chromium: open until every chart drew | {'n/a' if drawn is None else f'{drawn:.1f} s'} |",
    ]
    lines += [
        "",
        "Earlier versions of the build, same generated data: 13.6 s with a Python loop per client-round over the",
        "scores and a scan of the 200,000 report rows for participation and fairness; 5.8 s with",
        "the scores in arrays; now participation and the fairness band come from the round scores",
        "the engine stored (the reports are read only for rounds not analysed).",
    ]
    text = "\n".join(lines) + "\n"
    console.print(text)
    if args.write:
        Path("bench/results/report.md").write_text(text)
    if args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
