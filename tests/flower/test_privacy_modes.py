"""The mod's telemetry budget and the secure-aggregation scalars, over several rounds of fabricated messages."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed: pip install -e '.[flower]'")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from collectors.flower import MonitoredStrategy, monitor_mod  # noqa: E402
from collectors.privacy import NoisePlan  # noqa: E402
from monitor.schemas import ClientReport, TelemetryBudget, validate_report_against_run  # noqa: E402
from monitor.signals.update_scalars import update_scalars  # noqa: E402
from tests.flower.test_strategy import (  # noqa: E402
    FakeGrid,
    RecordingSink,
    arec,
    client_train,
    data_for,
    evaluate,
    global_arrays,
    spec,
)

pytestmark = pytest.mark.usefixtures("task_identity")

BUDGET = TelemetryBudget(epsilon=3.0, delta=1e-5, planned_rounds=4, every_k_rounds=2)


def _flat(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([arrays[k].numpy().ravel() for k in ("w", "b")]).astype(np.float64)


def run_rounds(strategy: Any, mod: Any, nodes: list[int], rounds: int, train=client_train):  # type: ignore[no-untyped-def]
    """Several rounds as Strategy.start runs them, each node keeping its Context between rounds."""
    contexts = {
        n: Context(
            run_id=1, node_id=n, node_config={"partition-id": n}, state=RecordDict(), run_config={}
        )
        for n in nodes
    }
    arrays = global_arrays()
    history = [arrays]
    for rnd in range(1, rounds + 1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), FakeGrid(nodes)))
        replies = [mod(m, contexts[m.metadata.dst_node_id], train) for m in messages]
        arrays, _ = strategy.aggregate_train(rnd, replies)
        history.append(arrays)
        strategy.aggregate_evaluate(rnd, [])
    strategy.close()
    return history, contexts


def _reports(sink: RecordingSink) -> dict[int, dict[str, dict]]:
    return {c[1]: {r["client_id"]: r for r in c[2]} for c in sink.calls if c[0] == "report"}


def test_mod_budget_noises_histograms_every_k_rounds_and_declares_the_noise() -> None:
    sink = RecordingSink()
    run = spec().model_copy(update={"telemetry_budget": BUDGET})
    strategy = MonitoredStrategy(FedAvg(), monitor=sink, run=run)
    mod = monitor_mod(
        data=lambda ctx, rnd: data_for(ctx.node_id), evaluate=evaluate, telemetry_budget=BUDGET
    )
    run_rounds(strategy, mod, [1, 2], rounds=4)
    reports = _reports(sink)
    plan = NoisePlan.from_budget(BUDGET)
    h = 1 + len(run.feature_bin_edges)
    for rnd, by_client in reports.items():
        for cid, r in by_client.items():
            validate_report_against_run(ClientReport.model_validate(r), run)
            if rnd in (1, 3):  # every 2 rounds, ceil(4 / 2) = 2 releases
                raw = data_for(int(cid.split("-")[1]))
                counts = np.bincount(raw.y_train, minlength=3)
                assert not np.allclose(r["label_histogram"], counts)  # noised
                noise = r["histogram_noise"]
                assert noise["mechanism"] == "gaussian"
                assert noise["scale"] == pytest.approx(plan.sigma(h))
                assert noise["l2_sensitivity"] == pytest.approx(math.sqrt(2 * h))
                assert noise["release"] == (1 if rnd == 1 else 2)
                assert noise["releases_planned"] == 2
            else:
                assert "label_histogram" not in r and "histogram_noise" not in r
                assert "feature_histograms" not in r
            assert r["num_examples"] == 30 and r["eval_accuracy"] == 0.6  # the rest is unchanged


def test_update_scalars_against_brute_force() -> None:
    rng = np.random.default_rng(5)
    g0, g1, u = rng.normal(size=(3, 20))
    out = update_scalars(u, g0, g1, None)
    ref = g1 - g0
    assert out["update_norm"] == pytest.approx(np.sqrt((u**2).sum()))
    assert out["update_cosine_previous_global"] == pytest.approx(
        u @ ref / np.linalg.norm(u) / np.linalg.norm(ref)
    )
    assert out["update_repeated"] is False
    assert update_scalars(u, g0, g1, u.copy())["update_repeated"] is True
    assert update_scalars(u, g0, g1, u * (1 + 1e-3))["update_repeated"] is False  # other norm
    first = update_scalars(u, None, g1, None)
    assert math.isnan(first["update_cosine_previous_global"])


def test_secure_aggregation_mode_sends_client_scalars_and_no_sketch() -> None:
    sink = RecordingSink()
    run = spec(sketch_dim=8).model_copy(update={"secure_aggregation": True})
    strategy = MonitoredStrategy(FedAvg(), monitor=sink, run=run)
    sent: dict[tuple[int, int], np.ndarray] = {}  # (round, node) -> the update the node sent

    def train(msg: Message, context: Context) -> Message:
        node = msg.metadata.dst_node_id
        rnd = int(context.state["rounds"]["n"]) + 1 if "rounds" in context.state else 1
        context.state["rounds"] = ConfigRecord({"n": rnd})
        if node == 2 and rnd == 3:  # node 2 re-sends its round-2 update in round 3
            g = msg.content["arrays"]
            delta = sent[(2, 2)]
            w = _flat(g) + delta
            new = arec(
                {"w": w[:12].reshape(4, 3).astype(np.float32), "b": w[12:].astype(np.float32)}
            )
            from flwr.app import MetricRecord

            metrics = MetricRecord({"train_loss": 0.5, "train_acc": 0.5, "num-examples": 20})
            reply = Message(content=RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)
        else:
            reply = client_train(msg, context)
            # a different update every round (client_train's noise depends on the node only)
            arrays = reply.content["arrays"]
            rng = np.random.default_rng([node, rnd])
            reply.content["arrays"] = arec(
                {
                    k: a.numpy() + rng.normal(0, 0.05, a.numpy().shape).astype(np.float32)
                    for k, a in arrays.items()
                }
            )
        sent[(rnd, node)] = _flat(reply.content["arrays"]) - _flat(msg.content["arrays"])
        return reply

    mod = monitor_mod(data=lambda ctx, rnd: data_for(ctx.node_id), evaluate=evaluate)
    history, _ = run_rounds(strategy, mod, [1, 2, 3], rounds=3, train=train)
    reports = _reports(sink)
    for rnd, by_client in reports.items():
        for cid, r in by_client.items():
            node = int(cid.split("-")[1])
            validate_report_against_run(ClientReport.model_validate(r), run)
            assert "update_sketch" not in r  # the server never looked at the update
            u = sent[(rnd, node)]
            assert r["update_norm"] == pytest.approx(np.linalg.norm(u), rel=1e-6)
            if rnd == 1:
                assert math.isnan(r["update_cosine_previous_global"])
            else:
                g = _flat(history[rnd - 1]) - _flat(history[rnd - 2])
                assert r["update_cosine_previous_global"] == pytest.approx(
                    u @ g / np.linalg.norm(u) / np.linalg.norm(g), rel=1e-5
                )
            # float32 weights: the re-sent update comes back within float32 rounding of the original
            assert r["update_repeated"] is (node == 2 and rnd == 3)
    closes = [c[2] for c in sink.calls if c[0] == "close_round"]
    assert all(len(c["aggregate_sketch"]) == 8 for c in closes)  # the aggregate is still sketched
