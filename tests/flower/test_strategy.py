"""MonitoredStrategy and monitor_mod without a simulation: fabricated Flower messages."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed: pip install -e '.[flower]'")

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg, FedProx  # noqa: E402

from collectors import stats  # noqa: E402
from collectors.client import MonitorClient  # noqa: E402
from collectors.flower import LocalData, MonitoredStrategy, monitor_mod, run_spec  # noqa: E402
from collectors.flower.records import RECORD_KEY  # noqa: E402
from collectors.stats import client_feature_histograms as feature_histograms  # noqa: E402
from monitor.schemas import ClientReport, RoundClose, validate_report_against_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("task_identity")

NUM_CLASSES = 3
RNG = np.random.default_rng(0)
X_REF = RNG.normal(size=(200, 4))


class RecordingSink:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []

    def _record(self, *call: Any) -> None:
        if self.fail:
            raise RuntimeError("sink is broken")
        self.calls.append(call)

    def register_run(self, spec: dict[str, Any]) -> None:
        self._record("register_run", spec)

    def report(self, run_id: str, round: int, reports: list[dict[str, Any]]) -> None:
        self._record("report", round, reports)

    def close_round(self, run_id: str, round: int, summary: dict[str, Any]) -> None:
        self._record("close_round", round, summary)


class FakeGrid:
    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def spec(sketch_dim: int = 16):  # type: ignore[no-untyped-def]
    return run_spec(
        "unit", X_REF, num_classes=NUM_CLASSES, expected_clients=3, bins=5, sketch_dim=sketch_dim
    )


def arec(d: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in d.items()})


def global_arrays() -> ArrayRecord:
    return arec(
        {"w": np.ones((4, NUM_CLASSES), np.float32), "b": np.zeros(NUM_CLASSES, np.float32)}
    )


def data_for(node: int) -> LocalData:
    rng = np.random.default_rng(node)
    return LocalData(
        rng.normal(size=(30, 4)),
        rng.integers(0, NUM_CLASSES, 30),
        rng.normal(size=(10, 4)),
        rng.integers(0, NUM_CLASSES, 10),
    )


def client_train(msg: Message, context: Context) -> Message:
    """A user's train function: a node-dependent update, FedAvg-style metrics."""
    node = msg.metadata.dst_node_id
    assert RECORD_KEY not in msg.content, "the mod must hide its settings from user code"
    arrays = msg.content["arrays"]
    rng = np.random.default_rng(node)
    new = arec(
        {
            k: (a.numpy() + rng.normal(0, 0.1, a.numpy().shape)).astype(np.float32)
            for k, a in arrays.items()
        }
    )
    metrics = MetricRecord({"train_loss": 1.0 / node, "train_acc": 0.5, "num-examples": 10 * node})
    return Message(content=RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)


def evaluate(arrays: ArrayRecord, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    return 0.7, 0.6


def run_round(
    strategy: Any,
    grid: FakeGrid,
    mod: Any,
    fail: set[int] = frozenset(),
    lost: set[int] = frozenset(),
):  # type: ignore[no-untyped-def]
    """configure_train -> (mod + client) per node -> aggregate_train, as Strategy.start does."""
    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), grid))
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        if node in lost:
            continue
        if node in fail:
            replies.append(Message(Error(code=0, reason="boom"), reply_to=msg))
            continue
        ctx = Context(
            run_id=1,
            node_id=node,
            node_config={"partition-id": node},
            state=RecordDict(),
            run_config={},
        )
        replies.append(mod(msg, ctx, client_train))
    return replies, strategy.aggregate_train(1, replies)


def mod() -> Any:
    return monitor_mod(data=lambda ctx, rnd: data_for(ctx.node_id), evaluate=evaluate)


def test_feature_histograms_match_the_simulator() -> None:
    edges = stats.feature_bin_edges(X_REF, 6)
    X = RNG.normal(size=(50, 4)) * 2  # values outside the edges land in the outer bins
    ours = feature_histograms(X, edges)
    theirs = stats.feature_histograms(X, np.zeros(50, np.int64), 1, edges)[0]
    for f, h in enumerate(ours):
        np.testing.assert_array_equal(h, theirs[f, : len(h)])


