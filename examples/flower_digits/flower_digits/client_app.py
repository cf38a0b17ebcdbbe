"""The ClientApp: local training and evaluation, plus fedsentinel's mod (one line)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from collectors.flower import LocalData, monitor_mod
from flower_digits.task import (
    DigitsConfig,
    Net,
    client_data,
    evaluate_model,
    train_model,
)


def _config(cfg: DigitsConfig | None, context: Context) -> DigitsConfig:
    return cfg or DigitsConfig.from_run_config(dict(context.run_config))


def evaluate_arrays(arrays: ArrayRecord, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    return evaluate_model(model, X, y)


def make_client_app(cfg: DigitsConfig | None = None, *, monitored: bool = True) -> ClientApp:
    """The app; ``cfg`` None reads the run config (``flwr run``)."""

    def local_data(context: Context, server_round: int) -> LocalData:
        d = client_data(
            _config(cfg, context), int(context.node_config["partition-id"]), server_round
        )
        return LocalData(d.X_train, d.y_train, d.X_heldout, d.y_heldout)

    # fedsentinel: the one added line (plus the two callables it uses). telemetry_budget="run":
    # noise the histograms under the budget the run declares, if it declares one (docs/privacy.md).
    mods = (
        [monitor_mod(data=local_data, evaluate=evaluate_arrays, telemetry_budget="run")]
        if monitored
        else []
    )
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        c = _config(cfg, context)
        config = msg.content["config"]
        c = replace(
            c,
            lr=float(config.get("lr", c.lr)),
            local_epochs=int(config.get("local-epochs", c.local_epochs)),
        )
        pid = int(context.node_config["partition-id"])
        server_round = int(config["server-round"])
        if pid == c.crash_client and server_round == c.crash_round:
            raise RuntimeError(f"client {pid} crashed in round {server_round} (injected)")
        data = client_data(c, pid, server_round)
        model = Net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        loss, acc = train_model(
            model, data.X_train, data.y_train, c, seed=c.seed * 100_003 + pid * 1_009 + server_round
        )
        state = model.state_dict()
        if c.fault == "nan" and pid == c.fault_client and server_round >= c.fault_round:
            state = {k: v.clone().fill_(float("nan")) for k, v in state.items()}
        content = RecordDict(
            {
                "arrays": ArrayRecord(state),
                "metrics": MetricRecord(
                    {"train_loss": loss, "train_acc": acc, "num-examples": len(data.y_train)}
                ),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        c = _config(cfg, context)
        pid = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        data = client_data(c, pid, server_round)
        loss, acc = evaluate_arrays(msg.content["arrays"], data.X_heldout, data.y_heldout)
        metrics = MetricRecord(
            {"eval_loss": loss, "eval_acc": acc, "num-examples": len(data.y_heldout)}
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


app = make_client_app()
