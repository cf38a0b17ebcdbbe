"""The client side: a Flower Mod that adds the client's statistics to its train replies.

::

    app = ClientApp(mods=[monitor_mod(data=my_local_data, evaluate=my_evaluate)])

On a train instruction that carries fedsentinel's run settings (added by
:class:`~collectors.flower.MonitoredStrategy`), the mod

1. takes the settings out of the message (the user's code sees the message it
   would see without monitoring),
2. evaluates the received global model on the client's held-out data
   (``evaluate``, optional),
3. runs the user's train function (``call_next``) and times it,
4. computes the label histogram, the feature histograms on the run's shared
   bin edges and the L2 norm of the update (reply arrays minus received arrays),
   and, when the run uses secure aggregation, the update's cosine to the
   previous global update and whether it repeats the previous update
   (:class:`UpdateMemory`, kept in ``context.state``),
5. with a ``telemetry_budget``, noises the histograms (or leaves them out on
   rounds that are not releases, :mod:`collectors.privacy`; the release count
   is kept in ``context.state``),
6. puts them in the reply as a ``ConfigRecord`` (see :mod:`collectors.flower.records`).

collectors/privacy.py lists every number computed here on the client's data.

On an evaluate instruction carrying the settings it only takes them out and
adds the client id to the reply, so that the server can name a node whose
train step failed.

Without those settings (an unwrapped strategy) the mod only passes the message
on. A failure inside the mod is logged and the reply goes back without
statistics; exceptions of the user's own code are not touched.

The mod imports nothing but numpy and flwr, so it adds no start-up time to
simulation workers (with a telemetry budget it also loads :mod:`collectors.privacy`,
pydantic and Opacus' RDP analysis without torch, once per process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType

from collectors.flower.records import (
    RECORD_KEY,
    decode_edges,
    first_number,
    first_record,
    flatten_arrays,
)
from collectors.stats import client_feature_histograms, label_histogram
from monitor.signals.update_scalars import update_scalars

log = logging.getLogger("fedsentinel.flower")

STATE_PRIVACY = "fedsentinel.privacy"
STATE_UPDATES = "fedsentinel.updates"

TRAIN_LOSS_KEYS = ("train_loss", "loss")
TRAIN_ACCURACY_KEYS = ("train_acc", "train_accuracy", "accuracy")


@dataclass(frozen=True)
class LocalData:
    """A client's local data as the mod needs it: features ``[n, d]`` and integer labels ``[n]``."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_heldout: np.ndarray | None = None
    y_heldout: np.ndarray | None = None


DataFn = Callable[[Context, int], LocalData]
"""``(context, server_round) -> LocalData``: the data this client trains on in that round."""
EvaluateFn = Callable[[ArrayRecord, np.ndarray, np.ndarray], tuple[float, float]]
"""``(global arrays, X_heldout, y_heldout) -> (loss, accuracy)``."""


class UpdateMemory:
    """The two vectors the secure-aggregation scalars need, in the node's ``context.state``.

    The last global model received and the last update sent, flattened (float64,
    so twice the model size per node). They never leave the client.
    """

    def __init__(self, context: Context, run_id: str) -> None:
        self.context = context
        self.key = f"{STATE_UPDATES}.{run_id}"
        rec = context.state.get(self.key)
        self.previous_global = (
            rec["global"].numpy() if rec is not None and "global" in rec else None
        )
        self.previous_update = (
            rec["update"].numpy() if rec is not None and "update" in rec else None
        )

    def save(self, global_now: np.ndarray, update: np.ndarray) -> None:
        self.context.state[self.key] = ArrayRecord(
            {
                "global": Array(np.ascontiguousarray(global_now)),
                "update": Array(np.ascontiguousarray(update)),
            }
        )


