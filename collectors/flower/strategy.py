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
  the global arrays, streamed over parameter blocks without copying the
  replies: :mod:`collectors.flower.sketch`). Sampled nodes without a reply are
  reported as ``timeout``. After delegating, the aggregate update's norm and sketch.
  With ``run.secure_aggregation`` the replies' arrays are not read: the mod
  sends the update's norm, cosine to the previous global update and repeat
  flag, and only the aggregate is sketched.
* ``configure_evaluate``: adds the run id and round for the mod, which answers
  with the client id.
* ``aggregate_evaluate``: per-client and aggregated evaluation metrics; then the
  round's reports are sent and the round is closed. With a centralised
  ``evaluate_fn`` passed to :meth:`start`, the round closes after it instead,
  with its metrics as the global evaluation.

Client ids: the service knows clients by the id the mod sends
(``client-<partition-id>`` by default); the server learns node id -> client id
from every reply carrying the mod's record (train and evaluate) and names the
round's reports when the round is sent, so a node whose train step fails is
named by its evaluate reply of the same round. A node never heard from (failed
or timed out in every step so far) is reported as ``node-<node id>`` and under
its client id once it answers: the service then holds two clients for one
(Flower tells the server nothing else about a node). When two nodes claim one
client id in a round (two supernodes with the same partition-id), one keeps it
(see ``_assign_client_ids``) and the others are reported as
``<id>@node-<node id>`` with a warning: the service refuses a batch that holds
two reports for one client, which would lose the whole round.

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
import re
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
    NOISE_FIELDS,
    RECORD_KEY,
    STAT_FIELDS,
    as_float,
    finite_ratio,
    first_number,
    first_record,
    server_config,
)
from collectors.flower.sketch import FlatVector, Projector
from collectors.sink import ReportSink
from monitor.schemas import ID_PATTERN, RunCreate

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


_ID_RE = re.compile(ID_PATTERN)


def _add_settings(messages: list[Message], settings: ConfigRecord) -> None:
    for message in messages:
        # A RecordDict of its own per message (strategies share one between
        # messages): the same records plus ours; the mod takes ours out again.
        content = RecordDict(dict(message.content.items()))
        content[RECORD_KEY] = settings
        message.content = content