@pytest.mark.parametrize("strategy_cls", [FedAvg, FedProx])
def test_wrapping_changes_no_aggregation_result(strategy_cls: type) -> None:
    grid = FakeGrid([1, 2, 3])
    import random

    random.seed(1)
    _, (plain_arrays, plain_metrics) = run_round(strategy_cls(), grid, lambda m, c, nxt: nxt(m, c))
    sink = RecordingSink()
    random.seed(1)
    replies, (arrays, metrics) = run_round(
        MonitoredStrategy(strategy_cls(), monitor=sink, run=spec()), grid, mod()
    )
    for key in plain_arrays:
        np.testing.assert_array_equal(arrays[key].numpy(), plain_arrays[key].numpy())
    assert dict(metrics) == dict(plain_metrics)
    assert all(RECORD_KEY not in r.content for r in replies), "stripped before delegating"


def test_reports_every_client_with_its_statistics_failed_and_lost_ones_too() -> None:
    sink = RecordingSink()
    run = spec()
    strategy = MonitoredStrategy(FedAvg(min_available_nodes=4), monitor=sink, run=run)
    grid = FakeGrid([1, 2, 3, 4])
    run_round(strategy, grid, mod(), fail={3}, lost={4})
    strategy.aggregate_evaluate(1, [])
    strategy.close()
    ops = [c[0] for c in sink.calls]
    assert ops == ["register_run", "report", "close_round"]
    reports = {r["client_id"]: r for r in sink.calls[1][2]}
    assert reports["node-3"]["status"] == "failed"  # never seen before: named by its node id
    assert reports["node-4"]["status"] == "timeout"
    for node in (1, 2):
        r = reports[f"client-{node}"]
        model = ClientReport.model_validate(r)
        validate_report_against_run(model, run)
        assert (
            r["num_examples"] == 30 and r["eval_accuracy"] == 0.6 and r["train_loss"] == 1.0 / node
        )
        assert sum(r["label_histogram"]) == 30
        assert [sum(h) for h in r["feature_histograms"]] == [30] * 4
        assert len(r["update_sketch"]) == run.sketch_dim and r["update_norm"] > 0
    summary = RoundClose.model_validate(sink.calls[2][2])
    assert summary.num_sampled == 4 and summary.aggregate_update_norm > 0
    assert len(summary.aggregate_sketch) == run.sketch_dim


def test_update_norm_and_sketch_are_the_simulators() -> None:
    sink = RecordingSink()
    run = spec(sketch_dim=8)
    strategy = MonitoredStrategy(FedAvg(), monitor=sink, run=run)
    replies, _ = run_round(strategy, FakeGrid([1, 2]), mod())
    strategy.close()
    report = next(r for r in sink.calls[1][2] if r["client_id"] == "client-1")
    g = np.concatenate([global_arrays()[k].numpy().ravel() for k in ("w", "b")]).astype(np.float64)
    local = np.concatenate([replies[0].content["arrays"][k].numpy().ravel() for k in ("w", "b")])
    if replies[0].metadata.src_node_id != 1:
        local = np.concatenate(
            [replies[1].content["arrays"][k].numpy().ravel() for k in ("w", "b")]
        )
    delta = local - g
    assert report["update_norm"] == pytest.approx(np.linalg.norm(delta))
    expected = stats.sketch(
        __import__("torch").from_numpy(delta[None].astype(np.float32)),
        stats.sketch_matrix(len(delta), 8, run.sketch_seed),
    )[0].numpy()
    np.testing.assert_allclose(report["update_sketch"], expected, rtol=1e-5, atol=1e-6)