def noised_histograms(
    labels: np.ndarray | None,
    features: list[np.ndarray],
    budget: Any,
    context: Context,
    server_round: int,
    run_id: str = "",
) -> dict[str, Any]:
    """The histogram entries of the mod's record under ``budget`` (release count in ``context.state``,
    per run: a budget is for one run).

    Outside a release round (or after the last planned release) no histograms;
    otherwise noised ones plus the ``noise_*`` declaration (flat: a ConfigRecord
    holds no nested dicts; the server rebuilds ``histogram_noise``).
    """
    from collectors.privacy import ReleaseState, privatize_report

    key = f"{STATE_PRIVACY}.{run_id}"
    rec = context.state.get(key)
    last = int(rec["last_release_round"]) if rec is not None else -1
    state = ReleaseState(
        releases_done=int(rec["releases_done"]) if rec is not None else 0,
        last_release_round=None if last < 0 else last,
    )
    report: dict[str, Any] = {}
    if labels is not None:
        report["label_histogram"] = labels
    if features:
        report["feature_histograms"] = features
    out = privatize_report(report, _plan(budget), state, server_round, np.random.default_rng())
    context.state[key] = ConfigRecord(
        {
            "releases_done": state.releases_done,
            "last_release_round": -1
            if state.last_release_round is None
            else state.last_release_round,
        }
    )
    stats: dict[str, Any] = {}
    if "label_histogram" in out:
        stats["label_histogram"] = list(out["label_histogram"])
    if "feature_histograms" in out:
        stats["feature_histograms"] = np.concatenate(out["feature_histograms"]).tolist()
    for key, value in (out.get("histogram_noise") or {}).items():
        stats[f"noise_{key}"] = value
    return stats


_PLANS: dict[str, Any] = {}


def _plan(budget: Any) -> Any:
    """The budget's NoisePlan, calibrated once per process."""
    from collectors.privacy import NoisePlan, TelemetryBudget

    b = budget if isinstance(budget, TelemetryBudget) else TelemetryBudget.model_validate(budget)
    key = b.model_dump_json()
    if key not in _PLANS:
        _PLANS[key] = NoisePlan.from_budget(b)
    return _PLANS[key]


def run_budget(settings: Any) -> dict[str, Any] | None:
    """The telemetry budget the run declares (sent by the strategy), for ``telemetry_budget="run"``."""
    if "telemetry_epsilon" not in settings:
        return None
    return {
        "epsilon": float(settings["telemetry_epsilon"]),
        "delta": float(settings["telemetry_delta"]),
        "planned_rounds": int(settings["telemetry_planned_rounds"]),
        "every_k_rounds": int(settings["telemetry_every_k_rounds"]),
    }


def default_client_id(context: Context) -> str | None:
    """``client-<partition-id>`` where the node config names a partition (simulation, most deployments)."""
    pid = context.node_config.get("partition-id")
    return None if pid is None else f"client-{pid}"


