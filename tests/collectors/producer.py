"""A reporting process for the durability test: ``python -m tests.collectors.producer URL SPOOL ACKS ROUNDS``.

It registers a run and plays ``ROUNDS`` rounds of deterministic reports
through the SDK with a spool. After each ``report()`` returns it appends the
acknowledged ``round client`` pairs to ACKS (flushed and fsynced: the test's
witness of what the SDK promised). Restarted on the same spool it plays the
same rounds again; identical resends are duplicates, not new rows.
"""

from __future__ import annotations

import os
import sys

from collectors import MonitorClient
from tests.factories import close_body, report, run_spec

CLIENTS = [f"c{i:02d}" for i in range(12)]
RUN_ID = "durable"


def main(url: str, spool: str, acks: str, rounds: int) -> None:
    with MonitorClient(url, spool_dir=spool, batch_size=4, max_retries=1, backoff_base_seconds=0.01,
                       backoff_max_seconds=0.02, timeout_seconds=2, probe_interval_seconds=0.2) as sdk, \
            open(acks, "a") as witness:  # fmt: skip
        sdk.register_run(run_spec(RUN_ID, expected_clients=len(CLIENTS)))
        for rnd in range(1, rounds + 1):
            reports = [report(cid, seed=rnd * 100 + i) for i, cid in enumerate(CLIENTS)]
            sdk.report(RUN_ID, rnd, reports)
            witness.write("".join(f"{rnd} {cid}\n" for cid in CLIENTS))
            witness.flush()
            os.fsync(witness.fileno())
            sdk.close_round(RUN_ID, rnd, close_body(global_eval_accuracy=rnd / 1000))
        left = sdk.flush(timeout=60).left
    print(f"done, {left} left", flush=True)
    sys.exit(0 if left == 0 else 3)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