def test_nonfinite_updates_are_reported_as_such() -> None:
    sink = RecordingSink()
    strategy = MonitoredStrategy(FedAvg(), monitor=sink, run=spec())

    def nan_train(msg: Message, context: Context) -> Message:
        reply = client_train(msg, context)
        arrays = reply.content["arrays"]
        reply.content["arrays"] = arec(
            {k: np.full_like(a.numpy(), np.nan) for k, a in arrays.items()}
        )
        return reply

    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), FakeGrid([1, 2])))
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    replies = [mod()(m, ctx, nan_train) for m in messages]
    strategy.aggregate_train(1, replies)
    strategy.close()
    for r in sink.calls[1][2]:
        assert math.isnan(r["update_norm"]) and all(math.isnan(v) for v in r["update_sketch"])
        assert r["client_id"].startswith("node-")  # no partition-id: the node id names the client


def test_a_broken_monitor_never_breaks_training() -> None:
    grid = FakeGrid([1, 2])
    strategy = MonitoredStrategy(FedAvg(), monitor=RecordingSink(fail=True), run=spec())
    _, (arrays, metrics) = run_round(strategy, grid, mod())
    assert arrays is not None and metrics is not None
    strategy.aggregate_evaluate(1, [])
    strategy.close()
    assert strategy.errors >= 3  # register, report, close: logged and counted


def test_a_failing_mod_step_returns_the_users_reply() -> None:
    def bad_data(ctx: Context, rnd: int) -> LocalData:
        raise OSError("data not there")

    strategy = MonitoredStrategy(FedAvg(), monitor=RecordingSink(), run=spec())
    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), FakeGrid([1, 2])))
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reply = monitor_mod(data=bad_data)(messages[0], ctx, client_train)
    assert "arrays" in reply.content and "metrics" in reply.content


def test_user_exceptions_propagate_through_the_mod() -> None:
    strategy = MonitoredStrategy(FedAvg(), monitor=RecordingSink(), run=spec())
    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), FakeGrid([1, 2])))
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

    def crash(msg: Message, context: Context) -> Message:
        raise RuntimeError("user bug")

    with pytest.raises(RuntimeError, match="user bug"):
        mod()(messages[0], ctx, crash)


def test_mod_passes_through_without_a_monitored_server() -> None:
    msg = Message(
        content=RecordDict({"arrays": global_arrays()}),
        message_type=MessageType.TRAIN,
        dst_node_id=1,
    )
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reply = mod()(msg, ctx, client_train)
    assert RECORD_KEY not in reply.content


def test_unreachable_service_spools_and_training_goes_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from monitor.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    client = MonitorClient(url, spool_dir=tmp_path, max_retries=1, backoff_base_seconds=0.01)
    strategy = MonitoredStrategy(FedAvg(), monitor=client, run=spec())
    _, (arrays, _) = run_round(strategy, FakeGrid([1, 2]), mod())
    strategy.aggregate_evaluate(1, [])
    strategy.close()
    assert arrays is not None
    assert client.pending() == 3 and strategy.errors == 0


def client_evaluate(msg: Message, context: Context) -> Message:
    assert RECORD_KEY not in msg.content, "the mod must hide its settings from user code"
    metrics = MetricRecord({"eval_loss": 0.5, "eval_acc": 0.8, "num-examples": 10})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def ctx_for(node: int, partition: int | None) -> Context:
    config = {} if partition is None else {"partition-id": partition}
    return Context(run_id=1, node_id=node, node_config=config, state=RecordDict(), run_config={})


def full_round(
    strategy: Any,
    server_round: int,
    partitions: dict[int, int | None],
    fail_train: set[int] = frozenset(),
    reverse: bool = False,
    gone: set[int] = frozenset(),
) -> tuple[Any, Any]:  # type: ignore[no-untyped-def]
    """train then evaluate for every node (``partitions``: node id -> its partition-id).

    Nodes in ``fail_train`` answer train with an error; nodes in ``gone`` never answer.
    """
    grid = FakeGrid(list(partitions))
    messages = list(strategy.configure_train(server_round, global_arrays(), ConfigRecord(), grid))
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        if node in gone:
            continue
        if node in fail_train:
            replies.append(Message(Error(code=0, reason="boom"), reply_to=msg))
        else:
            replies.append(mod()(msg, ctx_for(node, partitions[node]), client_train))
    train = strategy.aggregate_train(server_round, replies[::-1] if reverse else replies)
    messages = list(
        strategy.configure_evaluate(server_round, global_arrays(), ConfigRecord(), grid)
    )
    replies = [
        mod()(
            m, ctx_for(m.metadata.dst_node_id, partitions[m.metadata.dst_node_id]), client_evaluate
        )
        for m in messages
        if m.metadata.dst_node_id not in gone
    ]
    return train, strategy.aggregate_evaluate(server_round, replies)