class MonitorMod:
    """The mod object (picklable, so simulation workers receive it with the ``ClientApp``)."""

    def __init__(
        self,
        data: DataFn,
        evaluate: EvaluateFn | None = None,
        *,
        client_id: Callable[[Context], str | None] = default_client_id,
        telemetry_budget: Any = None,
    ) -> None:
        self.data = data
        self.evaluate = evaluate
        self.client_id = client_id
        self.telemetry_budget = telemetry_budget

    def __call__(
        self, message: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if not message.has_content() or RECORD_KEY not in message.content:
            return call_next(message, context)
        settings = message.content.pop(RECORD_KEY)
        kind = message.metadata.message_type.split(".")[0]
        if kind == MessageType.EVALUATE:
            return self._name_reply(call_next(message, context), context)
        if kind != MessageType.TRAIN:
            return call_next(message, context)

        stats: dict[str, Any] = {}
        before: tuple[np.ndarray | None, list[str], str | None] | None = None
        try:
            before = self._before(message, context, settings, stats)
        except Exception:  # noqa: BLE001 - monitoring never breaks training
            log.exception("fedsentinel mod: statistics before training failed")

        started = time.perf_counter()
        reply = call_next(message, context)
        stats["wall_time_seconds"] = time.perf_counter() - started
        if reply.has_error() or not reply.has_content():
            return reply

        try:
            self._after(reply, before, stats, context)
            reply.content[RECORD_KEY] = ConfigRecord(stats)
        except Exception:  # noqa: BLE001
            log.exception("fedsentinel mod: statistics after training failed")
        return reply

    def _name_reply(self, reply: Message, context: Context) -> Message:
        """Evaluate replies carry the client id only (the server learns which node is which)."""
        if reply.has_error() or not reply.has_content():
            return reply
        try:
            cid = self.client_id(context)
            if cid:
                reply.content[RECORD_KEY] = ConfigRecord({"client_id": str(cid)})
        except Exception:  # noqa: BLE001
            log.exception("fedsentinel mod: naming the evaluate reply failed")
        return reply

    def _before(
        self, message: Message, context: Context, settings: Any, stats: dict[str, Any]
    ) -> tuple[np.ndarray | None, list[str], str | None]:
        cid = self.client_id(context)
        if cid:
            stats["client_id"] = str(cid)
        server_round = int(settings.get("round", 0))
        data = self.data(context, server_round)
        num_classes = int(settings["num_classes"])
        stats["num_examples"] = len(data.y_train)
        labels = label_histogram(data.y_train, num_classes)
        lengths = list(settings.get("edge_lengths") or [])
        hists = []
        if lengths:
            edges = decode_edges(settings["edges"], lengths)
            hists = client_feature_histograms(data.X_train, edges)
        budget = self._budget(context, settings)
        run_id = str(settings.get("run_id", ""))
        if budget is not None:
            stats.update(noised_histograms(labels, hists, budget, context, server_round, run_id))
        else:
            stats["label_histogram"] = labels.tolist()
            if hists:
                stats["feature_histograms"] = np.concatenate(hists).tolist()

        global_arrays = first_record(message.content.array_records)
        if (
            self.evaluate is not None
            and global_arrays is not None
            and data.y_heldout is not None
            and len(data.y_heldout)
        ):
            loss, accuracy = self.evaluate(global_arrays, data.X_heldout, data.y_heldout)
            stats["eval_loss"] = float(loss)
            stats["eval_accuracy"] = float(accuracy)
            stats["eval_examples"] = len(data.y_heldout)
        scalars = str(settings.get("run_id", "")) if settings.get("client_scalars") else None
        if global_arrays is None:
            return None, [], scalars
        keys = list(global_arrays.keys())
        return flatten_arrays(global_arrays, keys), keys, scalars

    def _budget(self, context: Context, settings: Any) -> Any:
        b = self.telemetry_budget
        if isinstance(b, str) and b == "run":
            return run_budget(settings)
        return b(context) if callable(b) else b

    def _after(
        self,
        reply: Message,
        before: tuple[np.ndarray | None, list[str], str | None] | None,
        stats: dict[str, Any],
        context: Context,
    ) -> None:
        metrics = first_record(reply.content.metric_records)
        for name, keys in (
            ("train_loss", TRAIN_LOSS_KEYS),
            ("train_accuracy", TRAIN_ACCURACY_KEYS),
        ):
            value = first_number(metrics, keys)
            if value is not None:
                stats[name] = value
        if before is None or before[0] is None:
            return
        global_vec, keys, client_scalars = before
        arrays = first_record(reply.content.array_records)
        local_vec = None if arrays is None else flatten_arrays(arrays, keys)
        if local_vec is None or local_vec.shape != global_vec.shape:
            return
        update = local_vec - global_vec
        if client_scalars is None:
            stats["update_norm"] = float(np.linalg.norm(update))
            return
        memory = UpdateMemory(context, client_scalars)
        stats.update(
            update_scalars(update, memory.previous_global, global_vec, memory.previous_update)
        )
        memory.save(global_vec, update)


def monitor_mod(
    data: DataFn,
    evaluate: EvaluateFn | None = None,
    *,
    client_id: Callable[[Context], str | None] = default_client_id,
    telemetry_budget: Any = None,
) -> MonitorMod:
    """Build the client-side mod; put it in ``ClientApp(mods=[...])``.

    ``data(context, server_round)`` returns the client's :class:`LocalData`;
    ``evaluate(arrays, X, y)`` returns ``(loss, accuracy)`` of a model given as an
    ``ArrayRecord`` (the global model of the round, on held-out data). The client
    id defaults to ``client-<partition-id>``; the server falls back to the node id.

    ``telemetry_budget``: a :class:`monitor.schemas.TelemetryBudget` (or its dict,
    or ``(context) -> budget | None``) with ``epsilon``, ``delta``,
    ``planned_rounds`` and optionally ``every_k_rounds``: the histograms are
    noised so that the whole run spends at most that budget (docs/privacy.md).
    ``"run"`` adopts the budget the run declares (``RunCreate.telemetry_budget``,
    planned rounds from the run when the budget has none): one setting on the
    server, and no noise for runs that declare none.
    """
    return MonitorMod(data, evaluate, client_id=client_id, telemetry_budget=telemetry_budget)
