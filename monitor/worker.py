"""Analysis off the request path: a worker that analyses closed rounds.

A round close commits and returns; analysing the round (a second or more at
10,000 clients) happens here, so the FL server never waits for it. The worker
runs either as a thread inside each service process (the default,
``FEDSENTINEL_ANALYSIS=in_process``) or as ``fedsentinel worker`` processes
next to a service started with ``FEDSENTINEL_ANALYSIS=external``. Either way
it claims rounds through :class:`monitor.engine.Engine` (a row lock on the
run's detector state, ``SKIP LOCKED`` on PostgreSQL), so any number of workers
analyse each round exactly once, in round order per run, and a worker that
dies mid-round leaves the round to the next one.

A close wakes the worker of the process that served it at once; workers also
poll the store every ``analysis_poll_seconds`` for rounds closed elsewhere (by
another process, or whose analysis failed and must be retried).
"""

from __future__ import annotations

import logging
import threading

from monitor.engine import Engine

log = logging.getLogger("fedsentinel.worker")


class AnalysisWorker:
    """Drains closed, unanalysed rounds; ``start()`` for a thread, ``serve()`` to block."""

    def __init__(
        self, engine: Engine, *, poll_seconds: float = 1.0, name: str = "fedsentinel-analysis"
    ) -> None:
        self.engine = engine
        self.poll_seconds = poll_seconds
        self.name = name
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.analysed = 0
        self.failures = 0

    def notify(self, run_id: str | None = None, round_number: int | None = None) -> None:
        """A round was closed here: analyse now rather than at the next poll."""
        self._wake.set()

    def run_once(self) -> int:
        """Analyse what is claimable now, every run; return how many rounds this call analysed."""
        done = 0
        for run_id in self.engine.pending_runs():
            if self._stop.is_set():
                break
            try:
                done += len(self.engine.analyze_pending(run_id, skip_locked=True))
            except Exception:  # noqa: BLE001  (the round stays pending and is retried at the next poll)
                self.failures += 1
                log.exception(
                    "analysis of run %s failed; retrying in %.1f s", run_id, self.poll_seconds
                )
        self.analysed += done
        return done

    def serve(self) -> None:
        """Loop until :meth:`stop`: drain, then sleep until woken or the poll interval passes."""
        log.info("analysis worker %s started (poll every %.2f s)", self.name, self.poll_seconds)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                busy = self.run_once() > 0
            except Exception:  # noqa: BLE001  (store unreachable: keep polling)
                self.failures += 1
                log.exception("analysis worker %s could not read the store", self.name)
                busy = False
            if not busy:
                self._wake.wait(self.poll_seconds)
        log.info("analysis worker %s stopped after %d rounds", self.name, self.analysed)

    def start(self) -> AnalysisWorker:
        self._thread = threading.Thread(target=self.serve, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the round in progress (its transaction commits or rolls back whole)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "analysis worker %s still busy after %.0f s; leaving it", self.name, timeout
                )