def sent_reports(sink: RecordingSink, server_round: int) -> list[dict[str, Any]]:
    return [c[2] for c in sink.calls if c[0] == "report" and c[1] == server_round][0]


def test_two_nodes_claiming_one_client_id_are_both_reported(caplog) -> None:  # type: ignore[no-untyped-def]
    sink = RecordingSink()
    run = spec()
    strategy = MonitoredStrategy(FedAvg(), monitor=sink, run=run)
    partitions = {11: 7, 12: 7, 13: 3}  # two supernodes started with partition-id 7
    with caplog.at_level("WARNING", logger="fedsentinel.flower"):
        full_round(strategy, 1, partitions)
        full_round(strategy, 2, partitions, reverse=True)
    strategy.close()
    assert strategy.errors == 0
    assert any("client-7" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    first_owner = None
    for server_round in (1, 2):
        reports = sent_reports(sink, server_round)
        ids = [r["client_id"] for r in reports]
        assert len(set(ids)) == len(ids) == 3 and "client-3" in ids and "client-7" in ids
        for r in reports:
            validate_report_against_run(ClientReport.model_validate(r), run)
        alias = next(i for i in ids if i.startswith("client-7@node-"))
        owner = {11, 12} - {int(alias.rsplit("-", 1)[1])}
        if first_owner is None:
            first_owner = owner
        assert owner == first_owner, "the node that claimed the id first keeps it"


def test_long_duplicate_ids_are_cut_to_the_identifier_limit() -> None:
    sink = RecordingSink()
    run = spec()
    long_id = "c" * 128
    strategy = MonitoredStrategy(FedAvg(), monitor=sink, run=run)
    grid = FakeGrid([1, 2**63 + 5])
    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), grid))
    named = monitor_mod(data=lambda ctx, rnd: data_for(1), client_id=lambda ctx: long_id)
    replies = [named(m, ctx_for(m.metadata.dst_node_id, None), client_train) for m in messages]
    strategy.aggregate_train(1, replies)
    strategy.close()
    ids = [r["client_id"] for r in sink.calls[1][2]]
    assert long_id in ids and len(set(ids)) == 2
    for r in sink.calls[1][2]:
        ClientReport.model_validate(r)  # ids match the service's pattern (<= 128 characters)


def test_an_invalid_claimed_id_falls_back_to_the_node_id() -> None:
    sink = RecordingSink()
    strategy = MonitoredStrategy(FedAvg(), monitor=sink, run=spec())
    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), FakeGrid([1, 2])))
    named = monitor_mod(
        data=lambda ctx, rnd: data_for(1), client_id=lambda ctx: "bad id/with space"
    )
    replies = [named(m, ctx_for(m.metadata.dst_node_id, None), client_train) for m in messages]
    strategy.aggregate_train(1, replies)
    strategy.close()
    assert sorted(r["client_id"] for r in sink.calls[1][2]) == ["node-1", "node-2"]


def test_a_node_failing_its_first_train_is_named_by_its_evaluate_reply() -> None:
    sink = RecordingSink()
    strategy = MonitoredStrategy(FedAvg(), monitor=sink, run=spec(), name_from_evaluate=True)
    partitions = {1: 1, 2: 2, 3: 3}
    full_round(strategy, 1, partitions, fail_train={3})
    full_round(strategy, 2, partitions)
    strategy.close()
    first = {r["client_id"]: r for r in sent_reports(sink, 1)}
    assert set(first) == {"client-1", "client-2", "client-3"}
    assert first["client-3"]["status"] == "failed"
    assert first["client-1"]["status"] == "ok" and first["client-1"]["eval_accuracy"] == 0.6
    assert {r["client_id"] for r in sent_reports(sink, 2)} == set(first)


