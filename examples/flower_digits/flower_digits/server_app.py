"""The ServerApp: FedAvg, wrapped by fedsentinel's MonitoredStrategy when a monitor URL is set."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result

from collectors.flower import MonitoredStrategy, run_spec
from flower_digits.task import DigitsConfig, initial_model, reference_features


def digits_run_spec(cfg: DigitsConfig, run_id: str, *, features: bool = True, **extra: Any):  # type: ignore[no-untyped-def]
    """The run's registration: 10 classes, 64 pixel features binned on the pooled training data.

    ``features=False``: label histograms only (under a telemetry budget the noise
    grows with the number of histograms, docs/privacy.md).
    """
    return run_spec(
        run_id,
        reference_features(cfg) if features else None,
        num_classes=10,
        expected_clients=cfg.num_clients,
        bins=8,
        feature_names=[f"px_{r}_{c}" for r in range(8) for c in range(8)] if features else None,
        name=f"flower digits ({cfg.fault})",
        metadata={"framework": "flower", "fault": cfg.fault},
        **extra,
    )


def run_federation(
    grid: Grid,
    cfg: DigitsConfig,
    *,
    monitor: Any = None,
    run_id: str = "flower-digits",
    run_extra: dict[str, Any] | None = None,
    features: bool = True,
) -> Result:
    """One FedAvg run; monitored when ``monitor`` (a URL, MonitorClient or sink) is given."""
    random.seed(cfg.seed)  # FedAvg samples nodes with `random`: same order in every run
    strategy = FedAvg(
        min_train_nodes=cfg.num_clients,
        min_evaluate_nodes=cfg.num_clients,
        min_available_nodes=cfg.num_clients,
    )
    if monitor is not None:
        # fedsentinel: wrap the strategy (the only server-side change).
        strategy = MonitoredStrategy(
            strategy,
            monitor=monitor,
            run=digits_run_spec(cfg, run_id, features=features, **(run_extra or {})),
        )
    arrays = ArrayRecord(initial_model(cfg.seed).state_dict())
    return strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=cfg.rounds,
        train_config=ConfigRecord({"lr": cfg.lr, "local-epochs": cfg.local_epochs}),
    )


def make_server_app(
    cfg: DigitsConfig | None = None,
    *,
    monitor: Any = None,
    run_id: str = "flower-digits",
    on_result: Callable[[Result], None] | None = None,
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = dict(context.run_config)
        c = cfg or DigitsConfig.from_run_config(run_config)
        url = monitor if monitor is not None else run_config.get("monitor-url") or None
        rid = run_config.get("run-id") or run_id
        result = run_federation(grid, c, monitor=url, run_id=str(rid))
        if on_result is not None:
            on_result(result)

    return app


app = make_server_app()