class _RoundState:
    def __init__(self, server_round: int) -> None:
        self.server_round = server_round
        self.global_vec: FlatVector | None = None
        self.global_keys: list[str] = []
        self.sampled: list[int] = []
        # node id -> ClientReport dict without its client_id (named when the round is sent)
        self.reports: dict[int, dict[str, Any]] = {}
        self.claimed: set[int] = set()  # nodes that sent a client id in this round
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
        name_from_evaluate: bool = False,
    ) -> None:
        """``name_from_evaluate``: also ask clients to name themselves in evaluate replies, so a
        node whose train step failed is still reported under its client id. Off by default: the
        extra record on every evaluate message cost 10-15% wall time on the small example app
        (bench/bench_flower.py), where Flower's 100 ms message polling amplifies small delays."""
        self.strategy = strategy
        self.name_from_evaluate = name_from_evaluate
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
        self._node_names: dict[int, str] = {}  # node id -> the client id it last claimed
        self._name_owner: dict[str, int] = {}  # client id -> the first node that claimed it
        self._projector: Projector | None = None
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
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        if self.name_from_evaluate:
            self._guard(self._on_configure_evaluate, server_round, messages)
        return messages

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
        state.global_vec = FlatVector.from_arrays(arrays, state.global_keys)
        state.sampled = [m.metadata.dst_node_id for m in messages]
        self._round = state
        _add_settings(messages, ConfigRecord(server_config(self.run, server_round)))

    def _on_configure_evaluate(self, server_round: int, messages: list[Message]) -> None:
        # Only so that the mod names its client in the evaluate reply as well
        # (a node whose train step failed is still named correctly).
        _add_settings(
            messages, ConfigRecord({"run_id": self.run.run_id, "round": int(server_round)})
        )

    def _learn_name(self, node_id: int, claimed: Any, state: _RoundState | None = None) -> None:
        """Remember the client id a node claims (ignored unless it is a valid identifier)."""
        if not isinstance(claimed, str) or not claimed:
            return
        if not _ID_RE.match(claimed):
            if self._node_names.get(node_id) != claimed:
                log.warning(
                    "fedsentinel: node %s claims the invalid client id %r; reported as node-%s",
                    node_id,
                    claimed,
                    node_id,
                )
                self._node_names[node_id] = claimed  # warn once
            return
        self._node_names[node_id] = claimed
        self._name_owner.setdefault(claimed, node_id)
        if state is not None:
            state.claimed.add(node_id)

    def _name(self, node_id: int) -> str:
        name = self._node_names.get(node_id)
        return name if name is not None and _ID_RE.match(name) else f"node-{node_id}"

    def _assign_client_ids(self, state: _RoundState) -> list[dict[str, Any]]:
        """The round's reports with their client ids, one report per id.

        Two nodes can claim one client id (two supernodes started with the same
        partition-id); the service refuses a batch with two reports for one client,
        so one node keeps the id and the others are reported as
        ``<id>@node-<node id>``. The keeper is chosen among the nodes that sent
        the id in this round (all of them if none did): the first node that
        claimed it in the run if it is one of them, else the first of them. So a
        node restarted under a new node id keeps its client id even when its old
        node id is still sampled (and times out).
        """
        by_name: dict[str, list[int]] = {}
        for node in state.reports:
            by_name.setdefault(self._name(node), []).append(node)
        out = []
        for node, report in state.reports.items():
            name = self._name(node)
            nodes = by_name[name]
            candidates = [n for n in nodes if n in state.claimed] or nodes
            owner = self._name_owner.get(name)
            keeper = owner if owner in candidates else candidates[0]
            if node != keeper:
                suffix = f"@node-{node}"
                alias = name[: 128 - len(suffix)] + suffix
                log.warning(
                    "fedsentinel: nodes %s all claim client id %r in round %s; node %s keeps it, "
                    "node %s is reported as %r",
                    nodes,
                    name,
                    state.server_round,
                    keeper,
                    node,
                    alias,
                )
                name = alias
            out.append({"client_id": name, **report})
        return out

    def _on_train_replies(self, server_round: int, replies: list[Message]) -> None:
        state = self._round
        if state is None or state.server_round != server_round:
            state = self._round = _RoundState(server_round)
        weight_key = getattr(self.strategy, "weighted_by_key", "num-examples")
        updates: list[tuple[int, FlatVector]] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                state.reports[node] = {"status": "failed"}
                log.info(
                    "fedsentinel: node %s failed in round %s: %s",
                    node,
                    server_round,
                    reply.error.reason,
                )
                continue
            stats = reply.content.pop(RECORD_KEY, None) if reply.has_content() else None
            stats = dict(stats) if stats is not None else {}
            self._learn_name(node, stats.get("client_id"), state)
            report: dict[str, Any] = {"status": "ok"}
            self._fill_stats(report, stats)
            if "num_examples" not in report:
                n = as_float((first_record(reply.content.metric_records) or {}).get(weight_key))
                if n is not None and math.isfinite(n) and n >= 0:
                    report["num_examples"] = int(n)
            arrays = first_record(reply.content.array_records)
            if self.run.secure_aggregation:
                pass  # only the aggregate is looked at: the client sent its own scalars
            elif arrays is not None and state.global_vec is not None:
                vec = FlatVector.from_arrays(arrays, state.global_keys)
                if vec is not None and vec.size == state.global_vec.size:
                    updates.append((node, vec))
            state.reports[node] = report
        for node in state.sampled:
            if node not in state.reports:
                state.reports[node] = {"status": "timeout"}
        if updates and state.global_vec is not None:
            norms, sketches = self._project(state.global_vec, [v for _, v in updates])
            for i, (node, _) in enumerate(updates):
                state.reports[node]["update_norm"] = float(norms[i])
                if sketches is not None:
                    state.reports[node]["update_sketch"] = sketches[i].tolist()

    def _fill_stats(self, report: dict[str, Any], stats: dict[str, Any]) -> None:
        for name in STAT_FIELDS:
            value = stats.get(name)
            if value is None:
                continue
            if name in ("num_examples", "eval_examples"):
                n = as_float(value)
                if n is not None and math.isfinite(n) and n >= 0:
                    report[name] = int(n)
            elif name == "update_repeated":
                report[name] = bool(value)
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
        if "noise_mechanism" in stats:
            report["histogram_noise"] = {
                key: stats[f"noise_{key}"] for key in NOISE_FIELDS if f"noise_{key}" in stats
            }
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

    def _project(
        self, base: FlatVector, vectors: list[FlatVector]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Norms and sketches of ``v - base``, streamed over parameter blocks (see :mod:`.sketch`)."""
        p = self._projector
        if p is None or p.num_params != base.size:
            p = self._projector = Projector(base.size, self.run.sketch_dim, self.run.sketch_seed)
        return p.norms_and_sketches(base, vectors, sketch=self.run.sketch_dim > 0)

    def _on_train_aggregate(self, server_round: int, result: tuple[Any, Any]) -> None:
        state = self._round
        if state is None:
            return
        state.summary["num_sampled"] = len(state.sampled) or len(state.reports)
        arrays = result[0] if result else None
        if arrays is None or state.global_vec is None:
            return
        vec = FlatVector.from_arrays(arrays, state.global_keys)
        if vec is None or vec.size != state.global_vec.size:
            return
        norms, sketches = self._project(state.global_vec, [vec])
        state.summary["aggregate_update_norm"] = float(norms[0])
        if sketches is not None:
            state.summary["aggregate_sketch"] = sketches[0].tolist()

    def _on_evaluate_replies(self, server_round: int, replies: list[Message]) -> None:
        state = self._round
        if state is not None and state.server_round != server_round:
            state = None
        weight_key = getattr(self.strategy, "weighted_by_key", "num-examples")
        for reply in replies:
            if reply.has_error() or not reply.has_content():
                continue
            ours = reply.content.pop(RECORD_KEY, None)  # always: the wrapped strategy never sees it
            if ours is not None:
                self._learn_name(reply.metadata.src_node_id, dict(ours).get("client_id"), state)
            report = None if state is None else state.reports.get(reply.metadata.src_node_id)
            if report is None or report["status"] != "ok":
                continue
            metrics = first_record(reply.content.metric_records)
            loss = first_number(metrics, self.eval_loss_keys)
            acc = finite_ratio(first_number(metrics, self.eval_accuracy_keys))
            # The mod's evaluation (global model received for training) takes precedence.
            from_reply = "eval_loss" not in report and "eval_accuracy" not in report
            if "eval_loss" not in report and loss is not None:
                report["eval_loss"] = loss
            if "eval_accuracy" not in report and acc is not None:
                report["eval_accuracy"] = acc
            if from_reply and (loss is not None or acc is not None):
                # EvaluateRes.num_examples: the size of the set that accuracy was measured on
                n = as_float((metrics or {}).get(weight_key))
                if n is not None and math.isfinite(n) and n >= 0:
                    report["eval_examples"] = int(n)

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
        reports = self._assign_client_ids(state)
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
