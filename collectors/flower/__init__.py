"""Flower integration (flwr >= 1.41, Message API): monitor a Flower run with a few lines.

Server (``ServerApp``)::

    from collectors.flower import MonitoredStrategy, run_spec
    strategy = MonitoredStrategy(FedAvg(...), monitor="http://127.0.0.1:8000",
                                 run=run_spec("my-run", X_reference, num_classes=10, expected_clients=5))

Client (``ClientApp``)::

    from collectors.flower import LocalData, monitor_mod
    app = ClientApp(mods=[monitor_mod(data=lambda ctx, rnd: LocalData(X, y, X_test, y_test),
                                      evaluate=evaluate_arrays)])
"""

from collectors.flower.mod import LocalData, MonitorMod, monitor_mod
from collectors.flower.spec import run_spec
from collectors.flower.strategy import MonitoredStrategy

__all__ = ["LocalData", "MonitorMod", "MonitoredStrategy", "monitor_mod", "run_spec"]
