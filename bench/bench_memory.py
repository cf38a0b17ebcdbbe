"""Resident memory of the service under large and refused uploads, before and after.

``python -m bench.bench_memory [--src DIR] [--label NAME] [--write]``

Starts ``fedsentinel serve`` (one worker, SQLite, API keys set) from the
source tree ``--src`` (default: this checkout, so an older checkout can be
measured with the same script), and samples the server's VmRSS every 20 ms
while it:

1. answers 32 parallel anonymous uploads of 17 MiB each, sent chunked (no
   Content-Length, so only reading or refusing the body decides);
2. answers 32 parallel authenticated uploads of the same 20,000 reports
   (9 MiB) for one round (a resend storm: one stores, the rest are
   duplicates), which the upload slots take a few at a time;
3. stores one request of 20,000 reports (10-class histogram, 32-float sketch, 4 decimals).

Phases 2 and 3 are then repeated, to tell a plateau from growth. For each
phase: RSS before, peak during, and after (2 s after the last answer). ``--write`` appends the table to bench/results/memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
MIB = 1024 * 1024
SKETCH_DIM = 32


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Sampler:
    """The peak of a process's RSS while a phase runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _report(i: int) -> dict:
    return {
        "client_id": f"c{i:05d}", "num_examples": 100 + i % 50, "eval_loss": 0.5, "eval_accuracy": 0.8,
        "update_norm": 1.0 + (i % 7) / 10, "label_histogram": [float((i + k) % 13) for k in range(10)],
        "update_sketch": [round(((i * 31 + k) % 97) / 97 - 0.5, 4) for k in range(SKETCH_DIM)],
    }  # fmt: skip


def _batch(n: int, start: int = 0) -> bytes:
    return json.dumps({"reports": [_report(start + i) for i in range(n)]}).encode()


def _start(src: Path, data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(src), "FEDSENTINEL_DATA_DIR": str(data_dir),
           "FEDSENTINEL_API_KEYS": json.dumps({KEY: ["write", "read"]}), "FEDSENTINEL_LOG_LEVEL": "warning"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve", "--port", str(port), "--workers", "1"],
        env=env, cwd=src, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the service did not start")


def _chunks(total: int):  # type: ignore[no-untyped-def]
    sent = 0
    while sent < total:
        yield b" " * MIB
        sent += MIB


def _anonymous_upload(url: str) -> int:
    try:
        r = httpx.post(f"{url}/api/v1/runs/bench/rounds/1/reports", content=_chunks(17 * MIB),
                       headers={"content-type": "application/json"}, timeout=120)  # fmt: skip
        return r.status_code
    except httpx.HTTPError:
        return -1  # the server answered and closed while the client was still sending


def _authenticated_upload(url: str, body: bytes, rnd: int) -> int:
    headers = {"content-type": "application/json", "x-api-key": KEY}
    try:
        url_ = f"{url}/api/v1/runs/bench/rounds/{rnd}/reports"
        return httpx.post(url_, content=body, headers=headers, timeout=300).status_code
    except httpx.HTTPError:
        return -1


def _phase(pid: int, name: str, work) -> dict:  # type: ignore[no-untyped-def]
    before = _rss_mib(pid)
    with Sampler(pid) as sampler:
        codes = work()
    time.sleep(2.0)
    after = _rss_mib(pid)
    return {"phase": name, "before": before, "peak": max(sampler.peak, after), "after": after,
            "codes": dict(sorted({str(c): codes.count(c) for c in set(codes)}.items()))}  # fmt: skip


def measure(src: Path) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        from monitor.server import free_port

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _start(src, Path(tmp), port)
        try:
            headers = {"x-api-key": KEY}
            spec = {
                "run_id": "bench",
                "task": {"num_classes": 10},
                "sketch_dim": SKETCH_DIM,
                "expected_clients": 20000,
            }
            assert httpx.post(f"{url}/api/v1/runs", json=spec, headers=headers).status_code == 201
            _authenticated_upload(url, _batch(200), 9)  # warm-up: imports, caches, pools
            time.sleep(1.0)
            big = _batch(20_000, start=100_000)  # the most one request may carry
            body = _batch(20_000, start=200_000)
            pool = ThreadPoolExecutor(32)

            def anonymous() -> list[int]:
                return list(pool.map(lambda _: _anonymous_upload(url), range(32)))

            def authenticated() -> list[int]:
                return list(pool.map(lambda _: _authenticated_upload(url, big, 2), range(32)))

            rows = [
                _phase(proc.pid, "32 anonymous 17 MiB uploads (chunked)", anonymous),
                _phase(proc.pid, f"32 authenticated uploads of 20,000 reports ({len(big) / MIB:.1f} MiB)", authenticated),
                _phase(proc.pid, f"one 20,000-report request ({len(body) / MIB:.1f} MiB)",
                       lambda: [_authenticated_upload(url, body, 3)]),
                _phase(proc.pid, "the 32 authenticated uploads again", authenticated),
                _phase(proc.pid, "another 20,000-report request",
                       lambda: [_authenticated_upload(url, _batch(20_000, start=300_000), 4)]),
            ]  # fmt: skip
            pool.shutdown()
            return rows
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def table(label: str, rows: list[dict]) -> str:
    lines = [
        f"| {label}: phase | RSS before (MiB) | peak | after | answers |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['phase']} | {r['before']:.0f} | {r['peak']:.0f} | {r['after']:.0f} | {r['codes']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT, help="source tree the service runs from")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--write", action="store_true", help="append to bench/results/memory.md")
    args = parser.parse_args()
    out = table(args.label, measure(args.src.resolve()))
    print(out)
    if args.write:
        with open(ROOT / "bench" / "results" / "memory.md", "a", encoding="utf-8") as fh:
            fh.write(out + "\n\n")


if __name__ == "__main__":
    main()
