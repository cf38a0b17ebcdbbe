"""The server side: a wrapper around the user's Flower strategy that reports every round.

::

    strategy = MonitoredStrategy(FedAvg(...), monitor="http://127.0.0.1:8000", run=run_spec)
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10)

It implements Flower's (Message API) ``Strategy`` by delegating every call to
the wrapped strategy, and reads what passes through:

* ``configure_train``: registers the run (first round), keeps the global arrays
  and the sampled node ids, and adds the run's settings for :func:`monitor_mod`
  to each instruction.
* ``aggregate_train``: before delegating, reads every reply - node id
  (``metadata.src_node_id``), failure (``has_error()``), the mod's statistics
  (taken out of the reply), the returned arrays (update norm and sketch against
  the global arrays). Sampled nodes without a reply are reported as ``timeout``.
  After delegating, the aggregate update's norm and sketch.
* ``aggregate_evaluate``: per-client and aggregated evaluation metrics; then the
  round's reports are sent and the round is closed. With a centralised
  ``evaluate_fn`` passed to :meth:`start`, the round closes after it instead,
  with its metrics as the global evaluation.

Nothing of the replies that the wrapped strategy sees is changed except that
fedsentinel's own record is removed, so aggregation results are identical with
and without the wrapper. Monitoring errors are logged, never raised; the HTTP
calls run in one background thread (in order), so a slow or unreachable
service does not hold up training, and :class:`~collectors.client.MonitorClient`
spools to disk what it cannot deliver.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from collectors.client import MonitorClient
from collectors.flower.records import (
    RECORD_KEY,
    STAT_FIELDS,
    as_float,
    finite_ratio,
    first_number,
    first_record,
    flatten_arrays,
    server_config,
)
from collectors.sink import ReportSink
from monitor.schemas import RunCreate

log = logging.getLogger("fedsentinel.flower")

EVAL_LOSS_KEYS = ("eval_loss", "loss", "test_loss", "val_loss")
EVAL_ACCURACY_KEYS = (
    "eval_acc",
    "eval_accuracy",
    "accuracy",
    "acc",
    "test_accuracy",
    "val_accuracy",
)


def default_spool_dir() -> Path:
    return Path(
        os.environ.get("FEDSENTINEL_SPOOL_DIR") or Path.home() / ".cache" / "fedsentinel" / "spool"
    )


class _RoundState:
    def __init__(self, server_round: int) -> None:
        self.server_round = server_round
        self.global_vec: np.ndarray | None = None
        self.global_keys: list[str] = []
        self.sampled: list[int] = []
        self.reports: dict[int, dict[str, Any]] = {}  # node id -> ClientReport dict
        self.summary: dict[str, Any] = {}


class MonitoredStrategy(Strategy):
    """Wrap ``strategy`` so that every round's client statistics reach fedsentinel.

    ``monitor`` is the service URL (a :class:`MonitorClient` with an on-disk
    spool is made), a ``MonitorClient``, or any :class:`~collectors.sink.ReportSink`
    (e.g. a ``JsonlWriter``). ``run`` is the run's registration (``RunCreate`` or
    its dict); its ``feature_bin_edges`` and ``sketch_dim``/``sketch_seed`` decide
    which histograms and sketches are computed.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        monitor: str | MonitorClient | ReportSink,
        run: RunCreate | dict[str, Any],
        api_key: str | None = None,
        spool_dir: str | Path | None = None,
        eval_loss_keys: tuple[str, ...] = EVAL_LOSS_KEYS,
        eval_accuracy_keys: tuple[str, ...] = EVAL_ACCURACY_KEYS,
        close_timeout_seconds: float = 60.0,
    ) -> None:
        self.strategy = strategy
        self.run = run if isinstance(run, RunCreate) else RunCreate.model_validate(run)
        self._owns_sink = isinstance(monitor, str)
        if isinstance(monitor, str):
            spool = (
                Path(spool_dir) if spool_dir is not None else default_spool_dir() / self.run.run_id
            )
            monitor = MonitorClient(monitor, api_key=api_key, spool_dir=spool, max_retries=2)
        self.sink: ReportSink = monitor
        self.eval_loss_keys = eval_loss_keys
        self.eval_accuracy_keys = eval_accuracy_keys
        self.close_timeout_seconds = close_timeout_seconds
        self.errors = 0
        """Monitoring errors so far (logged, never raised)."""
        self._registered = False
        self._round: _RoundState | None = None
        self._close_after_evaluate_fn = False
        self._node_names: dict[int, str] = {}
        self._sketch: Any = None  # (num_params, torch matrix)
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsentinel-flower")
        self._last_send: Future[None] | None = None

    # -- delegation ------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the wrapper: the wrapped strategy's settings.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._guard(self._on_configure_train, server_round, arrays, messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._guard(self._on_train_replies, server_round, replies)
        result = self.strategy.aggregate_train(server_round, replies)
        self._guard(self._on_train_aggregate, server_round, result)
        return result

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self._guard(self._on_evaluate_replies, server_round, replies)
        result = self.strategy.aggregate_evaluate(server_round, replies)
        self._guard(self._on_evaluate_aggregate, server_round, result)
        if not self._close_after_evaluate_fn:
            self._guard(self._finish_round)
        return result

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's ``Strategy.start`` loop, calling this wrapper's methods; waits for the last sends."""
        if type(self.strategy).start is not Strategy.start:
            log.warning(
                "%s overrides start(); fedsentinel runs Flower's standard loop around it",
                type(self.strategy).__name__,
            )
        wrapped_fn = None
        if evaluate_fn is not None:
            self._close_after_evaluate_fn = True

            def wrapped_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                res = evaluate_fn(server_round, arrays)
                if server_round > 0:
                    self._guard(self._on_evaluate_aggregate, server_round, res, True)
                    self._guard(self._finish_round)
                return res

        try:
            return super().start(
                grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, wrapped_fn
            )
        finally:
            self._close_after_evaluate_fn = False
            self.close()

    # -- monitoring ------------------------------------------------------------

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - monitoring never breaks training
            self.errors += 1
            log.exception("fedsentinel: monitoring step %s failed; training goes on", fn.__name__)

    def _send(self, fn: Callable[..., None], *args: Any) -> None:
        def call() -> None:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001
                self.errors += 1
                log.exception("fedsentinel: sending to the service failed; training goes on")

        self._last_send = self._sender.submit(call)

    def _on_configure_train(
        self, server_round: int, arrays: ArrayRecord, messages: list[Message]
    ) -> None:
        if self._round is not None:  # the previous round was not closed by an evaluate step
            self._finish_round()
        if not self._registered:
            self._send(self.sink.register_run, self.run.model_dump(mode="json", exclude_none=True))
            self._registered = True
        state = _RoundState(server_round)
        state.global_keys = list(arrays.keys())
        state.global_vec = flatten_arrays(arrays, state.global_keys)
        state.sampled = [m.metadata.dst_node_id for m in messages]
        self._round = state
        settings = ConfigRecord(server_config(self.run, server_round))
        for message in messages:
            # A RecordDict of its own per message (strategies share one between
            # messages): the same records plus ours; the mod takes ours out again.
            content = RecordDict(dict(message.content.items()))
            content[RECORD_KEY] = settings
            message.content = content

    def _name(self, node_id: int, claimed: Any = None) -> str:
        if isinstance(claimed, str) and claimed:
            self._node_names[node_id] = claimed
        return self._node_names.get(node_id) or f"node-{node_id}"

    def _on_train_replies(self, server_round: int, replies: list[Message]) -> None:
        state = self._round
        if state is None or state.server_round != server_round:
            state = self._round = _RoundState(server_round)
        weight_key = getattr(self.strategy, "weighted_by_key", "num-examples")
        deltas: list[tuple[int, np.ndarray]] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                state.reports[node] = {"client_id": self._name(node), "status": "failed"}
                log.info(
                    "fedsentinel: node %s failed in round %s: %s",
                    node,
                    server_round,
                    reply.error.reason,
                )
                continue
            stats = reply.content.pop(RECORD_KEY, None) if reply.has_content() else None
            stats = dict(stats) if stats is not None else {}
            report: dict[str, Any] = {
                "client_id": self._name(node, stats.get("client_id")),
                "status": "ok",
            }
            self._fill_stats(report, stats)
            if "num_examples" not in report:
                n = as_float((first_record(reply.content.metric_records) or {}).get(weight_key))
                if n is not None and math.isfinite(n) and n >= 0:
                    report["num_examples"] = int(n)
            arrays = first_record(reply.content.array_records)
            if arrays is not None and state.global_vec is not None:
                vec = flatten_arrays(arrays, state.global_keys)
                if vec is not None and vec.shape == state.global_vec.shape:
                    delta = vec - state.global_vec
                    report["update_norm"] = float(np.linalg.norm(delta))
                    deltas.append((node, delta))
            state.reports[node] = report
        for node in state.sampled:
            if node not in state.reports:
                state.reports[node] = {"client_id": self._name(node), "status": "timeout"}
        if deltas and self.run.sketch_dim > 0:
            sketches = self._sketch_rows(np.stack([d for _, d in deltas]))
            for (node, _), row in zip(deltas, sketches, strict=True):
                state.reports[node]["update_sketch"] = row.tolist()

    def _fill_stats(self, report: dict[str, Any], stats: dict[str, Any]) -> None:
        for name in STAT_FIELDS:
            value = stats.get(name)
            if value is None:
                continue
            if name == "num_examples":
                report[name] = int(value)
            elif name in ("train_accuracy", "eval_accuracy"):
                ratio = finite_ratio(value)
                if ratio is not None:
                    report[name] = ratio
            elif name == "wall_time_seconds":
                v = as_float(value)
                if v is not None and math.isfinite(v) and v >= 0:
                    report[name] = v
            else:
                report[name] = float(value)
        hist = stats.get("label_histogram")
        if hist is not None and len(hist) == self.run.task.num_classes:
            report["label_histogram"] = [float(x) for x in hist]
        flat = stats.get("feature_histograms")
        bins = self.run.bins_per_feature
        if flat is not None and bins and len(flat) == sum(bins):
            out, start = [], 0
            for nb in bins:
                out.append([float(x) for x in flat[start : start + nb]])
                start += nb
            report["feature_histograms"] = out

    def _sketch_rows(self, deltas: np.ndarray) -> np.ndarray:
        """``deltas @ R`` with the simulator's fixed-seed projection (``simulator.stats.sketch_matrix``)."""
        import torch

        from simulator.stats import sketch_matrix

        num_params = deltas.shape[1]
        if self._sketch is None or self._sketch[0] != num_params:
            self._sketch = (
                num_params,
                sketch_matrix(num_params, self.run.sketch_dim, self.run.sketch_seed),
            )
        return (
            (torch.from_numpy(deltas.astype(np.float32)) @ self._sketch[1])
            .numpy()
            .astype(np.float64)
        )

    def _on_train_aggregate(self, server_round: int, result: tuple[Any, Any]) -> None:
        state = self._round
        if state is None:
            return
        state.summary["num_sampled"] = len(state.sampled) or len(state.reports)
        arrays = result[0] if result else None
        if arrays is None or state.global_vec is None:
            return
        vec = flatten_arrays(arrays, state.global_keys)
        if vec is None or vec.shape != state.global_vec.shape:
            return
        delta = vec - state.global_vec
        state.summary["aggregate_update_norm"] = float(np.linalg.norm(delta))
        if self.run.sketch_dim > 0:
            state.summary["aggregate_sketch"] = self._sketch_rows(delta[None, :])[0].tolist()

    def _on_evaluate_replies(self, server_round: int, replies: list[Message]) -> None:
        state = self._round
        if state is None or state.server_round != server_round:
            return
        for reply in replies:
            if reply.has_error() or not reply.has_content():
                continue
            reply.content.pop(RECORD_KEY, None)
            report = state.reports.get(reply.metadata.src_node_id)
            if report is None or report["status"] != "ok":
                continue
            metrics = first_record(reply.content.metric_records)
            loss = first_number(metrics, self.eval_loss_keys)
            acc = finite_ratio(first_number(metrics, self.eval_accuracy_keys))
            # The mod's evaluation (global model received for training) takes precedence.
            if "eval_loss" not in report and loss is not None:
                report["eval_loss"] = loss
            if "eval_accuracy" not in report and acc is not None:
                report["eval_accuracy"] = acc

    def _on_evaluate_aggregate(
        self, server_round: int, metrics: Any, centralized: bool = False
    ) -> None:
        state = self._round
        if state is None or state.server_round != server_round or metrics is None:
            return
        if not centralized and "global_eval_loss" in state.summary:
            return
        loss = first_number(metrics, self.eval_loss_keys)
        acc = finite_ratio(first_number(metrics, self.eval_accuracy_keys))
        if loss is not None:
            state.summary["global_eval_loss"] = loss
        if acc is not None:
            state.summary["global_eval_accuracy"] = acc

    def _finish_round(self) -> None:
        state, self._round = self._round, None
        if state is None:
            return
        run_id = self.run.run_id
        reports = list(state.reports.values())
        if reports:
            self._send(self.sink.report, run_id, state.server_round, reports)
        self._send(self.sink.close_round, run_id, state.server_round, state.summary)

    def close(self) -> None:
        """Send what is pending and wait (up to ``close_timeout_seconds``) for the sends to finish."""
        self._guard(self._finish_round)
        last = self._last_send
        if last is not None:
            try:
                last.result(timeout=self.close_timeout_seconds)
            except FutureTimeout:
                log.warning(
                    "fedsentinel: sends still pending after %.0f s", self.close_timeout_seconds
                )
        if self._owns_sink:
            self._guard(self.sink.close)  # type: ignore[attr-defined]