def test_evaluate_replies_aggregate_as_without_the_wrapper() -> None:
    partitions = {1: 1, 2: 2}
    sink = RecordingSink()
    wrapped = MonitoredStrategy(FedAvg(), monitor=sink, run=spec(), name_from_evaluate=True)
    _, metrics = full_round(wrapped, 1, partitions)
    wrapped.close()
    plain = FedAvg()
    grid = FakeGrid(list(partitions))
    messages = list(plain.configure_evaluate(1, global_arrays(), ConfigRecord(), grid))
    replies = [client_evaluate(m, ctx_for(m.metadata.dst_node_id, 1)) for m in messages]
    assert dict(metrics) == dict(plain.aggregate_evaluate(1, replies))


def test_mod_names_evaluate_replies_only_for_a_monitored_server() -> None:
    msg = Message(
        content=RecordDict({"arrays": global_arrays(), RECORD_KEY: ConfigRecord({"round": 1})}),
        message_type=MessageType.EVALUATE,
        dst_node_id=1,
    )
    reply = mod()(msg, ctx_for(1, 4), client_evaluate)
    assert dict(reply.content[RECORD_KEY]) == {"client_id": "client-4"}
    plain = Message(
        content=RecordDict({"arrays": global_arrays()}),
        message_type=MessageType.EVALUATE,
        dst_node_id=1,
    )
    assert RECORD_KEY not in mod()(plain, ctx_for(1, 4), client_evaluate).content


def test_a_restarted_node_keeps_its_client_id_over_its_old_node_id() -> None:
    sink = RecordingSink()
    strategy = MonitoredStrategy(FedAvg(), monitor=sink, run=spec())
    full_round(strategy, 1, {1: 1, 2: 2})
    # Node 2 restarts as node 9 (same partition); node 2 is still sampled and times out.
    full_round(strategy, 2, {1: 1, 2: 2, 9: 2}, gone={2})
    strategy.close()
    reports = {r["client_id"]: r for r in sent_reports(sink, 2)}
    assert set(reports) == {"client-1", "client-2", "client-2@node-2"}
    assert (
        reports["client-2"]["status"] == "ok" and reports["client-2@node-2"]["status"] == "timeout"
    )


def test_eval_examples_come_from_the_mod_or_the_evaluate_reply(monkeypatch) -> None:
    """The size of the set behind eval_accuracy: the mod's held-out rows when the mod evaluated,
    else the evaluate reply's num-examples (Flower's EvaluateRes.num_examples)."""
    import sys

    here = sys.modules[__name__]

    def evaluate_on_7(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"eval_loss": 0.5, "eval_acc": 0.8, "num-examples": 7})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    monkeypatch.setattr(here, "client_evaluate", evaluate_on_7)
    sink = RecordingSink()
    strategy = MonitoredStrategy(FedAvg(), monitor=sink, run=spec())
    full_round(strategy, 1, {1: 1, 2: 2})
    monkeypatch.setattr(
        here, "mod", lambda: monitor_mod(data=lambda ctx, rnd: data_for(ctx.node_id))
    )
    full_round(strategy, 2, {1: 1, 2: 2})
    strategy.close()
    by_mod, by_reply = sent_reports(sink, 1), sent_reports(sink, 2)
    assert [(r["eval_accuracy"], r["eval_examples"]) for r in by_mod] == [(0.6, 10)] * 2
    assert [(r["eval_accuracy"], r["eval_examples"]) for r in by_reply] == [(0.8, 7)] * 2
    for r in by_mod + by_reply:
        validate_report_against_run(ClientReport.model_validate(r), spec())
